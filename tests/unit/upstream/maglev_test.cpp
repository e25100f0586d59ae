#include "lb/upstream/maglev.hpp"

#include "lb/upstream/hashing.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace lb::upstream {
namespace {

std::vector<std::string> backend_names(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back("10.0." + std::to_string(i / 200) + "." + std::to_string(i % 200 + 1) + ":8080");
  return out;
}

std::vector<std::string_view> views(const std::vector<std::string>& names) {
  return {names.begin(), names.end()};
}

std::vector<size_t> entry_counts(const std::vector<uint32_t>& table, size_t n) {
  std::vector<size_t> counts(n, 0);
  for (uint32_t b : table) {
    EXPECT_LT(b, n);
    if (b < n)
      ++counts[b];
  }
  return counts;
}

TEST(MaglevTest, SizeForIsAPrimeWithHundredSlotsPerBackend) {
  auto prime = [](uint32_t n) {
    for (uint32_t d = 2; d * d <= n; ++d)
      if (n % d == 0)
        return false;
    return n > 1;
  };
  for (size_t n : {0, 1, 10, 100, 655, 656, 1000, 5000, 6553, 6554, 100000}) {
    uint32_t m = maglev_size_for(n);
    EXPECT_TRUE(prime(m)) << n;
    EXPECT_GE(m, 65537u);
    EXPECT_LE(m, 655373u);
    if (n <= 6553) {
      EXPECT_GE(m, 100 * n) << n;
    }
  }
  EXPECT_EQ(maglev_size_for(10), 65537u);
  EXPECT_EQ(maglev_size_for(1000), 100003u);
  EXPECT_EQ(maglev_size_for(100000), 655373u);
}

TEST(MaglevTest, EqualWeightsGiveEqualShares) {
  for (size_t n : {1, 2, 3, 7, 10, 100, 1000}) {
    auto names = backend_names(n);
    uint32_t m = maglev_size_for(n);
    auto table = maglev_table(views(names), std::vector<uint32_t>(n, 5), m);
    ASSERT_EQ(table.size(), m);
    auto counts = entry_counts(table, n);
    auto [lo, hi] = std::minmax_element(counts.begin(), counts.end());
    EXPECT_LE(*hi - *lo, 1u) << n << " backends";
  }
}

TEST(MaglevTest, WeightsThreeToOne) {
  auto names = backend_names(2);
  auto table = maglev_table(views(names), {3, 1}, 65537);
  auto counts = entry_counts(table, 2);
  double share = static_cast<double>(counts[0]) / table.size();
  EXPECT_NEAR(share, 0.75, 0.01);
  // Also among more backends: 3:1:3:1 -> 37.5% 12.5% 37.5% 12.5%.
  names = backend_names(4);
  table = maglev_table(views(names), {3, 1, 3, 1}, 65537);
  counts = entry_counts(table, 4);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(static_cast<double>(counts[i]) / table.size(), i % 2 ? 0.125 : 0.375, 0.01);
}

TEST(MaglevTest, ZeroWeightGetsNoEntries) {
  auto names = backend_names(3);
  auto table = maglev_table(views(names), {1, 0, 1}, 65537);
  auto counts = entry_counts(table, 3);
  EXPECT_EQ(counts[1], 0u);
  EXPECT_LE(std::max(counts[0], counts[2]) - std::min(counts[0], counts[2]), 1u);
  EXPECT_TRUE(maglev_table(views(names), {0, 0, 0}, 65537).empty());
  EXPECT_TRUE(maglev_table({}, {}, 65537).empty());
  EXPECT_EQ(maglev_pick({}, 12345), -1);
}

TEST(MaglevTest, NonPrimeSizeIsRaisedToAPrime) {
  auto names = backend_names(3);
  auto table = maglev_table(views(names), {1, 1, 1}, 100);
  EXPECT_EQ(table.size(), 101u);
}

TEST(MaglevTest, Deterministic) {
  auto names = backend_names(10);
  std::vector<uint32_t> weights{1, 2, 3, 4, 5, 1, 2, 3, 4, 5};
  auto a = maglev_table(views(names), weights, 65537);
  auto b = maglev_table(views(names), weights, 65537);
  EXPECT_EQ(a, b);
  // Pinned, so that every build on every machine makes the same table: nothing
  // from the process (addresses, random seeds) goes into it.
  std::vector<std::string> small{"a:1", "b:2", "c:3"};
  EXPECT_EQ(maglev_table(views(small), {1, 1, 1}, 13),
            (std::vector<uint32_t>{1, 0, 1, 0, 0, 2, 2, 2, 1, 2, 1, 0, 0}));
}

TEST(MaglevTest, RemovingOneOfTenMovesFewKeys) {
  auto names = backend_names(10);
  auto all = views(names);
  auto before = maglev_table(all, std::vector<uint32_t>(10, 1), 65537);
  const size_t removed = 3;
  std::vector<std::string_view> rest;
  for (size_t i = 0; i < 10; ++i)
    if (i != removed)
      rest.push_back(all[i]);
  auto after = maglev_table(rest, std::vector<uint32_t>(9, 1), 65537);

  const int keys = 10000;
  int moved = 0, on_rest = 0, moved_from_rest = 0;
  for (int k = 0; k < keys; ++k) {
    uint64_t h = hash64("client-" + std::to_string(k));
    std::string_view b = all[maglev_pick(before, h)];
    std::string_view a = rest[maglev_pick(after, h)];
    if (a != b)
      ++moved;
    if (b != all[removed]) {
      ++on_rest;
      if (a != b)
        ++moved_from_rest;
    }
  }
  double moved_pct = 100.0 * moved / keys;
  double rest_pct = 100.0 * moved_from_rest / on_rest;
  std::printf("maglev: removing 1 of 10 moved %.2f%% of %d keys; %.2f%% of the keys on the "
              "remaining backends moved\n",
              moved_pct, keys, rest_pct);
  RecordProperty("moved_pct", std::to_string(moved_pct));
  RecordProperty("moved_from_remaining_pct", std::to_string(rest_pct));
  EXPECT_LE(moved_pct, 15.0);
  EXPECT_LE(rest_pct, 1.0);
}

} // namespace
} // namespace lb::upstream
