#include "lb/upstream/least_request.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace lb::upstream {
namespace {

TEST(LeastConnTest, PicksLeastActivePerWeight) {
  std::vector<uint32_t> active{5, 2, 9};
  std::vector<uint32_t> weights{1, 1, 1};
  for (uint64_t r = 0; r < 3; ++r)
    EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 3, r, 0), 1);
  // 9/5 < 2/1 < 5/1: the heavy backend with more requests is still the least loaded.
  weights = {1, 1, 5};
  for (uint64_t r = 0; r < 3; ++r)
    EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 3, r, 0), 2);
  // Exact comparison, no rounding: 3/4 < 1/1 but 4/4 == 1/1.
  active = {1, 3};
  weights = {1, 4};
  EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 2, 0, 0), 1);
  // Large numbers do not overflow.
  active = {4000000000u, 3999999999u};
  weights = {4000000000u, 3999999998u};
  EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 2, 1, 0), 0);
}

TEST(LeastConnTest, TiesRotate) {
  std::vector<uint32_t> active{4, 4, 4};
  std::vector<uint32_t> weights{2, 2, 2};
  int count[3] = {};
  for (uint64_t r = 0; r < 300; ++r)
    ++count[least_conn_pick(active.data(), weights.data(), 3, r, 0)];
  EXPECT_EQ(count[0], 100);
  EXPECT_EQ(count[1], 100);
  EXPECT_EQ(count[2], 100);
}

TEST(LeastConnTest, TiesByWeightWhenRotationIsTheWrrPick) {
  // The caller can pass the smooth WRR pick (sequence 0 0 1 0 for 3:1) as rotation.
  std::vector<uint32_t> active{0, 0};
  std::vector<uint32_t> weights{3, 1};
  const uint64_t wrr[] = {0, 0, 1, 0};
  int count[2] = {};
  for (int i = 0; i < 400; ++i)
    ++count[least_conn_pick(active.data(), weights.data(), 2, wrr[i % 4], 0)];
  EXPECT_EQ(count[0], 300);
  EXPECT_EQ(count[1], 100);
}

TEST(LeastConnTest, RespectsExcludedAndZeroWeight) {
  std::vector<uint32_t> active{0, 1, 2, 3};
  std::vector<uint32_t> weights{0, 1, 1, 1};
  for (uint64_t r = 0; r < 8; ++r) {
    EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 4, r, 0), 1);
    EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 4, r, 0b0010), 2);
    EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 4, r, 0b0110), 3);
    EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 4, r, 0b1110), -1);
  }
  EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 0, 0, 0), -1);
}

TEST(LeastConnTest, BackendsPastSixtyFourCannotBeExcluded) {
  std::vector<uint32_t> active(70, 1), weights(70, 1);
  active[66] = 0;
  EXPECT_EQ(least_conn_pick(active.data(), weights.data(), 70, 0, ~uint64_t{0}), 66);
}

TEST(RandomTwoTest, NeverPicksExcludedOrZeroWeight) {
  std::mt19937_64 rng(1);
  std::vector<uint32_t> active{0, 0, 0, 0, 0, 0};
  std::vector<uint32_t> weights{1, 0, 1, 1, 0, 1};
  const uint64_t excluded = 0b000101;
  int count[6] = {};
  for (int i = 0; i < 10000; ++i) {
    int p = random_two_pick(active.data(), weights.data(), 6, rng(), excluded);
    ASSERT_GE(p, 0);
    ++count[p];
  }
  EXPECT_EQ(count[0] + count[1] + count[2] + count[4], 0);
  EXPECT_NEAR(count[3], 5000, 500);
  EXPECT_NEAR(count[5], 5000, 500);
  // A single eligible backend, and none.
  EXPECT_EQ(random_two_pick(active.data(), weights.data(), 6, rng(), 0b101101), -1);
  EXPECT_EQ(random_two_pick(active.data(), weights.data(), 6, rng(), 0b100101), 3);
  EXPECT_EQ(random_two_pick(active.data(), weights.data(), 0, rng(), 0), -1);
}

TEST(RandomTwoTest, AvoidsTheBusyBackend) {
  std::mt19937_64 rng(2);
  std::vector<uint32_t> active{10, 0, 0};
  std::vector<uint32_t> weights{1, 1, 1};
  int busy = 0;
  const int picks = 10000;
  for (int i = 0; i < picks; ++i)
    busy += random_two_pick(active.data(), weights.data(), 3, rng(), 0) == 0;
  EXPECT_LT(busy, picks / 100);
}

TEST(RandomTwoTest, EqualWhenAllEqual) {
  std::mt19937_64 rng(3);
  std::vector<uint32_t> active{3, 3, 3, 3};
  std::vector<uint32_t> weights{1, 1, 1, 1};
  int count[4] = {};
  for (int i = 0; i < 40000; ++i)
    ++count[random_two_pick(active.data(), weights.data(), 4, rng(), 0)];
  for (int c : count)
    EXPECT_NEAR(c, 10000, 600);
}

TEST(RandomTwoTest, CandidatesFollowWeights) {
  // All idle: the pick is the first candidate, drawn 3:1. With the load compared
  // per weight, the heavy backend also wins more often once both are busy.
  std::mt19937_64 rng(4);
  std::vector<uint32_t> active{0, 0, 0, 0};
  std::vector<uint32_t> weights{3, 1, 3, 1};
  int count[4] = {};
  for (int i = 0; i < 40000; ++i)
    ++count[random_two_pick(active.data(), weights.data(), 4, rng(), 0, 3)];
  EXPECT_NEAR(count[0] + count[2], 30000, 800);
  EXPECT_NEAR(count[1] + count[3], 10000, 800);
  // The hint may be left out: the same picks for the same random bits.
  for (uint64_t r = 0; r < 1000; ++r)
    EXPECT_EQ(random_two_pick(active.data(), weights.data(), 4, r, 0, 3),
              random_two_pick(active.data(), weights.data(), 4, r, 0));
}

} // namespace
} // namespace lb::upstream
