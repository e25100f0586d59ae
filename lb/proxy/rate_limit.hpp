#pragma once
// A route's rate limit (`rate_limit: {key, rate, burst}`), shared by every
// worker: GCRA (the generic cell rate algorithm, a token bucket kept as one
// time stamp per key). Each key's state is one 64-bit word (a fingerprint of
// the key and its theoretical arrival time) in a fixed open-addressed table,
// updated with compare-and-swap: exact across workers, no lock, no
// allocation per request. A slot whose time stamp has passed holds a full
// bucket, so it is free for any key.

#include "config/config_types.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lb::proxy {

class RateLimiter {
public:
  explicit RateLimiter(const config::RateLimit& config);
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  struct Verdict {
    bool allowed = true;
    uint32_t retry_after_s = 0; // refused: whole seconds until a request would pass (>= 1)
  };
  // One request of the key whose hash is `key_hash` (see hash()), at
  // `now_us` (a steady clock in microseconds).
  Verdict take(uint64_t key_hash, int64_t now_us);
  // A key's hash, seeded per limiter at random: where a key lands cannot be
  // worked out from outside (to crowd another key's slots, or share its bucket).
  uint64_t hash(std::string_view key) const;

  const config::RateLimit& config() const { return config_; }
  // Requests refused (429) and keys not tracked for want of room (let through).
  uint64_t refused() const;
  uint64_t untracked() const { return untracked_.load(std::memory_order_relaxed); }
  void count_refused(unsigned worker);

private:
  config::RateLimit config_;
  int64_t interval_us_;    // between two requests at the rate
  int64_t tolerance_us_;   // how far ahead of now a key may run: the burst
  const int64_t epoch_us_; // times are kept from here
  uint64_t seed_;
  std::unique_ptr<std::atomic<uint64_t>[]> slots_;
  uint64_t mask_;
  std::atomic<uint64_t> untracked_{0};
  struct alignas(64) Counter {
    std::atomic<uint64_t> n{0};
  };
  static constexpr unsigned counters = 16;
  Counter refused_[counters]; // by worker (mod 16): no shared line between workers
};

// The steady clock in microseconds.
int64_t steady_us();

} // namespace lb::proxy
