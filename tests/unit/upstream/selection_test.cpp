#include "lb/upstream/selection.hpp"

#include <gtest/gtest.h>

#include <numeric>

namespace lb::upstream {
namespace {

constexpr double eps = 1e-9;

TEST(PriorityLoadTest, HealthyPrimaryTakesEverything) {
  auto load = priority_load({1.0, 1.0}, 1.4);
  EXPECT_NEAR(load[0], 1.0, eps);
  EXPECT_NEAR(load[1], 0.0, eps);
}

TEST(PriorityLoadTest, HalfHealthyPrimarySpillsWithOverprovisioning) {
  // 2 of 4 P0 backends down: P0 carries 1.4 x 50% = 70%, P1 the other 30%.
  auto load = priority_load({0.5, 1.0}, 1.4);
  EXPECT_NEAR(load[0], 0.70, eps);
  EXPECT_NEAR(load[1], 0.30, eps);
}

TEST(PriorityLoadTest, DeadPrimaryHandsAllToTheNextLevel) {
  auto load = priority_load({0.0, 1.0, 1.0}, 1.4);
  EXPECT_NEAR(load[0], 0.0, eps);
  EXPECT_NEAR(load[1], 1.0, eps);
  EXPECT_NEAR(load[2], 0.0, eps);
}

TEST(PriorityLoadTest, AllDownIsAllZero) {
  auto load = priority_load({0.0, 0.0}, 1.4);
  EXPECT_EQ(load, (std::vector<double>{0.0, 0.0}));
  EXPECT_TRUE(priority_load({}, 1.4).empty());
}

TEST(PriorityLoadTest, SingleLevelAlwaysGetsAllItsHealthAllows) {
  // Under-provisioned overall: the shares are scaled up to sum to 100%.
  auto load = priority_load({0.3}, 1.4);
  EXPECT_NEAR(load[0], 1.0, eps);
}

TEST(PriorityLoadTest, OverprovisioningOneSpillsAsSoonAsHealthDrops) {
  auto load = priority_load({0.8, 1.0}, 1.0);
  EXPECT_NEAR(load[0], 0.8, eps);
  EXPECT_NEAR(load[1], 0.2, eps);
}

TEST(PriorityLoadTest, UnderProvisionedLevelsAreNormalized) {
  // 1.4 x 20% = 28% and 1.4 x 10% = 14%: 42% in all, scaled to 100%.
  auto load = priority_load({0.2, 0.1}, 1.4);
  EXPECT_NEAR(load[0], 28.0 / 42.0, 1e-6);
  EXPECT_NEAR(load[1], 14.0 / 42.0, 1e-6);
  EXPECT_NEAR(load[0] + load[1], 1.0, eps);
}

std::vector<double> shares_of(const Selection& s) {
  double total = std::accumulate(s.effective_weight.begin(), s.effective_weight.end(), 0.0);
  std::vector<double> out;
  for (auto w : s.effective_weight)
    out.push_back(total ? w / total : 0);
  return out;
}

TEST(SelectionTest, TwoLevelsFourAndTwoBackends) {
  std::vector<RegionView> regions{{0, 100}, {1, 100}};
  std::vector<BackendView> backends(6);
  for (int i = 0; i < 6; ++i)
    backends[i].region = i < 4 ? 0 : 1;
  auto all = build_selection(backends, regions, 1.4, true);
  EXPECT_NEAR(all.region_share[0], 1.0, eps);
  EXPECT_EQ(all.effective_weight[4], 0u);

  backends[0].in_rotation = backends[1].in_rotation = false;
  auto half = build_selection(backends, regions, 1.4, true);
  auto share = shares_of(half);
  EXPECT_NEAR(share[2] + share[3], 0.70, 1e-3);
  EXPECT_NEAR(share[4] + share[5], 0.30, 1e-3);
  EXPECT_EQ(half.effective_weight[0], 0u);
  EXPECT_NEAR(half.region_share[0], 0.70, 1e-9);
  // Small integer weights: a short round robin period.
  EXPECT_LE(half.sequence.size(), 20u);
}

TEST(SelectionTest, RegionsOfOneLevelShareByWeightTimesHealth) {
  std::vector<RegionView> regions{{0, 3}, {0, 1}};
  std::vector<BackendView> backends(4);
  backends[0].region = backends[1].region = 0;
  backends[2].region = backends[3].region = 1;
  auto s = build_selection(backends, regions, 1.4, true);
  EXPECT_NEAR(s.region_share[0], 0.75, eps);
  EXPECT_NEAR(s.region_share[1], 0.25, eps);
  backends[0].in_rotation = false; // region 0 at 50% health: 3 x 0.5 vs 1 x 1
  s = build_selection(backends, regions, 1.4, true);
  EXPECT_NEAR(s.region_share[0], 0.6, eps);
  EXPECT_NEAR(s.region_share[1], 0.4, eps);
}

// slow_start ramps a backend within its region: the region's health (and so
// the traffic its failover level takes) counts the backend's whole weight.
TEST(SelectionTest, ARampingBackendDoesNotLowerItsRegionsHealth) {
  std::vector<RegionView> regions{{0, 100}, {1, 100}};
  std::vector<BackendView> backends(4);
  backends[2].region = backends[3].region = 1;
  backends[0].ramp = 0.05;         // just came back
  backends[1].in_rotation = false; // down: level 0 is at 50% health
  auto s = build_selection(backends, regions, 1.4, true);
  EXPECT_NEAR(s.region_share[0], 0.70, 1e-9);
  auto share = shares_of(s);
  EXPECT_NEAR(share[0], 0.70, 1e-3);
  // Next to a backend in full rotation, it takes 5% of its weight's part.
  backends[1].in_rotation = true;
  share = shares_of(build_selection(backends, regions, 1.4, true));
  EXPECT_NEAR(share[0], 0.05 / 1.05, 1e-3);
  EXPECT_NEAR(share[1], 1.0 / 1.05, 1e-3);
}

TEST(SelectionTest, BackendWeightsInsideARegion) {
  std::vector<RegionView> regions{{0, 100}};
  std::vector<BackendView> backends(2);
  backends[0].weight = 3;
  auto s = build_selection(backends, regions, 1.4, true);
  EXPECT_EQ(s.effective_weight, (std::vector<uint32_t>{3, 1}));
  EXPECT_EQ(s.sequence.size(), 4u);
}

TEST(SelectionTest, FailOpenSpreadsOverNonDrainedWhenNothingIsInRotation) {
  std::vector<RegionView> regions{{0, 100}, {1, 100}};
  std::vector<BackendView> backends(3);
  backends[2].region = 1;
  for (auto& b : backends)
    b.in_rotation = false;
  backends[1].drained = true;
  auto open = build_selection(backends, regions, 1.4, true);
  EXPECT_TRUE(open.fail_open);
  EXPECT_GT(open.effective_weight[0], 0u);
  EXPECT_EQ(open.effective_weight[1], 0u); // drained never serves
  EXPECT_GT(open.effective_weight[2], 0u);

  auto closed = build_selection(backends, regions, 1.4, false);
  EXPECT_FALSE(closed.fail_open);
  EXPECT_TRUE(closed.empty());
}

TEST(SelectionTest, ZeroWeightsAndDrainedTakeNothing) {
  std::vector<RegionView> regions{{0, 100}};
  std::vector<BackendView> backends(3);
  backends[0].weight = 0;
  backends[1].drained = true;
  auto s = build_selection(backends, regions, 1.4, true);
  EXPECT_EQ(s.effective_weight, (std::vector<uint32_t>{0, 0, 1}));
  backends[2].weight = 0;
  s = build_selection(backends, regions, 1.4, true);
  EXPECT_TRUE(s.empty());
}

} // namespace
} // namespace lb::upstream
