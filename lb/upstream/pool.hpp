#pragma once
// A pool as the data path sees it: its backends, their shared state (health,
// ejection, drain, weight) and the current selection built from that state.
//
// Workers only read: `pick` loads the current selection (an immutable object
// published through an atomic pointer) and indexes it. Whoever changes state
// (the health checker, a worker that ejects an outlier, the admin API, the
// control tick) rebuilds the selection under the pool's mutex and publishes it;
// replaced selections are freed only after a grace period, long after any pick
// that could still read them has returned.

#include "config/config_types.hpp"
#include "lb/io/timeouts.hpp"
#include "lb/io/tls.hpp"
#include "lb/upstream/balancer.hpp"
#include "lb/upstream/registry.hpp"
#include "lb/upstream/selection.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace lb::upstream {

// A small per-thread random source (random_two, splits without a key): not
// for decisions that every lb instance must make alike.
uint64_t thread_random();

struct Backend {
  std::string label; // "host:port", as in the config, logs and metrics
  std::string region;
  uint32_t region_index = 0;
  boost::asio::ip::tcp::endpoint endpoint;
  uint32_t weight = 1;
  uint32_t priority = 0;
  uint32_t id = 0;       // stable across snapshots (Registry)
  std::string host_name; // from a dns:/srv: entry: the name it was found by (TLS SNI)
  int srv_group = -1;    // from an `srv:` entry: its index in the pool (RFC 2782 priority applies)
  uint32_t srv_priority = 0;
};

// Addresses found by DNS for the pool's `dns:` and `srv:` entries, by
// config::Backend::discovery_key(). An entry not resolved yet has no backends.
struct DiscoveredAddress {
  boost::asio::ip::address address;
  uint16_t port = 0;
  uint32_t priority = 0; // SRV priority
  uint32_t weight = 1;   // SRV weight (dns: the entry's weight)
  std::string target;    // the host name the address belongs to
};
using Discovered = std::map<std::string, std::vector<DiscoveredAddress>>;

// What the data path tells the pool about one exchange with a backend.
enum class Outcome { success, server_error, connect_failure, refused };

class Pool {
public:
  // `sticky_secret` keys the sticky cookie values (the top-level sticky_secret).
  // Backends that `registry` already knows (the same pool name and address in
  // the snapshot this one replaces) keep their state: health, ejection, drain.
  // `tls`, when given, is the client context of the pool this one replaces
  // (same tls settings): reused rather than built (and the CA read) again.
  Pool(const config::Pool& config, size_t index, Registry& registry,
       const Discovered& discovered = {}, const std::string& sticky_secret = {},
       std::shared_ptr<const io::TlsClient> tls = nullptr);
  ~Pool();

  const std::string& name() const { return name_; }
  size_t index() const { return index_; } // in its Runtime
  uint32_t id() const { return id_; }     // stable across snapshots
  const config::Pool& config() const { return config_; }
  const std::vector<Backend>& backends() const { return backends_; }
  const BackendState& state(size_t b) const { return *states_[b]; }
  std::shared_ptr<const BackendState> shared_state(size_t b) const { return owned_states_[b]; }

  // Picks a backend not in `tried`. Returns -1 when none is left. Any
  // thread; lock-free. (`tried` as bits: for backends 0..63.)
  int pick(uint64_t tried) const { return pick(PickRequest{TriedSet(tried)}); }
  int pick(const PickRequest& request) const;

  // HTTPS toward the backends (pool `tls:`): nullptr for plain HTTP, or when
  // the client context could not be built (tls_error() says why).
  const io::TlsClient* tls() const { return tls_.get(); }
  std::shared_ptr<const io::TlsClient> shared_tls() const { return tls_; } // for health checks
  const std::string& tls_error() const { return tls_error_; }

  // Shared in-flight counts (see BackendState::active).
  bool tracks_active() const { return tracks_active_; }
  // Takes a slot on backend `b`; false when it is at max_connections_per_backend.
  bool try_acquire(size_t b);
  void release(size_t b);

  // Sticky sessions: the cookie value naming each backend, and back.
  const std::string& sticky_value(size_t b) const { return sticky_values_[b]; }
  int sticky_backend(std::string_view value) const;

  // The selection in force (any thread; valid for a few seconds at least).
  const Selection& selection() const { return *current_.load(std::memory_order_acquire); }

  // Active health check results (checker thread). Returns true when it changed.
  bool set_healthy(size_t b, bool healthy);
  // Passive outlier detection: called by workers after each exchange. Cheap in
  // the steady state (a load, no store, while a backend keeps succeeding).
  void report(size_t b, Outcome outcome);
  // Admin actions. Return false for an unknown backend.
  bool set_drained(size_t b, bool drained);
  bool set_weight(size_t b, uint32_t weight);
  int find(const std::string& label) const;
  int find_id(uint32_t id) const;
  // Called by a worker whose request was served while no backend was in
  // rotation: logs the event once per fail_open episode.
  void note_fail_open();

  // Ends ejections whose time is up (control tick, any thread).
  void expire_ejections();
  // The control tick: ejections, and slow_start ramps in progress.
  void tick();

private:
  void rebuild(const char* why);
  void joined(size_t b);

  config::Pool config_;
  const Balancer& balancer_;
  std::string name_;
  size_t index_;
  uint32_t id_ = 0;
  std::vector<Backend> backends_;
  std::vector<std::shared_ptr<BackendState>> owned_states_; // shared with other snapshots
  std::vector<BackendState*> states_;
  std::atomic<const Selection*> current_{nullptr};
  // One cursor for all workers, so clients see the configured rotation whatever
  // thread serves them; alone on its cache line.
  alignas(64) mutable std::atomic<uint64_t> cursor_{0};
  alignas(64) std::mutex rebuild_mutex_;
  std::vector<std::pair<io::Clock::time_point, const Selection*>> retired_;
  bool was_fail_open_ = false;
  bool tracks_active_ = false;
  std::shared_ptr<const io::TlsClient> tls_;
  std::string tls_error_;
  std::vector<std::string> sticky_values_;
  std::atomic<int64_t> last_ramp_ms_{0};
  std::atomic<bool> fail_open_logged_{false};
};

int64_t steady_ms();

} // namespace lb::upstream
