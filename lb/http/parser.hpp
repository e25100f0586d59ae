#pragma once
// Incremental HTTP/1.x head and framing parser over llhttp.
//
// The parser is fed the connection's bytes as they arrive (always in one
// contiguous buffer for a head: spans point into it). It stops after the head
// and after the end of each message, so the caller forwards raw bytes and
// knows exactly where one message ends and the next begins (pipelining).

#include "lb/http/message.hpp"

#include <llhttp.h>

#include <cstddef>
#include <string_view>

namespace lb::http {

class Parser {
public:
  enum class Kind { request, response };
  enum class Event {
    need_more,        // all input consumed, message not finished
    head_complete,    // head() is valid; input stopped right after the head
    message_complete, // input stopped right after the message
    error,            // error_reason() says why
  };
  struct Result {
    Event event;
    const char* stop; // one past the last byte consumed
  };

  explicit Parser(Kind kind);
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;

  // The name of the request id header for Field::request_id (empty: none).
  void set_request_id_header(std::string_view name) { request_id_name_ = name; }
  // Responses only: the response answers a HEAD request (no body follows the head).
  void set_head_request(bool v) { head_request_ = v; }

  Result feed(const char* p, const char* end);
  // Forgets any message in progress (the connection is being replaced).
  void reset();
  // The connection closed: finishes a message that ends at end of file.
  bool finish_at_eof();

  const Head& head() const { return head_; }
  Head& head() { return head_; }
  bool in_message() const { return in_message_; }
  bool body_until_eof() const { return body_until_eof_; }
  bool upgrade() const { return upgrade_; }
  uint64_t body_bytes() const { return body_bytes_; }
  // A body framed by Content-Length under way: its bytes still to come (0
  // for any other framing, or outside a body).
  uint64_t body_left() const;
  // `n` (at most body_left()) of those bytes went by without feed() (spliced
  // from socket to socket); the message ends with the last of them.
  void skip_body(uint64_t n);
  // Responses to HTTP/1.0 clients: body bytes of the next feed() are moved down
  // to `out` as they are decoded, without the chunk framing (the caller sends
  // [out, dechunked_end()) instead of the raw bytes). nullptr: off.
  void dechunk_into(char* out) { dechunk_out_ = out; }
  char* dechunked_end() const { return dechunk_out_; }
  // Requests: the whole request target has been seen.
  bool target_complete() const { return target_complete_; }
  const char* error_reason() const { return error_reason_; }
  // Requests: the status that answers the last error (400; 431 for too many
  // header fields; 501 for a method llhttp does not know).
  int error_status() const { return error_status_; }

private:
  static int on_message_begin(llhttp_t*);
  static int on_method(llhttp_t*, const char*, size_t);
  static int on_url(llhttp_t*, const char*, size_t);
  static int on_header_field(llhttp_t*, const char*, size_t);
  static int on_header_field_complete(llhttp_t*);
  static int on_header_value(llhttp_t*, const char*, size_t);
  static int on_header_value_complete(llhttp_t*);
  static int on_headers_complete(llhttp_t*);
  static int on_body(llhttp_t*, const char*, size_t);
  static int on_message_complete(llhttp_t*);

  int headers_complete();
  void end_head(const char* stop);
  const char* check_framing() const;
  Field classify(std::string_view name) const;

  static const llhttp_settings_t* settings_for(Kind kind);
  static llhttp_settings_t make_settings(Kind kind);

  // What every message touches first, then the head with its long field
  // array last (only its first `count` entries are ever touched).
  llhttp_t parser_;
  Kind kind_;
  bool head_request_ = false;
  bool in_message_ = false;
  bool in_head_ = false;
  bool body_until_eof_ = false;
  bool upgrade_ = false;
  bool too_many_headers_ = false;
  bool target_complete_ = false;
  int error_status_ = 400;
  std::string_view request_id_name_;
  Header* current_ = nullptr;
  char* dechunk_out_ = nullptr;
  uint64_t body_bytes_ = 0;
  const char* error_reason_ = nullptr;
  Head head_;
};

} // namespace lb::http
