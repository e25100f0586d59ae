#pragma once
// Every rule lb applies to a message head on its way through, in one place:
// hop-by-hop fields (RFC 9110 §7.6.1), X-Forwarded-For/-Proto/-Host, Via
// (§7.6.3), the request id, Max-Forwards (§7.6.2), absolute-form targets
// (RFC 9112 §3.2.2), upgrades, framing fields a client cannot take, the
// sticky cookie. Pure functions over a parsed head: `mark_*` decides which of
// its fields go no further, `write_*` gathers the head to send as slices of
// the received bytes and the fields lb adds (no header byte is copied).
//
// Adding a rule: here and in tests/unit/proxy/header_rules_test.cpp.

#include "config/config_types.hpp"
#include "lb/http/message.hpp"
#include "lb/proxy/outbox.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lb::proxy {

// ---- Requests, toward the backend --------------------------------------------

// Marks what the request's own fields say about themselves: the fields named
// in Connection; Host when an absolute-form target's `authority` replaces it;
// Upgrade is kept when the request asks to switch protocols (an HTTP/1.1
// request with Connection: upgrade and an Upgrade other than h2c: lb speaks
// HTTP/1.1 to backends, and an h2c tunnel would bypass routing). Returns
// whether it asks to switch.
bool mark_request_head(http::Head& head, http::Span authority);

// The hops an OPTIONS or TRACE may still go (Max-Forwards, RFC 9110 §7.6.2):
// nullopt for other methods and when the field is absent or not a number.
// Leading zeros say nothing; more than 18 digits is "many" (not 0).
std::optional<uint64_t> max_forwards(const http::Head& head);

// What a route's header values may refer to (%{client_ip}, %{request_id}, %{host}).
struct HeaderVars {
  std::string_view client_ip;
  std::string_view request_id;
  std::string_view host; // the client's Host (or an absolute-form target's authority)
};

struct RequestRules {
  config::Headers::ForwardedFor forwarded_for = config::Headers::ForwardedFor::append;
  std::string_view client_ip;           // appended to X-Forwarded-For
  bool https = false;                   // X-Forwarded-Proto
  bool via = true;                      // Via: 1.x lb
  http::Span authority;                 // an absolute-form target's: sent as Host
  std::string_view request_id_header;   // the field name for request_id
  std::string_view request_id;          // a generated id to add; empty: none
  std::string_view max_forwards_line;   // "Max-Forwards: N\r\n" for the client's; empty: none
  std::string_view client_cert;         // X-Forwarded-Client-Cert's value; empty: none
  bool upgrade = false;                 // the request asks to switch protocols
  const config::Route* route = nullptr; // its rewrite and request_headers; nullptr: none
  HeaderVars vars;                      // for the route's header values
};

// The request head as the backend gets it, into `out` (cleared first). The
// bytes of `rules` must outlive the write. False when the gather list is full
// (too many fields to forward).
bool write_request_head(const http::Head& head, const RequestRules& rules, Outbox& out);

// ---- Responses, toward the client --------------------------------------------

struct ResponseShape {
  bool interim = false;   // 1xx other than 101: the final response follows
  bool switching = false; // 101 Switching Protocols
  bool dechunk = false;   // chunked toward an HTTP/1.0 client: sent decoded, ended by close
};

// Marks the response's hop-by-hop fields and the framing fields its client
// must not see (bodiless 1xx, 204 and 304 claim no body: RFC 9112 §6.3,
// RFC 9110 §8.6; an HTTP/1.0 client gets a chunked body decoded) and says
// what kind of response it is. A 101 keeps its Upgrade field.
ResponseShape mark_response_head(http::Head& head, bool client_http10);

struct ResponseRules {
  bool via = true;
  bool keep_client = true;                    // the client connection stays open after it
  bool client_http10 = false;                 // ... which then needs Connection: keep-alive
  std::string_view set_cookie_line;           // "Set-Cookie: ...\r\n" to add; empty: none
  const config::HeaderEdits* edits = nullptr; // the route's response_headers; nullptr: none
  HeaderVars vars;                            // for their values
};

// The response head as the client gets it, into `out` (cleared first). False
// when the gather list is full.
bool write_response_head(const http::Head& head, const ResponseShape& shape,
                         const ResponseRules& rules, Outbox& out);

// "Set-Cookie: NAME=VALUE; Path=/; HttpOnly\r\n" into `buf`: the sticky
// cookie that pins a client to a backend. Empty when it does not fit.
std::string_view sticky_cookie_line(char* buf, size_t size, std::string_view name,
                                    std::string_view value);

} // namespace lb::proxy
