#include "lb/proxy/rate_limit.hpp"

#include "lb/upstream/hashing.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
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

config::RateLimit
cluster_limit(uint32_t rate, uint32_t burst, uint32_t instances,
              config::RateLimit::OnRedisError on_error = config::RateLimit::OnRedisError::local) {
  config::RateLimit l = limit(rate, burst);
  l.scope = config::RateLimit::Scope::cluster;
  l.instances = instances;
  l.on_redis_error = on_error;
  return l;
}

TEST(RateLimiterTest, SharedCountsWhatPassedHereAndStartsAfresh) {
  RateLimiter r(cluster_limit(100, 50, 3));
  ASSERT_TRUE(r.shared());
  int64_t t0 = steady_us();
  for (int i = 0; i < 7; ++i)
    EXPECT_TRUE(r.take(11, t0).allowed);
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(r.take(22, t0).allowed);
  std::map<uint64_t, uint32_t> seen;
  r.drain_counts([&](uint64_t key, uint32_t n) { seen[key] += n; });
  EXPECT_EQ(seen, (std::map<uint64_t, uint32_t>{{11, 7}, {22, 3}}));
  seen.clear();
  r.drain_counts([&](uint64_t key, uint32_t n) { seen[key] += n; });
  EXPECT_TRUE(seen.empty());
  // A local limit keeps no counts.
  RateLimiter local(limit(100, 50));
  EXPECT_FALSE(local.shared());
  EXPECT_TRUE(local.take(11, t0).allowed);
  local.drain_counts([&](uint64_t, uint32_t) { ADD_FAILURE() << "a local limit counted"; });
}

TEST(RateLimiterTest, SharedCountsAreFoundWhereverTheKeysLand) {
  // Keys all over the table (max_keys 4096: 8192 slots, 128 groups of 64),
  // and a tiny table (2 slots).
  for (uint32_t max_keys : {4096u, 1u}) {
    config::RateLimit l = cluster_limit(100, 50, 3);
    l.max_keys = max_keys;
    RateLimiter r(l);
    int64_t t0 = steady_us();
    std::map<uint64_t, uint32_t> sent;
    uint32_t keys = max_keys == 1 ? 1 : 1000; // (few enough that none goes untracked)
    for (uint32_t k = 0; k < keys; ++k) {
      uint64_t key = r.hash(std::to_string(k));
      for (uint32_t i = 0; i <= k % 3; ++i)
        if (r.take(key, t0).allowed)
          ++sent[key];
    }
    std::map<uint64_t, uint32_t> seen;
    r.drain_counts([&](uint64_t key, uint32_t n) { seen[key] += n; });
    ASSERT_EQ(r.untracked(), 0u);
    EXPECT_EQ(seen, sent) << max_keys;
  }
}

TEST(RateLimiterTest, WhatOtherInstancesLetThroughHoldsTheKeyBack) {
  RateLimiter r(cluster_limit(10, 4, 3));
  int64_t t0 = steady_us();
  r.add(5, 5, t0); // the tier took the whole burst + 1
  EXPECT_FALSE(r.take(5, t0).allowed);
  EXPECT_TRUE(r.take(6, t0).allowed); // another key is not concerned
  EXPECT_TRUE(r.take(5, t0 + second / 10).allowed);
  // What the tier let through beyond the burst holds the key back longer.
  r.add(7, 20, t0);
  EXPECT_FALSE(r.take(7, t0 + second / 10 * 15).allowed);
  EXPECT_TRUE(r.take(7, t0 + second / 10 * 16).allowed);
}

TEST(RateLimiterTest, ThreeInstancesExchangingEvery100msHoldTheRateTogether) {
  // 300 requests/s offered for 10 s, spread over three instances that tell
  // each other what they let through every 100 ms: ~1,000 pass in all.
  std::vector<std::unique_ptr<RateLimiter>> tier;
  for (int i = 0; i < 3; ++i)
    tier.push_back(std::make_unique<RateLimiter>(cluster_limit(100, 0, 3)));
  for (auto& r : tier)
    r->set_seed(1234);
  uint64_t key = tier[0]->hash("203.0.113.9");
  for (auto& r : tier)
    EXPECT_EQ(r->hash("203.0.113.9"), key); // one seed, one key everywhere
  int64_t t0 = steady_us();
  int passed = 0;
  for (int ms = 0; ms < 10000; ++ms) {
    int64_t now = t0 + ms * 1000;
    if (ms % 10 == 0) // every 10 ms: one request at each instance
      for (auto& r : tier)
        passed += r->take(key, now).allowed;
    if (ms % 100 == 99) { // the exchange
      std::vector<std::vector<std::pair<uint64_t, uint32_t>>> sent(tier.size());
      for (size_t i = 0; i < tier.size(); ++i)
        tier[i]->drain_counts([&](uint64_t k, uint32_t n) { sent[i].push_back({k, n}); });
      for (size_t i = 0; i < tier.size(); ++i)
        for (size_t j = 0; j < tier.size(); ++j)
          if (i != j)
            for (auto [k, n] : sent[j])
              tier[i]->add(k, n, now);
    }
  }
  EXPECT_GE(passed, 1000 * 95 / 100);
  EXPECT_LE(passed, 1000 * 105 / 100);
}

TEST(RateLimiterTest, FallbackDividesTheRateOrOpens) {
  RateLimiter r(cluster_limit(100, 0, 4));
  r.set_mode(RateLimiter::Mode::local);
  int64_t t0 = steady_us();
  int passed = 0;
  for (int ms = 0; ms < 10000; ++ms)
    passed += r.take(3, t0 + ms * 1000).allowed;
  EXPECT_GE(passed, 250); // 25/s on this instance
  EXPECT_LE(passed, 251);
  RateLimiter open(cluster_limit(1, 0, 3, config::RateLimit::OnRedisError::open));
  open.set_mode(RateLimiter::Mode::open);
  for (int i = 0; i < 100; ++i)
    EXPECT_TRUE(open.take(3, t0).allowed);
  open.set_mode(RateLimiter::Mode::shared);
  EXPECT_TRUE(open.take(3, t0).allowed);
  EXPECT_FALSE(open.take(3, t0).allowed);
}

TEST(RateLimiterTest, ANewSeedStartsEveryBucketAfresh) {
  RateLimiter r(cluster_limit(1, 0, 3));
  int64_t t0 = steady_us();
  uint64_t before = r.hash("k");
  EXPECT_TRUE(r.take(before, t0).allowed);
  EXPECT_FALSE(r.take(before, t0).allowed);
  r.set_seed(99);
  uint64_t after = r.hash("k");
  EXPECT_NE(after, before);
  EXPECT_TRUE(r.take(after, t0).allowed);
  r.set_seed(99); // the same seed again changes nothing
  EXPECT_FALSE(r.take(after, t0).allowed);
}

} // namespace
} // namespace lb::proxy
