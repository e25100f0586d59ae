#include "config/config.hpp"

#include <gtest/gtest.h>

using namespace std::chrono_literals;
using lb::config::parse_address;
using lb::config::parse_duration;
using lb::config::parse_size;

TEST(Duration, AcceptsEachUnit) {
  EXPECT_EQ(parse_duration("250ms"), 250ms);
  EXPECT_EQ(parse_duration("2s"), 2000ms);
  EXPECT_EQ(parse_duration("5m"), 300000ms);
  EXPECT_EQ(parse_duration("1h"), 3600000ms);
  EXPECT_EQ(parse_duration("0s"), 0ms);
  EXPECT_EQ(parse_duration("0ms"), 0ms);
}

TEST(Duration, RefusesMalformed) {
  for (const char* text : {"", "30", "0", "s", "ms", "2 s", " 2s", "2s ", "-1s", "+1s", "1.5s",
                           "2S", "2sec", "1d", "2us", "1m30s", "abc"})
    EXPECT_FALSE(parse_duration(text)) << text;
}

TEST(Duration, RefusesOverflow) {
  EXPECT_FALSE(parse_duration("99999999999999999999ms"));
  EXPECT_FALSE(parse_duration("9999999999999999h"));
  EXPECT_TRUE(parse_duration("9999999999h"));
}

TEST(Size, AcceptsBinaryUnitsAndBytes) {
  EXPECT_EQ(parse_size("512"), 512u);
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("16KiB"), 16u * 1024);
  EXPECT_EQ(parse_size("10MiB"), 10u * 1024 * 1024);
  EXPECT_EQ(parse_size("1GiB"), 1024u * 1024 * 1024);
}

TEST(Size, RefusesDecimalUnitsAndMalformed) {
  for (const char* text : {"", "KiB", "16KB", "10MB", "1GB", "16K", "16k", "16kib", "16 KiB", "-1",
                           "1.5MiB", "16KiB ", "1TiB", "0x10"})
    EXPECT_FALSE(parse_size(text)) << text;
}

TEST(Size, RefusesOverflow) {
  EXPECT_FALSE(parse_size("18446744073709551616"));
  EXPECT_FALSE(parse_size("17179869184GiB"));
  EXPECT_EQ(parse_size("18446744073709551615"), UINT64_MAX);
}

TEST(Address, ParsesIpv4) {
  auto a = parse_address("1.2.3.4:80");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "1.2.3.4");
  EXPECT_EQ(a->port, 80);
  EXPECT_FALSE(a->ipv6);
  EXPECT_EQ(a->text(), "1.2.3.4:80");
}

TEST(Address, ParsesIpv6InBrackets) {
  auto a = parse_address("[::1]:8080");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 8080);
  EXPECT_TRUE(a->ipv6);
  EXPECT_EQ(a->text(), "[::1]:8080");
}

TEST(Address, PortBounds) {
  EXPECT_EQ(parse_address("0.0.0.0:0")->port, 0);
  EXPECT_EQ(parse_address("127.0.0.1:65535")->port, 65535);
  EXPECT_FALSE(parse_address("127.0.0.1:65536"));
  EXPECT_FALSE(parse_address("127.0.0.1:123456"));
}

TEST(Address, IsCanonical) {
  // Equal addresses must compare equal as text (duplicate detection, admin URLs).
  EXPECT_EQ(parse_address("[0:0:0:0:0:0:0:1]:80")->text(), "[::1]:80");
  EXPECT_EQ(parse_address("[2001:DB8::1]:80")->host, "2001:db8::1");
}

TEST(Address, RefusesMalformedAndNames) {
  for (const char* text :
       {"", "1.2.3.4", "1.2.3.4:", ":80", "1.2.3:80", "300.1.1.1:80", "localhost:80",
        "example.com:80", "::1:80", "[::1]", "[::1]80", "[::1:80", "[1.2.3.4]:80", "1.2.3.4:-1",
        "1.2.3.4:+80", "1.2.3.4:80 ", " 1.2.3.4:80", "1.2.3.4:8o", "[fe80::1%eth0]:80"})
    EXPECT_FALSE(parse_address(text)) << text;
}
