#include "lb/proxy/rate_limit.hpp"

#include "lb/upstream/hashing.hpp"

#include <random>

#include <algorithm>
#include <chrono>

namespace lb::proxy {

namespace {

// A slot: the key's fingerprint in the top 16 bits (never 0 for a used slot),
// the theoretical arrival time in microseconds since the limiter's epoch in
// the low 48 bits (8.9 years).
constexpr int fp_shift = 48;
constexpr uint64_t tat_mask = (uint64_t(1) << fp_shift) - 1;
constexpr unsigned probes = 8;

uint64_t fingerprint(uint64_t hash) {
  uint64_t fp = hash >> fp_shift;
  return fp ? fp : 1;
}

} // namespace

int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

RateLimiter::RateLimiter(const config::RateLimit& config)
    : config_(config), epoch_us_(steady_us() - 1) {
  std::random_device random;
  seed_ = (uint64_t(random()) << 32) | random();
  double per_us = config.per_second() / 1e6;
  interval_us_ = std::max<int64_t>(1, static_cast<int64_t>(1.0 / per_us + 0.5));
  tolerance_us_ = interval_us_ * static_cast<int64_t>(config.burst);
  fallback_interval_us_ = interval_us_ * std::max<uint32_t>(1, config.instances);
  // Twice max_keys (rounded up to a power of two): the 8 slots a key may use
  // are seldom all live before max_keys keys are.
  size_t n = 1;
  while (n < 2 * static_cast<size_t>(config.max_keys))
    n <<= 1;
  slots_ = std::make_unique<std::atomic<uint64_t>[]>(n);
  mask_ = n - 1;
  if (shared()) {
    keys_ = std::make_unique<std::atomic<uint64_t>[]>(n);
    counts_ = std::make_unique<std::atomic<uint32_t>[]>(n);
    dirty_words_ = ((n + 63) / 64 + 63) / 64;
    dirty_ = std::make_unique<std::atomic<uint64_t>[]>(dirty_words_);
  }
}

RateLimiter::Probe RateLimiter::probe(uint64_t key_hash, int64_t now, bool exact) const {
  // The key's own slot first (live or not): a key must never leave its
  // bucket for a free slot while the bucket still holds it back.
  uint64_t fp = fingerprint(key_hash);
  size_t first = static_cast<size_t>(key_hash) & mask_;
  Probe free;
  for (unsigned p = 0; p < probes; ++p) {
    size_t i = (first + p) & mask_;
    std::atomic<uint64_t>& s = slots_[i];
    uint64_t sv = s.load(std::memory_order_relaxed);
    if (sv != 0 && (sv >> fp_shift) == fp) {
      uint64_t whole = exact ? keys_[i].load(std::memory_order_relaxed) : 0;
      if (whole == 0 || whole == key_hash)
        return {&s, sv, true};
      continue; // another key with the same fingerprint
    }
    // Empty, or another key's bucket that has filled up again; not while it
    // holds counts the next exchange has not sent (they would go out under
    // the new key's hash).
    if (!free.slot && (sv == 0 || static_cast<int64_t>(sv & tat_mask) <= now) &&
        (!counts_ || counts_[i].load(std::memory_order_relaxed) == 0))
      free = {&s, sv, false};
  }
  return free;
}

RateLimiter::Verdict RateLimiter::take(uint64_t key_hash, int64_t now_us) {
  int64_t interval = interval_us_;
  bool count = false; // what passes goes to the other instances
  if (counts_) {
    Mode m = mode();
    if (m == Mode::open)
      return {true, 0};
    if (m == Mode::local)
      interval = fallback_interval_us_; // (not counted: the others do the same)
    count = m == Mode::shared;
  }
  // Times start at 1 so that a used slot is never all zero.
  int64_t now = std::max<int64_t>(1, now_us - epoch_us_);
  uint64_t fp = fingerprint(key_hash);
  for (;;) {
    Probe p = probe(key_hash, now);
    if (!p.slot) {
      // Every slot the key may use holds a live bucket of another key: the
      // table is too small for the keys now active (max_keys). Let it
      // through, counted.
      untracked_.fetch_add(1, std::memory_order_relaxed);
      return {true, 0};
    }
    // GCRA: the key may run up to `tolerance` ahead of now.
    int64_t tat = static_cast<int64_t>(p.value & tat_mask);
    int64_t start = p.mine ? std::max(tat, now) : now;
    int64_t next = start + interval;
    if (next - now > tolerance_us_ + interval) {
      int64_t wait = next - now - tolerance_us_ - interval;
      return {false, static_cast<uint32_t>(std::max<int64_t>(1, (wait + 999999) / 1000000))};
    }
    uint64_t desired = (fp << fp_shift) | (static_cast<uint64_t>(next) & tat_mask);
    if (p.slot->compare_exchange_strong(p.value, desired, std::memory_order_relaxed)) {
      if (counts_) {
        size_t i = static_cast<size_t>(p.slot - slots_.get());
        if (keys_[i].load(std::memory_order_relaxed) != key_hash)
          keys_[i].store(key_hash, std::memory_order_relaxed);
        if (!count)
          return {true, 0};
        counts_[i].fetch_add(1);
        // (Marked after the count: a drain that clears the mark sees the count.)
        std::atomic<uint64_t>& word = dirty_[i >> 12];
        uint64_t bit = uint64_t(1) << ((i >> 6) & 63);
        if (!(word.load() & bit))
          word.fetch_or(bit);
      }
      return {true, 0};
    }
    // Another worker changed the slot in between: look again.
  }
}

void RateLimiter::add(uint64_t key_hash, uint32_t count, int64_t now_us) {
  int64_t now = std::max<int64_t>(1, now_us - epoch_us_);
  uint64_t fp = fingerprint(key_hash);
  for (;;) {
    Probe p = probe(key_hash, now, true);
    if (!p.slot)
      return; // no room: the key goes untracked here, as in take()
    int64_t tat = static_cast<int64_t>(p.value & tat_mask);
    int64_t start = p.mine ? std::max(tat, now) : now;
    // (An hour ahead at most: a peer's garbage cannot lock a key out for longer.)
    int64_t next = std::min(start + interval_us_ * static_cast<int64_t>(count),
                            now + tolerance_us_ + int64_t(3600) * 1000000);
    uint64_t desired = (fp << fp_shift) | (static_cast<uint64_t>(next) & tat_mask);
    if (p.slot->compare_exchange_strong(p.value, desired, std::memory_order_relaxed)) {
      if (keys_) {
        size_t i = static_cast<size_t>(p.slot - slots_.get());
        keys_[i].store(key_hash, std::memory_order_relaxed);
      }
      return;
    }
  }
}

void RateLimiter::set_seed(uint64_t seed) {
  if (seed_.exchange(seed, std::memory_order_relaxed) == seed)
    return;
  for (size_t i = 0; i <= mask_; ++i) {
    slots_[i].store(0, std::memory_order_relaxed);
    if (counts_) {
      keys_[i].store(0, std::memory_order_relaxed);
      counts_[i].store(0, std::memory_order_relaxed);
    }
  }
}

uint64_t RateLimiter::hash(std::string_view key) const {
  return upstream::hash64(key, seed_.load(std::memory_order_relaxed));
}

void RateLimiter::count_refused(unsigned worker) {
  refused_[worker % counters].n.fetch_add(1, std::memory_order_relaxed);
}

uint64_t RateLimiter::refused() const {
  uint64_t sum = 0;
  for (const auto& c : refused_)
    sum += c.n.load(std::memory_order_relaxed);
  return sum;
}

} // namespace lb::proxy
