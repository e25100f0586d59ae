#include "lb/proxy/rate_limit.hpp"

#include "lb/upstream/hashing.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace lb::proxy {
namespace {

config::RateLimit limit(uint32_t rate, uint32_t burst, uint32_t max_keys = 1024,
                        config::Duration per = std::chrono::seconds(1)) {
  config::RateLimit l;
  l.rate = rate;
  l.burst = burst;
  l.max_keys = max_keys;
  l.per = per;
  return l;
}

constexpr int64_t second = 1000000;

TEST(RateLimiterTest, BurstThenOneRequestPerInterval) {
  RateLimiter r(limit(10, 4));
  int64_t t0 = steady_us();
  uint64_t key = upstream::hash64("192.0.2.7");
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(r.take(key, t0).allowed) << i; // burst + 1 at once
  RateLimiter::Verdict v = r.take(key, t0);
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.retry_after_s, 1u); // 100 ms to wait, rounded up to a second
  EXPECT_FALSE(r.take(key, t0 + second / 10 - 1).allowed);
  EXPECT_TRUE(r.take(key, t0 + second / 10).allowed); // one interval later: one more
  EXPECT_FALSE(r.take(key, t0 + second / 10).allowed);
}

TEST(RateLimiterTest, OverADurationAtMostBurstPlusRateTimesDuration) {
  RateLimiter r(limit(100, 20));
  int64_t t0 = steady_us();
  int passed = 0;
  // 1,000 requests/s offered for 10 s.
  for (int ms = 0; ms < 10000; ++ms)
    passed += r.take(42, t0 + ms * 1000).allowed;
  EXPECT_GE(passed, 20 + 1 + 100 * 10 - 1);
  EXPECT_LE(passed, 20 + 1 + 100 * 10);
}

TEST(RateLimiterTest, KeysHaveTheirOwnBuckets) {
  RateLimiter r(limit(1, 0));
  int64_t t0 = steady_us();
  EXPECT_TRUE(r.take(upstream::hash64("a"), t0).allowed);
  EXPECT_FALSE(r.take(upstream::hash64("a"), t0).allowed);
  EXPECT_TRUE(r.take(upstream::hash64("b"), t0).allowed);
  EXPECT_FALSE(r.take(upstream::hash64("b"), t0).allowed);
}

TEST(RateLimiterTest, PerMinuteRatesAndLongWaits) {
  RateLimiter r(limit(6, 0, 16, std::chrono::minutes(1))); // one every 10 s
  int64_t t0 = steady_us();
  EXPECT_TRUE(r.take(7, t0).allowed);
  RateLimiter::Verdict v = r.take(7, t0 + second);
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.retry_after_s, 9u);
  EXPECT_TRUE(r.take(7, t0 + 10 * second).allowed);
}

TEST(RateLimiterTest, AFullTableLetsNewKeysThroughAndCountsThem) {
  RateLimiter r(limit(1, 0, 4)); // 8 slots (twice max_keys)
  int64_t t0 = steady_us();
  for (uint64_t k = 1; k <= 8; ++k)
    EXPECT_TRUE(r.take(upstream::hash64(std::to_string(k)), t0).allowed);
  // Every slot holds a live bucket: a ninth key is not tracked.
  EXPECT_TRUE(r.take(upstream::hash64("9"), t0).allowed);
  EXPECT_TRUE(r.take(upstream::hash64("9"), t0).allowed);
  EXPECT_EQ(r.untracked(), 2u);
  // Buckets that have filled up again free their slots.
  EXPECT_TRUE(r.take(upstream::hash64("9"), t0 + 2 * second).allowed);
  EXPECT_FALSE(r.take(upstream::hash64("9"), t0 + 2 * second).allowed);
  EXPECT_EQ(r.untracked(), 2u);
}

TEST(RateLimiterTest, AKeyKeepsItsBucketWhenAnEarlierSlotFrees) {
  RateLimiter r(limit(1, 2, 4));
  int64_t t0 = steady_us();
  uint64_t b = uint64_t(1) << 48; // both start at slot 0, fingerprints 1 and 2
  uint64_t a = uint64_t(2) << 48;
  EXPECT_TRUE(r.take(b, t0).allowed); // b's bucket in slot 0 until t0 + 1 s
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(r.take(a, t0).allowed); // a in slot 1: burst + 1
  EXPECT_FALSE(r.take(a, t0).allowed);
  // At 1.5 s b's slot is free again; a has earned one request back, not a new bucket.
  int passed = 0;
  for (int i = 0; i < 5; ++i)
    passed += r.take(a, t0 + 3 * second / 2).allowed;
  EXPECT_EQ(passed, 1);
}

TEST(RateLimiterTest, KeysHashDifferentlyInEachLimiter) {
  RateLimiter one(limit(1, 0)), two(limit(1, 0));
  EXPECT_EQ(one.hash("192.0.2.7"), one.hash("192.0.2.7"));
  EXPECT_NE(one.hash("192.0.2.7"), two.hash("192.0.2.7"));
}

TEST(RateLimiterTest, ExactAcrossThreads) {
  RateLimiter r(limit(1000, 99));
  int64_t t0 = steady_us();
  std::atomic<int> passed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      int mine = 0;
      for (int i = 0; i < 10000; ++i)
        mine += r.take(5, t0).allowed; // all at the same instant
      passed += mine;
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(passed.load(), 100); // burst + 1, not one more
}

TEST(RateLimiterTest, RefusalsAreCountedPerWorker) {
  RateLimiter r(limit(1, 0));
  r.count_refused(0);
  r.count_refused(1);
  r.count_refused(17);
  EXPECT_EQ(r.refused(), 3u);
}

} // namespace
} // namespace lb::proxy
