#include "lb/upstream/ring_hash.hpp"

#include "lb/upstream/hashing.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace lb::upstream {
namespace {

std::vector<std::string> backend_names(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back("10.0.0." + std::to_string(i + 1) + ":8080");
  return out;
}

std::vector<std::string_view> views(const std::vector<std::string>& names) {
  return {names.begin(), names.end()};
}

uint64_t key_hash(int k) { return hash64("client-" + std::to_string(k)); }

TEST(RingHashTest, EmptyRingPicksNothing) {
  EXPECT_EQ(RingHash().pick(1), -1);
  EXPECT_EQ(RingHash({}, {}).pick(1), -1);
  auto names = backend_names(2);
  RingHash zero(views(names), {0, 0});
  EXPECT_TRUE(zero.empty());
  EXPECT_EQ(zero.pick(1), -1);
}

TEST(RingHashTest, SameKeySameBackend) {
  auto names = backend_names(10);
  RingHash a(views(names), std::vector<uint32_t>(10, 1));
  RingHash b(views(names), std::vector<uint32_t>(10, 1));
  EXPECT_EQ(a.size(), 10u * RingHash::kDefaultPointsPerWeight);
  for (int k = 0; k < 1000; ++k) {
    int p = a.pick(key_hash(k));
    ASSERT_GE(p, 0);
    ASSERT_LT(p, 10);
    EXPECT_EQ(p, a.pick(key_hash(k)));
    EXPECT_EQ(p, b.pick(key_hash(k))); // another instance, same decision
  }
}

TEST(RingHashTest, WrapsAround) {
  auto names = backend_names(3);
  RingHash ring(views(names), {1, 1, 1});
  // Past the last point a key belongs to the first one.
  EXPECT_EQ(ring.pick(UINT64_MAX), ring.pick(0));
}

TEST(RingHashTest, PicksTheFirstPointAfterTheHash) {
  // Reference: the points as documented, hash64(name + "#" + j), searched with
  // std::upper_bound, at every point and next to it.
  auto names = backend_names(3);
  const std::vector<uint32_t> weights{1, 2, 1};
  const uint32_t per_weight = 7;
  RingHash ring(views(names), weights, per_weight);
  std::vector<std::pair<uint64_t, int>> points;
  for (int b = 0; b < 3; ++b)
    for (uint32_t j = 0; j < weights[b] * per_weight; ++j)
      points.emplace_back(hash64(names[b] + "#" + std::to_string(j)), b);
  std::sort(points.begin(), points.end());
  ASSERT_EQ(ring.size(), points.size());
  auto expected = [&](uint64_t h) {
    auto it = std::upper_bound(points.begin(), points.end(), h,
                               [](uint64_t v, const auto& p) { return v < p.first; });
    return it == points.end() ? points.front().second : it->second;
  };
  for (const auto& [h, b] : points)
    for (uint64_t probe : {h - 1, h, h + 1})
      EXPECT_EQ(ring.pick(probe), expected(probe)) << probe;
  for (uint64_t probe : {uint64_t{0}, UINT64_MAX})
    EXPECT_EQ(ring.pick(probe), expected(probe));
  for (int k = 0; k < 10000; ++k)
    EXPECT_EQ(ring.pick(key_hash(k)), expected(key_hash(k)));
  // Sizes 1 and 2 too.
  for (uint32_t per : {1u, 2u}) {
    RingHash tiny(views(names), {1, 0, 0}, per);
    ASSERT_EQ(tiny.size(), per);
    for (int k = 0; k < 100; ++k)
      EXPECT_EQ(tiny.pick(key_hash(k)), 0);
  }
}

TEST(RingHashTest, RemovingOneOfTenMovesOnlyItsKeys) {
  auto names = backend_names(10);
  auto all = views(names);
  RingHash before(all, std::vector<uint32_t>(10, 1));
  const size_t removed = 6;
  std::vector<std::string_view> rest;
  for (size_t i = 0; i < 10; ++i)
    if (i != removed)
      rest.push_back(all[i]);
  RingHash after(rest, std::vector<uint32_t>(9, 1));

  const int keys = 10000;
  int moved = 0, moved_from_rest = 0;
  for (int k = 0; k < keys; ++k) {
    std::string_view b = all[before.pick(key_hash(k))];
    std::string_view a = rest[after.pick(key_hash(k))];
    if (a != b)
      ++moved;
    if (a != b && b != all[removed])
      ++moved_from_rest;
  }
  std::printf("ring_hash: removing 1 of 10 moved %.2f%% of %d keys, %d from the others\n",
              100.0 * moved / keys, keys, moved_from_rest);
  EXPECT_LE(moved, keys * 15 / 100);
  EXPECT_EQ(moved_from_rest, 0);
}

TEST(RingHashTest, AddingOneMovesOnlyKeysToIt) {
  auto names = backend_names(11);
  auto all = views(names);
  std::vector<std::string_view> ten(all.begin(), all.begin() + 10);
  RingHash before(ten, std::vector<uint32_t>(10, 2));
  RingHash after(all, std::vector<uint32_t>(11, 2));
  for (int k = 0; k < 10000; ++k) {
    int b = before.pick(key_hash(k)), a = after.pick(key_hash(k));
    if (a != b) {
      EXPECT_EQ(a, 10) << "key " << k << " moved between old backends";
    }
  }
}

TEST(RingHashTest, WeightsThreeToOne) {
  auto names = backend_names(2);
  RingHash ring(views(names), {3, 1});
  const int keys = 10000;
  int first = 0;
  for (int k = 0; k < keys; ++k)
    first += ring.pick(key_hash(k)) == 0;
  std::printf("ring_hash: 3:1 gave %.2f%% / %.2f%%\n", 100.0 * first / keys,
              100.0 - 100.0 * first / keys);
  EXPECT_NEAR(static_cast<double>(first) / keys, 0.75, 0.05);
}

TEST(RingHashTest, ZeroWeightNeverPicked) {
  auto names = backend_names(3);
  RingHash ring(views(names), {1, 0, 1});
  for (int k = 0; k < 10000; ++k)
    EXPECT_NE(ring.pick(key_hash(k)), 1);
}

TEST(RingHashTest, MaxRingSizeScalesDown) {
  auto names = backend_names(4);
  RingHash ring(views(names), {1000, 1000, 1000, 1}, 160, 4096);
  EXPECT_LE(ring.size(), 4096u + 4u);
  EXPECT_GE(ring.size(), 4000u);
  int last = 0;
  for (int k = 0; k < 10000; ++k)
    last += ring.pick(key_hash(k)) == 3;
  EXPECT_LT(last, 100); // the weight-1 backend keeps a point but gets little
}

} // namespace
} // namespace lb::upstream
