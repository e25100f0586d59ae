#include "lb/upstream/pool.hpp"

#include "lb/upstream/hashing.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <latch>
#include <map>
#include <thread>
#include <vector>

namespace lb::upstream {
namespace {

config::Pool make_pool(std::vector<uint32_t> weights, std::vector<uint32_t> priorities = {}) {
  config::Pool p;
  p.name = "web";
  for (size_t i = 0; i < weights.size(); ++i) {
    uint32_t prio = i < priorities.size() ? priorities[i] : 0;
    config::Region* region = nullptr;
    for (auto& existing : p.regions)
      if (existing.priority == prio)
        region = &existing;
    if (!region) {
      config::Region fresh;
      fresh.name = std::string("r").append(std::to_string(prio));
      fresh.priority = prio;
      p.regions.push_back(fresh);
      region = &p.regions.back();
    }
    config::Backend b;
    b.address = {"127.0.0.1", static_cast<uint16_t>(9000 + i), false};
    b.weight = weights[i];
    region->backends.push_back(b);
  }
  return p;
}

TEST(PoolTest, SmoothSequenceHonoursWeightsExactly) {
  auto seq = smooth_wrr_sequence({5, 1, 1});
  ASSERT_EQ(seq.size(), 7u);
  std::map<uint32_t, int> count;
  for (auto b : seq)
    ++count[b];
  EXPECT_EQ(count[0], 5);
  EXPECT_EQ(count[1], 1);
  EXPECT_EQ(count[2], 1);
  // nginx's smooth WRR for 5:1:1 is a a b a c a a: the heavy one is spread out.
  EXPECT_EQ(seq, (std::vector<uint32_t>{0, 0, 1, 0, 2, 0, 0}));
}

TEST(PoolTest, NoBurstsToTheHeaviestBackend) {
  // At 3:1:1 never more than 2 picks in a row go to one backend, also across periods.
  auto seq = smooth_wrr_sequence({3, 1, 1});
  std::vector<uint32_t> twice(seq);
  twice.insert(twice.end(), seq.begin(), seq.end());
  int run = 1;
  for (size_t i = 1; i < twice.size(); ++i) {
    run = twice[i] == twice[i - 1] ? run + 1 : 1;
    EXPECT_LE(run, 2) << "at " << i;
  }
}

TEST(PoolTest, ZeroWeightNeverPicked) {
  auto seq = smooth_wrr_sequence({0, 2});
  EXPECT_EQ(seq, (std::vector<uint32_t>{1, 1}));
  EXPECT_TRUE(smooth_wrr_sequence({0, 0}).empty());
}

TEST(PoolTest, PickRotatesAndSkipsTriedBackends) {
  Registry registry;
  Pool pool(make_pool({1, 1, 1}), 0, registry);
  EXPECT_EQ(pool.pick(0), 0);
  EXPECT_EQ(pool.pick(0), 1);
  EXPECT_EQ(pool.pick(0), 2);
  EXPECT_EQ(pool.pick(0), 0);
  // Backend 1 was tried: the next pick lands elsewhere.
  EXPECT_NE(pool.pick(uint64_t{1} << 1), 1);
  EXPECT_EQ(pool.pick(0b111), -1);
}

TEST(PoolTest, WeightsThreeToOneOverManyPicks) {
  Registry registry;
  Pool pool(make_pool({3, 1}), 0, registry);
  int first = 0;
  for (int i = 0; i < 4000; ++i)
    first += pool.pick(0) == 0;
  EXPECT_EQ(first, 3000);
}

TEST(PoolTest, OnlyTheLowestPriorityServesWhileAllAreInRotation) {
  Registry registry;
  Pool pool(make_pool({1, 1, 1}, {0, 0, 1}), 0, registry);
  for (int i = 0; i < 100; ++i)
    EXPECT_NE(pool.pick(0), 2);
  EXPECT_EQ(pool.backends()[2].priority, 1u);
}

int64_t ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Every worker sees a dead backend's refused connect at about the same time:
// the backend is ejected once, for the base time, not once per worker with
// the time doubling each time.
TEST(PoolTest, SimultaneousFailuresEjectOnce) {
  for (int round = 0; round < 50; ++round) {
    Registry registry;
    Pool pool(make_pool({1, 1, 1}), 0, registry);
    std::latch start(4);
    std::vector<std::thread> workers;
    for (int i = 0; i < 4; ++i)
      workers.emplace_back([&] {
        start.arrive_and_wait();
        pool.report(0, Outcome::refused);
      });
    for (auto& t : workers)
      t.join();
    int64_t left = pool.state(0).ejected_until_ms.load() - ms_now();
    ASSERT_GT(left, 4000) << "round " << round;
    ASSERT_LE(left, 5000) << "round " << round;
    ASSERT_EQ(pool.state(0).ejections.load(), 1u) << "round " << round;
  }
}

// The ejection time doubles for a backend that keeps failing, and starts over
// once it has stayed in rotation for as long as the longest ejection.
TEST(PoolTest, EjectionBackoffDoublesThenStartsOver) {
  Registry registry;
  config::Pool cfg = make_pool({1, 1, 1});
  cfg.outlier_detection.enabled = true;
  cfg.outlier_detection.consecutive_failures = 1;
  cfg.outlier_detection.ejection_time = std::chrono::milliseconds(40);
  Pool pool(cfg, 0, registry);
  auto eject_and_measure = [&] {
    pool.report(0, Outcome::server_error);
    int64_t left = pool.state(0).ejected_until_ms.load() - ms_now();
    while (pool.state(0).ejected_until_ms.load() != 0) { // the control tick ends it
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      pool.tick();
    }
    return left;
  };
  EXPECT_LE(eject_and_measure(), 40);
  EXPECT_GT(eject_and_measure(), 40); // 80 ms: it failed again right away
  std::this_thread::sleep_for(std::chrono::milliseconds(8 * 40 + 20));
  EXPECT_LE(eject_and_measure(), 40);
  // lb_outlier_ejections_total and /status count on: a counter never goes down.
  EXPECT_EQ(pool.state(0).ejections_total.load(), 3u);
}

// slow_start: backends there when lb starts take full weight at once; one a
// reload or DNS change adds later ramps up like one that comes back.
TEST(PoolTest, SlowStartRampsBackendsAddedLater) {
  Registry registry;
  config::Pool cfg = make_pool({1, 1});
  cfg.slow_start = std::chrono::seconds(10);
  Pool at_start(cfg, 0, registry);
  int first = 0;
  for (int i = 0; i < 100; ++i)
    first += at_start.pick(0) == 0;
  EXPECT_EQ(first, 50);

  registry.serving();
  config::Pool grown = make_pool({1, 1, 1});
  grown.slow_start = std::chrono::seconds(10);
  Pool after_reload(grown, 0, registry);
  int added = 0;
  for (int i = 0; i < 1000; ++i)
    added += after_reload.pick(0) == 2;
  EXPECT_LT(added, 60); // about 2.5% (5% of its weight's part) early in its ramp
  EXPECT_GT(added, 0);
}

// ring_hash with unequal weights: when a backend leaves, only its keys move
// (the ring used to be drawn from the remaining backends' renormalised shares,
// which moved keys between the backends that stayed).
TEST(PoolTest, RingHashMovesOnlyTheKeysOfABackendThatLeaves) {
  Registry registry;
  config::Pool cfg = make_pool({2, 1, 1});
  cfg.balance = config::Balance::ring_hash;
  Pool pool(cfg, 0, registry);
  std::vector<int> before;
  for (uint64_t k = 0; k < 20000; ++k)
    before.push_back(pool.pick(PickRequest{{}, hash64(std::to_string(k)), true, -1}));
  pool.report(2, Outcome::refused); // ejected
  int moved = 0, stayed = 0;
  for (uint64_t k = 0; k < 20000; ++k) {
    int now = pool.pick(PickRequest{{}, hash64(std::to_string(k)), true, -1});
    EXPECT_NE(now, 2);
    if (before[k] == 2)
      continue;
    (now == before[k] ? stayed : moved)++;
  }
  EXPECT_EQ(moved, 0);
  EXPECT_GT(stayed, 14000); // about 3/4 of the keys were on the two that stayed
}

// Backends past the 64th are kept apart too: a retry, a busy backend or a
// sticky one that failed is not picked again (they used to be invisible).
TEST(PoolTest, TriedBackendsPastTheFirst64AreSkipped) {
  Registry registry;
  config::Pool cfg = make_pool(std::vector<uint32_t>(80, 1));
  for (auto balance :
       {config::Balance::round_robin, config::Balance::least_conn, config::Balance::random_two}) {
    cfg.balance = balance;
    Pool pool(cfg, 0, registry);
    PickRequest r;
    for (size_t b = 0; b < 80; ++b)
      if (b != 70 && b != 79)
        r.tried.add(b); // 14 of them in the list
    std::map<int, int> picked;
    for (int i = 0; i < 200; ++i)
      ++picked[pool.pick(r)];
    for (const auto& [b, n] : picked)
      EXPECT_TRUE(b == 70 || b == 79) << "picked " << b;
    r.tried.remove(75);
    r.sticky = 75;
    EXPECT_EQ(pool.pick(r), 75);
    r.tried.add(75);
    EXPECT_NE(pool.pick(r), 75);
  }
  TriedSet t;
  for (size_t b = 64; b < 64 + TriedSet::list_capacity; ++b)
    t.add(b);
  EXPECT_TRUE(t.full());
  t.remove(70);
  EXPECT_FALSE(t.contains(70));
  EXPECT_TRUE(t.contains(71));
  EXPECT_FALSE(t.full());
}

// A backend a published snapshot left out is retired: if the same address
// comes back, it gets a fresh state (checked, ramped, not drained again),
// under the same id, even while an older snapshot still holds the old state.
TEST(RegistryTest, RetiredBackendComesBackNew) {
  Registry registry;
  Registry::Entry first = registry.backend("web", "10.0.0.5:80");
  EXPECT_TRUE(first.created);
  first.state->drained = true;
  Registry::Entry again = registry.backend("web", "10.0.0.5:80");
  EXPECT_FALSE(again.created);
  EXPECT_EQ(again.state, first.state);
  first.state->retired = true;
  Registry::Entry back = registry.backend("web", "10.0.0.5:80");
  EXPECT_TRUE(back.created);
  EXPECT_NE(back.state, first.state);
  EXPECT_EQ(back.id, first.id);
  EXPECT_FALSE(back.state->drained.load());
  EXPECT_EQ(registry.backend("web", "10.0.0.5:80").state, back.state);
}

} // namespace
} // namespace lb::upstream
