#pragma once
// Several lb instances as one tier, through Redis (`cluster: {redis: ...}`):
// backend overrides (drain, enable, weight with `?scope=cluster`) are kept
// in a Redis hash with a version number; every instance looks at the
// version every 250 ms and applies a new set of overrides, and an instance
// that starts reads them before it serves.
//
// ACME challenges another instance publishes (lb/cluster/acme_share.hpp)
// are read along with the overrides' version and answered here too.
//
// Rate limits with `scope: cluster` are exchanged every 100 ms in one
// pipelined round trip: each instance writes what it let through in its last
// four periods (key hash and count per limit) as one field of a hash, and
// reads every other instance's field, adding their new periods to its own
// buckets. Redis sees two commands per exchange however many requests and
// keys there are. Redis unreachable: each limit falls back as configured
// (on_redis_error) until an exchange succeeds again.
//
// One thread talks to Redis (hiredis, blocking with short timeouts), off the
// data path: no request ever waits on Redis. When Redis cannot be reached
// the instance keeps the overrides it has, logs once, counts the errors, and
// logs again when Redis is back.

#include "config/config_types.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct redisContext;

namespace lb::proxy {
class RateLimiter;
}

namespace lb::cluster {

// A rate limit shared by the tier: its name in Redis ("LISTENER ROUTE") and
// this instance's buckets.
struct SharedLimit {
  std::string id;
  std::shared_ptr<proxy::RateLimiter> limiter;
};

// One backend's override, as every instance applies it.
struct Override {
  std::string pool;
  std::string backend; // its label, host:port
  int drained = -1;    // 1 drained, 0 enabled, -1 not set
  int weight = -1;     // -1 not set
  // The version that wrote each (a later write of the same value is newer).
  int64_t drained_stamp = 0;
  int64_t weight_stamp = 0;
};

struct LinkStatus {
  std::string redis; // host:port
  bool connected = false;
  uint64_t round_trips = 0;
  uint64_t errors = 0;
  int64_t version = -1; // of the overrides applied; -1: none read yet
};

class Cluster {
public:
  // `apply` runs on the cluster's thread with the whole set of overrides
  // whenever their version changes.
  Cluster(const config::Cluster& config, std::function<void(std::vector<Override>)> apply);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Whether the last set read came with a lower version than the one before
  // (Redis lost data, or a replica that lagged took over).
  bool version_went_down() const { return went_down_.load(); }
  // Reads the overrides once, now (before serving), into `overrides`; false
  // when Redis could not be reached (the instance starts without them and
  // the thread tries again).
  bool fetch_now(std::vector<Override>& overrides);
  void start();
  void stop();

  // Writes one backend's override for the tier (admin `?scope=cluster`), on
  // a connection of its own; "" on success, else why not.
  std::string publish(const Override& o);

  LinkStatus status() const;

  // The limits with scope: cluster (after every change of the routes); they
  // take the tier's seed and the link's state at once.
  void set_limits(std::vector<SharedLimit> limits);

private:
  void run();
  // The thread's connection, made when there is none (with the tier's seed).
  redisContext* link();
  void drop(const std::string& why);
  bool poll(std::vector<Override>& out, bool& changed);
  void exchange_counts();
  bool read_seed(redisContext* c);
  bool take_challenges(redisContext* c, int64_t version);
  void set_modes();
  redisContext* connect(std::string& error) const;
  void link_up(bool up, const std::string& why);

  config::Cluster config_;
  std::function<void(std::vector<Override>)> apply_;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::mutex publish_mutex_;
  redisContext* poll_context_ = nullptr; // the thread's (and fetch_now's before it starts)
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> round_trips_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<int64_t> version_{-1};
  std::atomic<bool> went_down_{false};
  bool logged_down_ = false;
  std::chrono::steady_clock::time_point next_connect_{};
  bool fresh_ = false;  // a new connection: poll() reads everything whole
  bool seeded_ = false; // the tier's seed read on this connection

  // Shared rate limits (set_limits() under mutex_; the thread works on a copy).
  std::vector<SharedLimit> limits_;
  bool limits_changed_ = false;
  std::vector<SharedLimit> thread_limits_;
  std::atomic<uint64_t> seed_{0};    // the tier's; 0: not read yet
  std::string instance_;             // this instance's field in the counts hash
  uint64_t sequence_ = 0;            // of this instance's periods
  std::vector<std::string> periods_; // the last few, as written: "SEQ HASH COUNT ID" lines
  struct Peer {
    uint64_t seen = 0;    // its sequence, last read
    uint64_t applied = 0; // the last of its periods added here
    std::chrono::steady_clock::time_point changed;
  };
  std::map<std::string, Peer> peers_;
  unsigned exchanges_ = 0;
  // The tier's ACME challenges this instance answers, and their version.
  std::map<std::string, std::string> challenges_;
  int64_t challenges_version_ = -1;
};

// The overrides hash's field for a backend: "POOL BACKEND".
std::string override_field(const std::string& pool, const std::string& backend);

} // namespace lb::cluster
