#pragma once
// The rules of a request line (RFC 9112 §3, RFC 9110 §9.3.6): the version lb
// speaks, the forms of request target it accepts, their size, CONNECT.
// Pure functions over a parsed head; no socket, no allocation.

#include "lb/http/message.hpp"

#include <cstdint>

namespace lb::http {

// A longer request target is answered 414 (nginx and HAProxy use 8 KiB too).
inline constexpr uint32_t max_target_bytes = 8 * 1024;

struct RequestLineCheck {
  int status = 0;               // 0: acceptable; else the status that answers it
  const char* reason = nullptr; // why, for the answer and the log
  // An absolute-form target ("GET http://host/path") names the host itself:
  // its authority replaces the Host header, for routing and for the backend
  // (RFC 9112 §3.2.2). Empty for origin-form and "*".
  Span authority;
};

// Checks `head`'s request line. The answers: 505 for a version other than
// HTTP/1.x, 414 for a target over max_target_bytes, 405 for CONNECT (lb is not
// a forward proxy), 400 for a fragment, "*" with a method other than OPTIONS,
// a target neither origin-form nor absolute-form (http or https), or an empty
// authority or one with userinfo.
RequestLineCheck check_request_line(const Head& head);

} // namespace lb::http
