#include "lb/upstream/pool.hpp"

#include <gtest/gtest.h>

#include <map>

namespace lb::upstream {
namespace {

config::Pool make_pool(std::vector<uint32_t> weights, std::vector<uint32_t> priorities = {}) {
  config::Pool p;
  p.name = "web";
  for (size_t i = 0; i < weights.size(); ++i) {
    uint32_t prio = i < priorities.size() ? priorities[i] : 0;
    config::Region* region = nullptr;
    for (auto& existing : p.regions)
      if (existing.priority == prio) region = &existing;
    if (!region) {
      config::Region fresh;
      fresh.name = "r" + std::to_string(prio);
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
  for (auto b : seq) ++count[b];
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
  for (int i = 0; i < 4000; ++i) first += pool.pick(0) == 0;
  EXPECT_EQ(first, 3000);
}

TEST(PoolTest, OnlyTheLowestPriorityServesWhileAllAreInRotation) {
  Registry registry;
  Pool pool(make_pool({1, 1, 1}, {0, 0, 1}), 0, registry);
  for (int i = 0; i < 100; ++i) EXPECT_NE(pool.pick(0), 2);
  EXPECT_EQ(pool.backends()[2].priority, 1u);
}

}  // namespace
}  // namespace lb::upstream
