// libFuzzer target: the PROXY protocol header parser. Besides never reading
// outside its input, it must agree with itself as bytes arrive (a shorter input
// never gives a later answer: invalid stays invalid, complete stays the same
// header, need_more before it), and what it reads out must read back the same
// when written again as a v1 line and as a v2 header.
#include "lb/http/proxy_protocol.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

using lb::http::parse_proxy_header;
using lb::http::ProxyHeader;
using lb::http::ProxyParse;

bool same(const ProxyHeader& a, const ProxyHeader& b) {
  return a.local == b.local && a.family == b.family && a.length == b.length &&
         std::memcmp(&a.source, &b.source, sizeof a.source) == 0 &&
         std::memcmp(&a.destination, &b.destination, sizeof a.destination) == 0;
}

bool same_addresses(const ProxyHeader& a, const ProxyHeader& b) {
  return a.family == b.family && std::memcmp(&a.source, &b.source, sizeof a.source) == 0 &&
         std::memcmp(&a.destination, &b.destination, sizeof a.destination) == 0;
}

// Parses a copy of exactly [data, data + len), so ASan sees any read past it.
ProxyParse parse_copy(const uint8_t* data, size_t len, ProxyHeader& out) {
  std::vector<char> copy(data, data + len);
  const char* why = nullptr;
  ProxyParse r = parse_proxy_header(copy.data(), copy.size(), out, &why);
  if (r == ProxyParse::invalid && (!why || !*why))
    __builtin_trap(); // says why
  return r;
}

// The header written again as a v1 line and as a v2 header reads back the same.
void round_trip(const ProxyHeader& h) {
  const void *src, *dst;
  uint16_t sport, dport;
  if (h.family == AF_INET) {
    auto s = reinterpret_cast<const sockaddr_in*>(&h.source);
    auto d = reinterpret_cast<const sockaddr_in*>(&h.destination);
    src = &s->sin_addr, dst = &d->sin_addr, sport = s->sin_port, dport = d->sin_port;
  } else {
    auto s = reinterpret_cast<const sockaddr_in6*>(&h.source);
    auto d = reinterpret_cast<const sockaddr_in6*>(&h.destination);
    src = &s->sin6_addr, dst = &d->sin6_addr, sport = s->sin6_port, dport = d->sin6_port;
  }
  char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN], line[160];
  if (!inet_ntop(h.family, src, a, sizeof a) || !inet_ntop(h.family, dst, b, sizeof b))
    __builtin_trap();
  int n = std::snprintf(line, sizeof line, "PROXY %s %s %s %u %u\r\n",
                        h.family == AF_INET ? "TCP4" : "TCP6", a, b, unsigned{ntohs(sport)},
                        unsigned{ntohs(dport)});
  ProxyHeader v1;
  if (parse_copy(reinterpret_cast<const uint8_t*>(line), n, v1) != ProxyParse::complete ||
      !same_addresses(h, v1) || v1.length != static_cast<size_t>(n))
    __builtin_trap();

  size_t addr_len = h.family == AF_INET ? 4 : 16;
  uint8_t v2[16 + 36] = {'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n', 0x21};
  v2[13] = h.family == AF_INET ? 0x11 : 0x21;
  v2[15] = static_cast<uint8_t>(2 * addr_len + 4);
  std::memcpy(v2 + 16, src, addr_len);
  std::memcpy(v2 + 16 + addr_len, dst, addr_len);
  std::memcpy(v2 + 16 + 2 * addr_len, &sport, 2);
  std::memcpy(v2 + 16 + 2 * addr_len + 2, &dport, 2);
  ProxyHeader two;
  if (parse_copy(v2, 16 + v2[15], two) != ProxyParse::complete || !same_addresses(h, two) ||
      two.length != 16u + v2[15])
    __builtin_trap();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ProxyHeader h;
  ProxyParse r = parse_copy(data, size, h);
  if (r == ProxyParse::complete) {
    if (h.length == 0 || h.length > size)
      __builtin_trap();
    if (h.local != (h.family == 0))
      __builtin_trap();
    if (h.family != 0 && h.family != AF_INET && h.family != AF_INET6)
      __builtin_trap();
    if (h.family && (h.source.ss_family != h.family || h.destination.ss_family != h.family))
      __builtin_trap();
    // Exactly the header's bytes give the same header; fewer are a prefix.
    ProxyHeader again;
    if (parse_copy(data, h.length, again) != ProxyParse::complete || !same(h, again))
      __builtin_trap();
    for (size_t k : {h.length - 1, h.length / 2, size_t{0}})
      if (parse_copy(data, k, again) != ProxyParse::need_more)
        __builtin_trap();
    if (h.family)
      round_trip(h);
  } else if (h.local || h.family || h.length) {
    __builtin_trap(); // nothing half-filled
  }
  if (r == ProxyParse::need_more) {
    // Never more than the longest header.
    if (size >= lb::http::proxy_v2_max_length)
      __builtin_trap();
    if (size >= lb::http::proxy_v1_max_length && data[0] == 'P')
      __builtin_trap();
  }
  // One byte less: an earlier answer never changes once given.
  if (size > 0) {
    ProxyHeader shorter;
    ProxyParse s = parse_copy(data, size - 1, shorter);
    if (s == ProxyParse::invalid && r != ProxyParse::invalid)
      __builtin_trap();
    if (s == ProxyParse::complete && (r != ProxyParse::complete || !same(h, shorter)))
      __builtin_trap();
    if (r == ProxyParse::need_more && s != ProxyParse::need_more)
      __builtin_trap();
  }
  return 0;
}
