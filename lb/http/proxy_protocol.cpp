#include "lb/http/proxy_protocol.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace lb::http {

namespace {

constexpr std::string_view v1_start = "PROXY ";
constexpr std::string_view v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};
constexpr size_t v2_fixed = 16; // signature, version/command, family, length

ProxyParse fail(const char** why, const char* reason) {
  if (why)
    *why = reason;
  return ProxyParse::invalid;
}

// The first min(len, want.size()) bytes of data equal the start of `want`.
bool starts_like(const char* data, size_t len, std::string_view want) {
  return std::memcmp(data, want.data(), std::min(len, want.size())) == 0;
}

// ---- v1

// One space-separated field of a v1 line: its text and the byte that ended it
// (' ', '\r' or '\n'; 0 when the input ended first).
struct Field {
  std::string_view text;
  char end = 0;
};

Field next_field(const char* data, size_t n, size_t& pos) {
  size_t start = pos;
  while (pos < n && data[pos] != ' ' && data[pos] != '\r' && data[pos] != '\n')
    ++pos;
  Field f{std::string_view(data + start, pos - start), pos < n ? data[pos] : '\0'};
  if (pos < n)
    ++pos;
  return f;
}

// Whether `text` is an address of `family` as inet_pton reads it (stored in
// `addr`) or, when !whole, can still grow into one. Whether a prefix can grow
// into an address is decided by trying the few endings that complete any prefix
// that has one: a missing group or octet, "::", or the rest of an IPv4 tail.
bool address_ok(int family, std::string_view text, bool whole, void* addr) {
  constexpr size_t longest = 45; // ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
  if (text.size() > (family == AF_INET ? 15 : longest))
    return false;
  if (!whole && text.empty())
    return true;
  char buf[longest + 8];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  if (whole)
    return ::inet_pton(family, buf, addr) == 1;
  static constexpr const char* v4_endings[] = {"", "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0"};
  static constexpr const char* v6_endings[] = {
      "", "0", ":", ":0", "::", "0.0.0", ".0.0", "0.0", ".0", ".0.0.0"};
  in6_addr scratch;
  auto fits = [&](const char* ending) {
    std::strcpy(buf + text.size(), ending);
    return ::inet_pton(family, buf, &scratch) == 1;
  };
  if (family == AF_INET)
    return std::any_of(std::begin(v4_endings), std::end(v4_endings), fits);
  return std::any_of(std::begin(v6_endings), std::end(v6_endings), fits);
}

// A port in plain decimal 0..65535 (no sign, no leading zeros) or, when
// !whole, a prefix of one.
bool port_ok(std::string_view text, bool whole, uint16_t& port) {
  if (text.empty())
    return !whole;
  if (text.size() > 5 || (text[0] == '0' && text.size() > 1))
    return false;
  uint32_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9')
      return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v > 65535)
    return false;
  port = static_cast<uint16_t>(v);
  return true;
}

void set_address(sockaddr_storage& ss, int family, const void* addr, uint16_t port_be) {
  if (family == AF_INET) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = port_be;
    std::memcpy(&sin.sin_addr, addr, 4);
    std::memcpy(&ss, &sin, sizeof sin);
  } else {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = port_be;
    std::memcpy(&sin6.sin6_addr, addr, 16);
    std::memcpy(&ss, &sin6, sizeof sin6);
  }
}

ProxyParse parse_v1(const char* data, size_t len, ProxyHeader& out, const char** why) {
  // The line must end within 107 bytes, so nothing past them matters.
  const size_t n = std::min(len, proxy_v1_max_length);
  auto need_more = [&] {
    return n == proxy_v1_max_length ? fail(why, "PROXY v1 line longer than 107 bytes")
                                    : ProxyParse::need_more;
  };
  // The CRLF that ends the line, at `pos`.
  auto finish = [&](size_t pos) {
    if (pos == n)
      return need_more();
    if (data[pos] != '\n')
      return fail(why, "PROXY v1 line not ended by CRLF");
    out.length = pos + 1;
    return ProxyParse::complete;
  };

  if (!starts_like(data, n, v1_start))
    return fail(why, "not a PROXY protocol header");
  if (n < v1_start.size())
    return need_more();
  size_t pos = v1_start.size();

  Field proto = next_field(data, n, pos);
  if (proto.end == '\0') {
    for (std::string_view p : {"TCP4", "TCP6", "UNKNOWN"})
      if (p.starts_with(proto.text))
        return need_more();
    return fail(why, "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  }
  if (proto.text == "UNKNOWN") {
    out.local = true;
    if (proto.end == '\r')
      return finish(pos);
    if (proto.end != ' ')
      return fail(why, "PROXY v1 line not ended by CRLF");
    // Whatever follows UNKNOWN up to the CRLF is ignored.
    while (pos < n && data[pos] != '\r' && data[pos] != '\n')
      ++pos;
    if (pos == n)
      return need_more();
    if (data[pos] == '\n')
      return fail(why, "PROXY v1 line not ended by CRLF");
    return finish(pos + 1);
  }
  int family = proto.text == "TCP4" ? AF_INET : proto.text == "TCP6" ? AF_INET6 : 0;
  if (!family)
    return fail(why, "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  if (proto.end != ' ')
    return fail(why, "PROXY v1 line misses the addresses");

  // source address, destination address, source port, destination port
  in6_addr addr[2];
  uint16_t port[2] = {0, 0};
  for (int i = 0; i < 4; ++i) {
    Field f = next_field(data, n, pos);
    bool whole = f.end != '\0';
    if (whole && f.text.empty())
      return fail(why, "PROXY v1 line has an empty field");
    bool ok =
        i < 2 ? address_ok(family, f.text, whole, &addr[i]) : port_ok(f.text, whole, port[i - 2]);
    if (!ok)
      return fail(why, i < 2 ? (family == AF_INET ? "PROXY v1 bad IPv4 address"
                                                  : "PROXY v1 bad IPv6 address")
                             : "PROXY v1 bad port");
    if (!whole)
      return need_more();
    if (f.end == '\n')
      return fail(why, "PROXY v1 line not ended by CRLF");
    if (i < 3 && f.end != ' ')
      return fail(why, "PROXY v1 line misses a field");
    if (i == 3 && f.end != '\r')
      return fail(why, "PROXY v1 line has extra fields");
  }
  ProxyParse r = finish(pos);
  if (r != ProxyParse::complete)
    return r;
  out.family = family;
  set_address(out.source, family, &addr[0], htons(port[0]));
  set_address(out.destination, family, &addr[1], htons(port[1]));
  return r;
}

// ---- v2

uint16_t be16(const unsigned char* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

ProxyParse parse_v2(const char* data, size_t len, ProxyHeader& out, const char** why) {
  const auto* u = reinterpret_cast<const unsigned char*>(data);
  if (!starts_like(data, len, v2_signature))
    return fail(why, "not a PROXY protocol header");
  if (len <= 12)
    return ProxyParse::need_more;
  if (u[12] >> 4 != 2)
    return fail(why, "PROXY v2 version is not 2");
  unsigned command = u[12] & 0x0f;
  if (command > 1)
    return fail(why, "PROXY v2 command is not LOCAL or PROXY");
  const bool local = command == 0;
  if (len <= 13)
    return ProxyParse::need_more;

  // The size of the address block for the family; LOCAL ignores the family.
  size_t addresses = 0;
  int family = 0;
  if (!local) {
    switch (u[13]) {
    case 0x00: // UNSPEC: nothing to tell, as LOCAL
      break;
    case 0x11:
      family = AF_INET;
      addresses = 12;
      break;
    case 0x21:
      family = AF_INET6;
      addresses = 36;
      break;
    case 0x12:
    case 0x22:
      return fail(why, "PROXY v2 UDP is not accepted on an HTTP listener");
    case 0x31:
    case 0x32:
      return fail(why, "PROXY v2 UNIX socket is not accepted on an HTTP listener");
    default:
      return fail(why, "PROXY v2 unknown address family or transport");
    }
  }
  if (len < v2_fixed)
    return ProxyParse::need_more;
  const size_t total = v2_fixed + be16(u + 14);
  if (total < v2_fixed + addresses)
    return fail(why, "PROXY v2 length shorter than the addresses");
  if (len < total)
    return ProxyParse::need_more;

  if (family) {
    // TLVs (type, 16-bit length, value) fill the rest exactly.
    for (size_t at = v2_fixed + addresses; at < total;) {
      if (total - at < 3 || total - at - 3 < be16(u + at + 1))
        return fail(why, "PROXY v2 malformed TLV");
      at += 3 + be16(u + at + 1);
    }
    const unsigned char* a = u + v2_fixed;
    size_t addr_len = family == AF_INET ? 4 : 16;
    uint16_t sport, dport; // network byte order, as in sockaddr
    std::memcpy(&sport, a + 2 * addr_len, 2);
    std::memcpy(&dport, a + 2 * addr_len + 2, 2);
    set_address(out.source, family, a, sport);
    set_address(out.destination, family, a + addr_len, dport);
    out.family = family;
  } else {
    out.local = true;
  }
  out.length = total;
  return ProxyParse::complete;
}

} // namespace

ProxyParse parse_proxy_header(const char* data, size_t len, ProxyHeader& out, const char** why) {
  out = ProxyHeader{};
  if (len == 0)
    return ProxyParse::need_more;
  ProxyParse r = data[0] == v1_start[0]       ? parse_v1(data, len, out, why)
                 : data[0] == v2_signature[0] ? parse_v2(data, len, out, why)
                                              : fail(why, "not a PROXY protocol header");
  if (r != ProxyParse::complete)
    out = ProxyHeader{}; // nothing half-filled
  return r;
}

} // namespace lb::http
