#pragma once
// A route's rate limit (`rate_limit: {key, rate, burst}`), shared by every
// worker: GCRA (the generic cell rate algorithm, a token bucket kept as one
// time stamp per key). Each key's state is one 64-bit word (a fingerprint of
// the key and its theoretical arrival time) in a fixed open-addressed table,
// updated with compare-and-swap: exact across workers, no lock, no
// allocation per request. A slot whose time stamp has passed holds a full
// bucket, so it is free for any key.
//
// With `scope: cluster` the limit holds for the sum over several instances
// (see lb/cluster/): each slot also counts what this instance let through
// since the last exchange (drain_counts()), and what the other instances let
// through is added to the key's bucket (add()), as if it had passed here.
// Keys hash with a seed the instances share. While Redis cannot be reached
// the limiter falls back (set_mode()): rate / instances here, or open.

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

  // scope: cluster --------------------------------------------------------
  bool shared() const { return config_.scope == config::RateLimit::Scope::cluster; }
  enum class Mode : int { shared, local, open };
  // How take() counts: shared (with the other instances' counts added),
  // local (rate / `instances`, Redis unreachable) or open (everything passes).
  void set_mode(Mode m) { mode_.store(static_cast<int>(m), std::memory_order_relaxed); }
  Mode mode() const { return static_cast<Mode>(mode_.load(std::memory_order_relaxed)); }
  // The tier's hash seed (every instance hashes a key alike); a new seed
  // starts every bucket afresh.
  void set_seed(uint64_t seed);
  // Adds `count` requests another instance let through to the key's bucket.
  void add(uint64_t key_hash, uint32_t count, int64_t now_us);
  // Calls f(key_hash, count) for every key this instance let through since
  // the last call, and starts counting afresh.
  template <class F> void drain_counts(F&& f) {
    if (!counts_)
      return;
    // Only the groups of 64 slots marked since the last call.
    for (size_t w = 0; w < dirty_words_; ++w) {
      uint64_t bits = dirty_[w].exchange(0);
      while (bits) {
        size_t group = w * 64 + static_cast<size_t>(__builtin_ctzll(bits));
        bits &= bits - 1;
        for (size_t i = group * 64; i < group * 64 + 64 && i <= mask_; ++i)
          if (counts_[i].load() != 0)
            if (uint32_t n = counts_[i].exchange(0))
              f(keys_[i].load(std::memory_order_relaxed), n);
      }
    }
  }

  const config::RateLimit& config() const { return config_; }
  // Requests refused (429) and keys not tracked for want of room (let through).
  uint64_t refused() const;
  uint64_t untracked() const { return untracked_.load(std::memory_order_relaxed); }
  void count_refused(unsigned worker);

private:
  // Where a key's bucket is: its own slot, else a free one it may take.
  struct Probe {
    std::atomic<uint64_t>* slot = nullptr; // none: every slot it may use is taken
    uint64_t value = 0;
    bool mine = false;
  };
  // `exact`: a slot is the key's only when its whole hash matches too (the
  // counts of other instances: their fingerprints must not charge a local key).
  Probe probe(uint64_t key_hash, int64_t now, bool exact = false) const;

  config::RateLimit config_;
  int64_t interval_us_;          // between two requests at the rate
  int64_t tolerance_us_;         // how far ahead of now a key may run: the burst
  const int64_t epoch_us_;       // times are kept from here
  int64_t fallback_interval_us_; // Mode::local: interval x instances
  std::atomic<uint64_t> seed_;
  std::unique_ptr<std::atomic<uint64_t>[]> slots_;
  uint64_t mask_;
  // scope: cluster: each slot's key (whole hash) and what passed here since
  // the last drain_counts().
  std::unique_ptr<std::atomic<uint64_t>[]> keys_;
  std::unique_ptr<std::atomic<uint32_t>[]> counts_;
  // One bit per group of 64 slots whose counts changed since drain_counts().
  std::unique_ptr<std::atomic<uint64_t>[]> dirty_;
  size_t dirty_words_ = 0;
  alignas(64) std::atomic<int> mode_{0}; // read by every take(): a line of its own
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
