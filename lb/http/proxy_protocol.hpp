#pragma once
// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2):
// an outer load balancer sends it as the very first bytes of a connection to
// name the real client. A listener with `proxy_protocol: true` parses it from
// the bytes read so far, before any HTTP, and skips `length` bytes.

#include <sys/socket.h>

#include <cstddef>

namespace lb::http {

struct ProxyHeader {
  bool local = false;             // v2 LOCAL command, v2 UNSPEC family or v1 "UNKNOWN": keep the
                                  // socket's own addresses (a health check from the outer LB)
  int family = 0;                 // AF_INET / AF_INET6 (0 when local)
  sockaddr_storage source{};      // the original client address and port
  sockaddr_storage destination{}; // the address the client connected to
  size_t length = 0;              // bytes of the header to skip
};

enum class ProxyParse { complete, need_more, invalid };

// v1: one text line, CRLF included ("PROXY UNKNOWN" + two full IPv6 addresses + ports).
inline constexpr size_t proxy_v1_max_length = 107;
// v2: 16-byte fixed part and a 16-bit length of addresses and TLVs.
inline constexpr size_t proxy_v2_max_length = 16 + 65535;

// Parses the PROXY header at the start of [data, data + len), the bytes a
// connection has received so far (any bytes after the header are not looked at).
// Pure and allocation-free; callable from any thread.
//  - complete: `out` describes the header, which is out.length bytes long.
//  - need_more: the bytes so far can still begin a valid header: read more and
//    call again from the start. Never past the maximum lengths above.
//  - invalid: anything else (not a PROXY header, a malformed one, UDP or UNIX
//    sockets); the connection must be closed. `why`, when given, gets a short
//    static reason.
// v1 is strict: single spaces, TCP4 / TCP6 addresses that inet_pton accepts for
// that family, ports 0..65535 in plain decimal, CRLF within 107 bytes; after
// "UNKNOWN" anything up to the CRLF is ignored. v2 TLVs after the addresses are
// skipped but must be well formed.
// `out` is reset on every call.
ProxyParse parse_proxy_header(const char* data, size_t len, ProxyHeader& out,
                              const char** why = nullptr);

} // namespace lb::http
