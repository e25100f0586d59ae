#pragma once
// The answers lb gives itself instead of a backend's: its error pages (400,
// 404, 408, 413, 414, 431, 502, 503, 504, ...), the maintenance page, and
// OPTIONS or TRACE at Max-Forwards 0. One builder: each answer is written
// into an AnswerBuffer whose capacity is the sum of the bounds of its parts,
// checked at compile time; the parts that come from outside (a reason, a
// request id, names) are cut to their bounds first. So an answer always fits,
// and what its Content-Length says is what is sent.

#include "lb/http/message.hpp"
#include "lb/proxy/outbox.hpp"

#include <cstddef>
#include <string_view>

namespace lb::proxy {

struct AnswerBuffer {
  static constexpr size_t max_reason = 256;     // why lb answers (cut there)
  static constexpr size_t max_request_id = 128; // an id shown (cut there)
  static constexpr size_t max_name = 128;       // a pool or header name (config's bound)
  static constexpr size_t capacity = 1024;
  char data[capacity];
};

// "Not Found" for 404, ...; "Error" for a status lb does not answer itself.
std::string_view reason_phrase(int status);

// A 429 from a route's rate limit: Retry-After and the IETF RateLimit-Policy
// and RateLimit fields (draft-ietf-httpapi-ratelimit-headers).
struct RateLimitFields {
  uint32_t limit = 0;       // requests per window
  uint32_t window_s = 1;    // the window, seconds
  uint32_t burst = 0;       // beyond the rate, at once
  uint32_t retry_after = 1; // seconds until a request would pass
};

struct ErrorAnswer {
  int status = 500;
  std::string_view reason;     // what went wrong, in the user's words
  std::string_view request_id; // shown in the body
  bool keep_alive = true;      // the connection stays open after it
  bool head_request = false;   // the answer to HEAD has the head only (RFC 9110 §9.3.2)
  const RateLimitFields* rate_limit = nullptr; // with 429
};
// "HTTP/1.1 404 Not Found" with a text body naming the reason and the request
// id. A 405 names what is allowed (RFC 9110 §15.5.6).
void write_error(const ErrorAnswer& answer, AnswerBuffer& buf, Outbox& out);

// A gRPC call lb answers itself (no backend, a failed connect, a timeout):
// HTTP 200 with no body, grpc-status and grpc-message (percent-encoded) in
// the head, which an HTTP/2 client gets as a trailers-only response.
struct GrpcAnswer {
  int grpc_status = 2;         // UNKNOWN
  std::string_view message;    // cut to max_reason
  std::string_view request_id; // added to the message
  bool keep_alive = true;
};
void write_grpc_error(const GrpcAnswer& answer, AnswerBuffer& buf, Outbox& out);
// The gRPC status for an error lb would answer with this HTTP status:
// timeouts (408, 504) DEADLINE_EXCEEDED (4), 502 and 503 UNAVAILABLE (14),
// 429 and the size limits RESOURCE_EXHAUSTED (8), 403 PERMISSION_DENIED (7),
// 404 UNIMPLEMENTED (12), 400 INTERNAL (13), others UNKNOWN (2).
int grpc_status_for(int http_status);

struct MaintenanceAnswer {
  std::string_view pool;
  std::string_view request_id_header; // empty: request ids are off
  std::string_view request_id;
  bool keep_alive = true;
  bool head_request = false;
};
// 503 with an HTML page, Retry-After and X-Lb-Maintenance. The request id goes
// in its header and on the page only when it is plainly an id (letters,
// digits, - _ . :, at most max_request_id): the page is HTML.
void write_maintenance(const MaintenanceAnswer& answer, AnswerBuffer& buf, Outbox& out);

// A route's redirect: "Location: SCHEME://HOST[:PORT]PATH[?QUERY]", no body.
// The parts refer to bytes that must outlive the write (the request's, the
// config's).
struct RedirectAnswer {
  int code = 301;
  std::string_view scheme; // "http" or "https"
  std::string_view host;
  uint16_t port = 0;            // 0: none written
  std::string_view path_before; // the path: these two, one after the other
  std::string_view path_after;
  bool has_query = false;
  std::string_view query; // without its '?'
  bool keep_alive = true;
};
void write_redirect(const RedirectAnswer& answer, AnswerBuffer& buf, Outbox& out);

// A route's fixed response. The body refers to bytes that must outlive the
// write (the config's).
struct FixedAnswer {
  int status = 200;
  std::string_view content_type;
  std::string_view body;
  bool keep_alive = true;
  bool head_request = false;
};
void write_fixed(const FixedAnswer& answer, AnswerBuffer& buf, Outbox& out);

// 200 to an OPTIONS or TRACE that may go no further (lb is the final
// recipient): empty for OPTIONS; for TRACE the request as received, less the
// fields that carry credentials (RFC 9110 §9.3.8). The echo refers to the
// request's bytes, which must outlive the write. False when it has too many
// fields to echo.
bool write_final_recipient(const http::Head& request, bool keep_alive, AnswerBuffer& buf,
                           Outbox& out);

} // namespace lb::proxy
