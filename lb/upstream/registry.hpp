#pragma once
// Identities that outlive a runtime snapshot. A reload or a DNS change builds
// new Pool objects; what must carry over is keyed here by name: a dense id per
// listener, pool and backend (per-worker metrics and keep-alive connections are
// indexed by it) and the shared state of every backend some pool has now.
// Control plane only (snapshot builders); a mutex keeps it simple.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace lb::upstream {

// Mutable state of one backend, shared by all threads and by the snapshots that
// have this backend; alone on its cache line.
struct alignas(64) BackendState {
  std::atomic<bool> healthy{true};           // active checks (true when none)
  std::atomic<bool> drained{false};          // admin drain
  std::atomic<int64_t> ejected_until_ms{0};  // passive outlier ejection (steady clock ms)
  std::atomic<uint32_t> ejections{0};        // ejections in a row (the ejection time doubles)
  std::atomic<uint64_t> ejections_total{0};  // every ejection since start (never goes down)
  std::atomic<int64_t> ejection_ended_ms{0}; // when the last ejection ended
  std::atomic<uint32_t> consecutive_failures{0};
  std::atomic<uint32_t> weight{1};       // current weight (config or admin)
  std::atomic<int64_t> joined_ms{0};     // when it (re)entered rotation, for slow_start
  std::atomic<bool> ever_healthy{false}; // has passed a health check before
  // Added by a reload or a DNS change (not there at start): slow_start ramps
  // it when it first enters rotation too.
  std::atomic<bool> ramp_first_join{false};
  // Requests in flight on it, all workers together; kept only when the pool's
  // balancer or connection limit needs it (least_conn, random_two, circuit breaker).
  std::atomic<uint32_t> active{0};
  // Snapshot builders only: the config weight last applied (an admin weight
  // survives a reload that leaves the config weight alone), and whether the
  // health above comes from active checks.
  std::atomic<uint32_t> config_weight{0};
  std::atomic<bool> checked{false};
  // Left out of a published snapshot (a reload or a DNS change dropped it).
  // Older snapshots may still hold it; if the backend comes back, it is new:
  // checked before it serves, ramped, not drained.
  // Set through the snapshots' const view of it, hence mutable.
  mutable std::atomic<bool> retired{false};
};

class Registry {
public:
  // Per-worker metrics keep this many backend ids apart; later ones share a
  // single overflow entry (logged once). Ids are not reused.
  static constexpr uint32_t max_backend_ids = 65536;

  uint32_t listener_id(const std::string& name) { return id_of(listeners_, name); }
  uint32_t pool_id(const std::string& name) { return id_of(pools_, name); }

  struct Entry {
    uint32_t id = 0;
    std::shared_ptr<BackendState> state;
    bool created = false; // a new backend: its state is fresh
  };
  // The backend `label` of pool `pool`: its id (the same for as long as the
  // process runs) and its state, shared while any snapshot holds it and it is
  // not retired.
  Entry backend(const std::string& pool, const std::string& label);
  // The first snapshot is built: backends created from now on joined a
  // running lb (slow_start ramps them when they first enter rotation).
  void serving() { serving_ = true; }
  bool is_serving() const { return serving_; }

private:
  uint32_t id_of(std::unordered_map<std::string, uint32_t>& ids, const std::string& name);

  std::mutex mutex_;
  std::unordered_map<std::string, uint32_t> listeners_, pools_;
  struct Known {
    uint32_t id;
    std::weak_ptr<BackendState> state;
  };
  std::unordered_map<std::string, Known> backends_;
  bool overflow_logged_ = false;
  std::atomic<bool> serving_{false};
};

} // namespace lb::upstream
