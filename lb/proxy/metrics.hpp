#pragma once
// Per-worker metric counters. Each worker owns one WorkerMetrics and is the only
// writer (a relaxed load and store: a plain increment, no lock prefix, no shared
// cache line); the admin thread sums all workers' copies at scrape time.

#include "lb/proxy/retry_policy.hpp"
#include "lb/upstream/registry.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

// LB_NO_METRICS compiles the hot-path counting out: only for measuring what
// counting costs (bench/README.md); never for a real build.
#ifdef LB_NO_METRICS
#define LB_METRIC_ADD(statement)
#else
#define LB_METRIC_ADD(statement) statement
#endif

namespace lb::proxy {

class Counter {
public:
  void add([[maybe_unused]] uint64_t n = 1) {
    LB_METRIC_ADD(v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed));
  }
  uint64_t get() const { return v_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> v_{0};
};

// A gauge owned by one worker (goes up and down); the sum over workers is the value.
class Gauge {
public:
  void add([[maybe_unused]] int64_t n) {
    LB_METRIC_ADD(v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed));
  }
  int64_t get() const { return v_.load(std::memory_order_relaxed); }

private:
  std::atomic<int64_t> v_{0};
};

// Counts by HTTP status code in a few slots, claimed on first use by the owner.
class CodeCounts {
public:
  static constexpr size_t slots = 24;
  void add([[maybe_unused]] int code) {
#ifndef LB_NO_METRICS
    for (auto& s : slots_) {
      int c = s.code.load(std::memory_order_relaxed);
      if (c == code)
        return s.count.add();
      if (c == 0) {
        s.code.store(code, std::memory_order_release);
        return s.count.add();
      }
    }
    slots_[slots - 1].count.add(); // out of slots: counted under the last code seen
#endif
  }
  template <class F> void for_each(F&& f) const {
    for (const auto& s : slots_) {
      int c = s.code.load(std::memory_order_acquire);
      if (c == 0)
        break;
      f(c, s.count.get());
    }
  }

private:
  struct Slot {
    std::atomic<int> code{0};
    Counter count;
  };
  std::array<Slot, slots> slots_;
};

class Histogram {
public:
  static constexpr std::array<double, 14> bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  void observe([[maybe_unused]] double seconds) {
#ifndef LB_NO_METRICS
    size_t i = 0;
    while (i < bounds.size() && seconds > bounds[i])
      ++i;
    buckets_[i].add(); // per bucket, not cumulative; the exporter accumulates
    sum_micros_.add(static_cast<uint64_t>(seconds * 1e6));
#endif
  }
  uint64_t bucket(size_t i) const { return buckets_[i].get(); } // i <= bounds.size() (+Inf)
  double sum_seconds() const { return static_cast<double>(sum_micros_.get()) / 1e6; }

private:
  std::array<Counter, bounds.size() + 1> buckets_;
  Counter sum_micros_;
};

// Per-worker storage indexed by a stable id (a listener's, pool's or backend's,
// kept across reloads and DNS changes; see upstream::Registry). The owning worker
// creates entries on first use, a chunk at a time, so the steady state allocates
// nothing; the admin thread reads with find() meanwhile. Ids past the capacity
// share one overflow entry rather than fail.
template <class T, size_t Chunk, size_t Chunks> class IdTable {
public:
  static constexpr size_t capacity = Chunk * Chunks;
  IdTable() = default;
  IdTable(const IdTable&) = delete;
  IdTable& operator=(const IdTable&) = delete;
  ~IdTable() {
    for (auto& c : chunks_)
      delete[] c.load(std::memory_order_relaxed);
  }
  // Owner thread only.
  T& at(size_t id) {
    if (id >= capacity)
      return overflow_;
    auto& slot = chunks_[id / Chunk];
    T* chunk = slot.load(std::memory_order_relaxed);
    if (!chunk) {
      chunk = new T[Chunk];
      slot.store(chunk, std::memory_order_release);
    }
    return chunk[id % Chunk];
  }
  // Any thread: nullptr when this worker never counted anything under `id`.
  const T* find(size_t id) const {
    if (id >= capacity)
      return &overflow_;
    const T* chunk = chunks_[id / Chunk].load(std::memory_order_acquire);
    return chunk ? &chunk[id % Chunk] : nullptr;
  }

private:
  std::array<std::atomic<T*>, Chunks> chunks_{};
  T overflow_;
};

struct BackendMetrics {
  CodeCounts responses;   // lb_upstream_requests_total{pool,backend,code}
  Counter connect_errors; // lb_upstream_connect_errors_total
  Gauge active;           // lb_backend_active_requests
  Gauge pooled;           // lb_backend_pooled_connections: idle keep-alive connections
  Gauge h2_connections;   // lb_backend_http2_connections: HTTP/2 connections (h2, h2c pools)
};

struct PoolMetrics {
  Histogram duration;                  // lb_request_duration_seconds{pool}
  Counter retries[retry_reason_count]; // lb_retries_total{pool,reason}, by RetryReason
  Counter budget_exhausted;            // lb_retry_budget_exhausted_total{pool}
  Counter fail_open;                   // requests served while no backend was in rotation
  // lb_grpc_responses_total{pool,grpc_status}: gRPC calls by grpc-status
  // (0..16; [17]: any other number).
  static constexpr size_t grpc_codes = 18;
  Counter grpc[grpc_codes];
};

struct ListenerMetrics {
  // lb_requests_total{listener,pool,code}: [0] = no pool (404, 400, ...), [id + 1] = pool id.
  IdTable<CodeCounts, 8, 128> requests;
  IdTable<CodeCounts, 8, 128> requests_h2; // the same, of HTTP/2 streams (protocol="HTTP/2")
  Counter bytes_in;                        // lb_bytes_total{listener,direction="in"}: from clients
  Counter bytes_out;                       // ... "out": to clients
  Gauge connections;                       // lb_downstream_connections{listener}
  // HTTP/2: lb_http2_connections{listener}, lb_http2_streams_total{listener},
  // lb_http2_goaways_total{listener,reason}: graceful (drain), flood
  // (ENHANCE_YOUR_CALM), protocol_error.
  Gauge h2_connections;
  Counter h2_streams;
  Counter h2_goaway_graceful;
  Counter h2_goaway_calm;
  Counter h2_goaway_error;
};

struct WorkerMetrics {
  IdTable<ListenerMetrics, 4, 256> listeners; // by listener id
  IdTable<PoolMetrics, 16, 64> pools;         // by pool id
  IdTable<BackendMetrics, 64, 1024> backends; // by backend id
};
static_assert(decltype(WorkerMetrics::backends)::capacity == upstream::Registry::max_backend_ids);

} // namespace lb::proxy
