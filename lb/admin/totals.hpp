#pragma once
// The data path's per-worker counters summed over all workers: what /metrics and
// /status report. Gathered at scrape time on the admin (main) thread; the workers
// keep counting meanwhile, so a total is a consistent-enough snapshot, never a lock.

#include "lb/proxy/metrics.hpp"
#include "lb/proxy/runtime.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <vector>

namespace lb::admin {

struct BackendTotals {
  std::map<int, uint64_t> responses; // by status code
  uint64_t connect_errors = 0;
  int64_t active = 0;
  int64_t pooled = 0;         // idle keep-alive connections
  int64_t h2_connections = 0; // HTTP/2 connections (pools with protocol h2, h2c)
  uint64_t requests() const;
  uint64_t errors_5xx() const;
};

struct PoolTotals {
  // Per bucket (not cumulative), the last one is +Inf: as proxy::Histogram keeps them.
  std::array<uint64_t, proxy::Histogram::bounds.size() + 1> duration_buckets{};
  double duration_sum_seconds = 0;
  std::array<uint64_t, proxy::retry_reason_count> retries{}; // by RetryReason
  uint64_t budget_exhausted = 0;                             // retries the retry budget refused
  uint64_t fail_open = 0;
  std::array<uint64_t, proxy::PoolMetrics::grpc_codes> grpc{}; // gRPC calls by grpc-status
  uint64_t all_retries() const;
  std::vector<BackendTotals> backends; // as pool->backends()
};

struct ListenerTotals {
  // [0] = requests that reached no pool (404, 400, ...), [p + 1] = pool p; by status code.
  std::vector<std::map<int, uint64_t>> requests;
  std::vector<std::map<int, uint64_t>> requests_h2; // the same, of HTTP/2 streams
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  int64_t connections = 0;
  int64_t h2_connections = 0;
  uint64_t h2_streams = 0;
  uint64_t h2_goaway_graceful = 0;
  uint64_t h2_goaway_flood = 0;
  uint64_t h2_goaway_error = 0;
};

struct Totals {
  std::vector<ListenerTotals> listeners; // as runtime.listeners
  std::vector<PoolTotals> pools;         // as runtime.pools
};

// Sums `workers` for what `runtime` has, by stable id (counts of listeners,
// pools and backends it no longer has are left out). Any thread.
Totals gather(const proxy::Runtime& runtime,
              const std::vector<const proxy::WorkerMetrics*>& workers);

} // namespace lb::admin
