#include "lb/upstream/hashing.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace lb::upstream {
namespace {

TEST(HashingTest, Hash64IsXxh3AndStable) {
  // Published XXH3-64 value of the empty input with seed 0: instances built from
  // other xxHash versions or on other machines must agree.
  EXPECT_EQ(hash64(""), 0x2d06800538d394c2ULL);
  EXPECT_EQ(hash64("hello", 42), 0xbafa072f07db7937ULL);
  EXPECT_EQ(hash64("hello", 42), hash64("hello", 42));
  EXPECT_NE(hash64("hello", 42), hash64("hello", 43));
  EXPECT_NE(hash64("hello"), hash64("hellp"));
}

bool is_lower_hex16(const std::string& s) {
  if (s.size() != 16)
    return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return false;
  return true;
}

TEST(HashingTest, StickyValueIsStableAndPinned) {
  EXPECT_EQ(sticky_value("s3cret", "10.0.0.1:8080"), sticky_value("s3cret", "10.0.0.1:8080"));
  // Pinned: a change here changes every client's cookie on upgrade.
  EXPECT_EQ(sticky_value("s3cret", "10.0.0.1:8080"), "ae1a761f9027100e");
  EXPECT_EQ(sticky_value("", "10.0.0.1:8080"), "680bb30f9a952db5");
}

TEST(HashingTest, StickyValueIsSixteenLowercaseHexChars) {
  for (int i = 0; i < 1000; ++i) {
    std::string secret(1, static_cast<char>('k' + i % 7));
    std::string identity = std::to_string(i) + ".example:80";
    auto v = sticky_value(secret, identity);
    EXPECT_TRUE(is_lower_hex16(v)) << v;
  }
  EXPECT_TRUE(is_lower_hex16(sticky_value("", "")));
}

TEST(HashingTest, DifferentSecretsGiveDifferentValues) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i)
    seen.insert(sticky_value("secret-" + std::to_string(i), "b:80"));
  seen.insert(sticky_value("", "b:80"));
  EXPECT_EQ(seen.size(), 1001u);
}

TEST(HashingTest, DifferentBackendsGiveDifferentValues) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i)
    seen.insert(sticky_value("s", "10.0." + std::to_string(i / 256) + "." +
                                      std::to_string(i % 256) + ":8080"));
  EXPECT_EQ(seen.size(), 10000u);
  // The value does not show the identity, nor is it the unkeyed hash.
  auto v = sticky_value("s", "10.0.0.1:8080");
  EXPECT_EQ(v.find("10.0.0.1"), std::string::npos);
  EXPECT_NE(v, sticky_value("t", "10.0.0.1:8080"));
}

} // namespace
} // namespace lb::upstream
