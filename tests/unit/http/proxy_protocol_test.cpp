#include "lb/http/proxy_protocol.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

namespace lb::http {
namespace {

using namespace std::string_literals;

// "1.2.3.4:1111" or "[::1]:2222"; "-" for an empty address.
std::string text(const sockaddr_storage& ss) {
  char ip[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &sin.sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(sin.sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(ss);
    inet_ntop(AF_INET6, &sin6.sin6_addr, ip, sizeof ip);
    std::string out = "["; // (appended piece by piece: GCC 12 -Wrestrict misfires on "[" + s)
    out.append(ip).append("]:").append(std::to_string(ntohs(sin6.sin6_port)));
    return out;
  }
  return "-";
}

ProxyParse parse(const std::string& s, ProxyHeader& out, const char** why = nullptr) {
  return parse_proxy_header(s.data(), s.size(), out, why);
}

// The reason a header is invalid, or "" when it is not.
std::string why_invalid(const std::string& s) {
  ProxyHeader h;
  const char* why = nullptr;
  if (parse(s, h, &why) != ProxyParse::invalid)
    return "";
  return why ? why : "(no reason)";
}

// Every proper prefix of `s` asks for more; all of it is complete.
void expect_byte_by_byte(const std::string& s) {
  for (size_t k = 0; k < s.size(); ++k) {
    ProxyHeader h;
    const char* why = "";
    ASSERT_EQ(parse_proxy_header(s.data(), k, h, &why), ProxyParse::need_more)
        << "prefix of " << k << " bytes: " << why;
  }
  ProxyHeader h;
  ASSERT_EQ(parse(s, h), ProxyParse::complete);
  EXPECT_EQ(h.length, s.size());
}

std::string be16(unsigned v) { return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; }

const std::string signature("\r\n\r\n\0\r\nQUIT\n", 12);

// A v2 header: signature, version/command, family/transport, length, body.
std::string v2(unsigned char ver_cmd, unsigned char family, const std::string& body) {
  return signature + static_cast<char>(ver_cmd) + static_cast<char>(family) + be16(body.size()) +
         body;
}

std::string v4_block() { // 10.0.0.1:51000 -> 192.168.1.2:443
  return "\x0a\x00\x00\x01"s + "\xc0\xa8\x01\x02"s + be16(51000) + be16(443);
}

std::string v6_block() { // [2001:db8::1]:51000 -> [::1]:8443
  std::string src(16, '\0'), dst(16, '\0');
  src[0] = '\x20', src[1] = '\x01', src[2] = '\x0d', src[3] = '\xb8', src[15] = '\x01';
  dst[15] = '\x01';
  return src + dst + be16(51000) + be16(8443);
}

std::string tlv(unsigned char type, const std::string& value) {
  return static_cast<char>(type) + be16(value.size()) + value;
}

const std::string http = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

// ---- v1

TEST(ProxyProtocolTest, V1Tcp4) {
  std::string line = "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n";
  ProxyHeader h;
  const char* why = nullptr;
  ASSERT_EQ(parse(line + http, h, &why), ProxyParse::complete) << why;
  EXPECT_EQ(h.length, line.size()); // the HTTP bytes after it are not part of it
  EXPECT_FALSE(h.local);
  EXPECT_EQ(h.family, AF_INET);
  EXPECT_EQ(text(h.source), "1.2.3.4:1111");
  EXPECT_EQ(text(h.destination), "5.6.7.8:2222");
}

TEST(ProxyProtocolTest, V1Tcp6) {
  std::string line = "PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n";
  ProxyHeader h;
  ASSERT_EQ(parse(line + http, h), ProxyParse::complete);
  EXPECT_EQ(h.length, line.size());
  EXPECT_EQ(h.family, AF_INET6);
  EXPECT_EQ(text(h.source), "[2001:db8::1]:0");
  EXPECT_EQ(text(h.destination), "[::ffff:10.0.0.1]:65535");
}

TEST(ProxyProtocolTest, V1Unknown) {
  for (std::string line :
       {"PROXY UNKNOWN\r\n"s, "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
        "PROXY UNKNOWN ffff:f:f:f:f:f:f:f ffff:f:f:f:f:f:f:f 65535 65535\r\n"s}) {
    ProxyHeader h;
    ASSERT_EQ(parse(line + http, h), ProxyParse::complete) << line;
    EXPECT_EQ(h.length, line.size());
    EXPECT_TRUE(h.local);
    EXPECT_EQ(h.family, 0);
    EXPECT_EQ(text(h.source), "-");
  }
}

TEST(ProxyProtocolTest, V1LongestLinesFit) {
  std::string ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  std::string unknown = "PROXY UNKNOWN " + ffff + " " + ffff + " 65535 65535\r\n";
  ASSERT_EQ(unknown.size(), 107u); // the spec's worst case
  ProxyHeader h;
  ASSERT_EQ(parse(unknown, h), ProxyParse::complete);
  EXPECT_EQ(h.length, 107u);

  std::string tcp6 = "PROXY TCP6 " + ffff + " " + ffff + " 65535 65535\r\n";
  ASSERT_EQ(parse(tcp6, h), ProxyParse::complete);
  EXPECT_EQ(text(h.source), "[" + ffff + "]:65535");

  // One byte more cannot be a PROXY v1 line, whatever follows.
  std::string too_long = "PROXY UNKNOWN " + ffff + "f " + ffff + " 65535 65535\r\n";
  EXPECT_NE(why_invalid(too_long), "");
  EXPECT_NE(why_invalid(too_long.substr(0, 107)), "");
  EXPECT_EQ(parse(too_long.substr(0, 106), h), ProxyParse::need_more);
}

TEST(ProxyProtocolTest, V1ByteByByte) {
  expect_byte_by_byte("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n");
  expect_byte_by_byte("PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n");
  expect_byte_by_byte("PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 80 443\r\n");
  expect_byte_by_byte("PROXY TCP6 0001:0db8:0:0:0:0:1.2.3.4 :: 80 443\r\n");
  expect_byte_by_byte("PROXY UNKNOWN\r\n");
  expect_byte_by_byte("PROXY UNKNOWN whatever the sender likes\r\n");
}

// Any prefix of any IPv6 address, however written, may still become a valid
// header: need_more is never a premature invalid.
TEST(ProxyProtocolTest, V1EveryPrefixOfAnIpv6AddressAsksForMore) {
  std::mt19937 rng(7);
  auto check = [](const std::string& ip) {
    std::string line = "PROXY TCP6 " + ip + " ::1 1 2\r\n";
    expect_byte_by_byte(line);
  };
  for (const char* ip : {"::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1::8",
                         "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4", "::1.2.3.4", "1::255.0.10.0",
                         "abcd:ef01:2345:6789:ABCD:EF01:2345:6789", "0000:0000::0000:0"})
    check(ip);
  for (int i = 0; i < 300; ++i) {
    unsigned char a[16];
    for (auto& b : a)
      b = (rng() % 3 == 0) ? 0 : static_cast<unsigned char>(rng());
    char buf[INET6_ADDRSTRLEN];
    ASSERT_TRUE(inet_ntop(AF_INET6, a, buf, sizeof buf));
    check(buf);
    // Fully written out, with leading zeros.
    char full[40];
    std::snprintf(full, sizeof full,
                  "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", a[0],
                  a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13],
                  a[14], a[15]);
    check(full);
  }
}

TEST(ProxyProtocolTest, V1Invalid) {
  const std::string good = "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n";
  ASSERT_EQ(why_invalid(good), "");
  for (std::string bad : {
           "GET / HTTP/1.1\r\n"s,
           "proxy TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY tcp4 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY  TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4  1.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4 1.2.3.4  5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111  2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 \r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\rX"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 3333\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n"s,
           "PROXY TCP4\r\n"s,
           "PROXY TCP5 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY\tTCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4 1.2.3.256 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4 1.2.3 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4 01.2.3.4 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 example.com 1111 2222\r\n"s,
           "PROXY TCP4 ::1 5.6.7.8 1111 2222\r\n"s,
           "PROXY TCP6 1.2.3.4 ::1 1111 2222\r\n"s,
           "PROXY TCP6 fe80::1%eth0 ::1 1111 2222\r\n"s,
           "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1111 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111 65536\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 +1111 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 01111 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 00 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2222\r\n"s,
           "PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2222\r\n"s,
           "PROXY UNKNOWN\n"s,
           "PROXY UNKNOWN x\ny\r\n"s,
           "PROXY UNKNOWNX\r\n"s,
           "PROXY UNKNOWN " + std::string(93, 'x'), // 107 bytes and no CRLF
           "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222" + std::string(200, ' '),
           "\x00PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"s,
       })
    EXPECT_NE(why_invalid(bad), "") << bad;
}

// Garbage is refused as soon as it cannot become a header, without waiting for more.
TEST(ProxyProtocolTest, V1InvalidEarly) {
  for (std::string bad :
       {"G"s, "PROXI"s, "PROXY X"s, "PROXY TCP4 1.2.3.256"s, "PROXY TCP4 1.2.3.4.5"s,
        "PROXY TCP4 1.2.3.4 5.6.7.8 99999"s, "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 "s,
        "PROXY TCP6 1:2:3:4:5:6:7:8:"s, "PROXY TCP6 12345"s, "PROXY TCP6 1.2"s})
    EXPECT_NE(why_invalid(bad), "") << bad;
  ProxyHeader h;
  for (std::string more : {""s, "P"s, "PROXY"s, "PROXY TCP"s, "PROXY UNKNOWN"s, "PROXY TCP4 1.2."s,
                           "PROXY TCP6 ::ffff:1.2.3"s, "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r"s})
    EXPECT_EQ(parse(more, h), ProxyParse::need_more) << more;
}

// ---- v2

TEST(ProxyProtocolTest, V2Ipv4) {
  for (std::string tlvs :
       {""s, tlv(0x01, "h2") + tlv(0x04, "") + tlv(0x05, std::string(300, 'u'))}) {
    std::string header = v2(0x21, 0x11, v4_block() + tlvs);
    ProxyHeader h;
    const char* why = nullptr;
    ASSERT_EQ(parse(header + http, h, &why), ProxyParse::complete) << why;
    EXPECT_EQ(h.length, header.size());
    EXPECT_FALSE(h.local);
    EXPECT_EQ(h.family, AF_INET);
    EXPECT_EQ(text(h.source), "10.0.0.1:51000");
    EXPECT_EQ(text(h.destination), "192.168.1.2:443");
    expect_byte_by_byte(header);
  }
}

TEST(ProxyProtocolTest, V2Ipv6) {
  for (std::string tlvs : {""s, tlv(0xea, "vpce-0123") + tlv(0x04, std::string(4, '\0'))}) {
    std::string header = v2(0x21, 0x21, v6_block() + tlvs);
    ProxyHeader h;
    ASSERT_EQ(parse(header + http, h), ProxyParse::complete);
    EXPECT_EQ(h.length, header.size());
    EXPECT_EQ(h.family, AF_INET6);
    EXPECT_EQ(text(h.source), "[2001:db8::1]:51000");
    EXPECT_EQ(text(h.destination), "[::1]:8443");
    expect_byte_by_byte(header);
  }
}

TEST(ProxyProtocolTest, V2LocalKeepsTheSocketsAddresses) {
  // LOCAL ignores the family and whatever the block holds.
  for (std::string header : {v2(0x20, 0x00, ""), v2(0x20, 0x11, v4_block()),
                             v2(0x20, 0x21, v6_block() + tlv(1, "x")), v2(0x20, 0x77, "abc")}) {
    ProxyHeader h;
    ASSERT_EQ(parse(header + http, h), ProxyParse::complete);
    EXPECT_EQ(h.length, header.size());
    EXPECT_TRUE(h.local);
    EXPECT_EQ(h.family, 0);
    EXPECT_EQ(text(h.source), "-");
  }
  // PROXY with UNSPEC: nothing known about the client either.
  ProxyHeader h;
  ASSERT_EQ(parse(v2(0x21, 0x00, "") + http, h), ProxyParse::complete);
  EXPECT_TRUE(h.local);
  EXPECT_EQ(h.length, 16u);
}

TEST(ProxyProtocolTest, V2LongestHeader) {
  std::string header = v2(0x21, 0x11, v4_block() + tlv(0x04, std::string(65535 - 12 - 3, '\0')));
  ASSERT_EQ(header.size(), proxy_v2_max_length);
  ProxyHeader h;
  ASSERT_EQ(parse(header, h), ProxyParse::complete);
  EXPECT_EQ(h.length, proxy_v2_max_length);
  EXPECT_EQ(parse_proxy_header(header.data(), header.size() - 1, h), ProxyParse::need_more);
}

TEST(ProxyProtocolTest, V2Invalid) {
  const std::string block = v4_block();
  EXPECT_NE(why_invalid(v2(0x11, 0x11, block)), ""); // version 1 in a v2 header
  EXPECT_NE(why_invalid(v2(0x31, 0x11, block)), ""); // version 3
  EXPECT_NE(why_invalid(v2(0x01, 0x11, block)), "");
  EXPECT_NE(why_invalid(v2(0x22, 0x11, block)), ""); // command 2
  EXPECT_NE(why_invalid(v2(0x2f, 0x11, block)), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x13, block)), ""); // TCP over family 1 is 0x11
  EXPECT_NE(why_invalid(v2(0x21, 0x41, block)), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x10, block)), "");
  EXPECT_EQ(why_invalid(v2(0x21, 0x12, block)), "PROXY v2 UDP is not accepted on an HTTP listener");
  EXPECT_NE(why_invalid(v2(0x21, 0x22, v6_block())), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x31, std::string(216, 'u'))), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x32, std::string(216, 'u'))), "");
  // A length shorter than the address block, refused once the length arrives.
  std::string short4 = v2(0x21, 0x11, block.substr(0, 11));
  EXPECT_EQ(why_invalid(short4), "PROXY v2 length shorter than the addresses");
  EXPECT_NE(why_invalid(short4.substr(0, 16)), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x21, v6_block().substr(0, 35))), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x21, block)), ""); // IPv6 family with an IPv4 block
  // TLVs that do not fill the rest exactly.
  EXPECT_NE(why_invalid(v2(0x21, 0x11, block + "\x01"s)), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x11, block + "\x01\x00"s)), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x11, block + "\x01\x00\x02x"s)), "");
  EXPECT_NE(why_invalid(v2(0x21, 0x11, block + tlv(1, "ab") + "\x02\x00\x05" + "abcd")), "");
  // A signature that goes wrong.
  EXPECT_NE(why_invalid("\r\n\r\n\0\r\nQUIX\n"s), "");
  EXPECT_NE(why_invalid("\r\n\r\r"s), "");
  EXPECT_NE(why_invalid("\r\nGET"s), "");
}

TEST(ProxyProtocolTest, V2Truncated) {
  ProxyHeader h;
  std::string header = v2(0x21, 0x21, v6_block() + tlv(1, "h2"));
  for (size_t k = 0; k < header.size(); k += 5)
    EXPECT_EQ(parse_proxy_header(header.data(), k, h), ProxyParse::need_more) << k;
  // The length says 40 bytes follow: 39 of them are not enough.
  std::string cut = header.substr(0, header.size() - 1);
  EXPECT_EQ(parse("\r\n"s, h), ProxyParse::need_more);
  EXPECT_EQ(parse(cut, h), ProxyParse::need_more);
  EXPECT_EQ(h.length, 0u);
}

TEST(ProxyProtocolTest, OutIsResetOnEveryCall) {
  ProxyHeader h;
  ASSERT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n", h), ProxyParse::complete);
  ASSERT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\r", h), ProxyParse::invalid);
  EXPECT_EQ(h.family, 0);
  EXPECT_EQ(h.length, 0u);
  EXPECT_EQ(text(h.source), "-");
  ASSERT_EQ(parse("PROXY UNKNOWN\r\r", h), ProxyParse::invalid);
  EXPECT_FALSE(h.local);
}

} // namespace
} // namespace lb::http
