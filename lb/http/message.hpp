#pragma once
// A parsed HTTP/1.x message head, as spans into the connection's read buffer.
// Nothing is copied: the spans stay valid while the buffer holds the head.

#include <cstdint>
#include <string_view>

namespace lb::http {

struct Span {
  const char* p = nullptr;
  uint32_t n = 0;
  std::string_view view() const { return {p, n}; }
  bool empty() const { return n == 0; }
  const char* end() const { return p + n; }
};

// Header fields lb acts on; everything else is `other` and passes through.
enum class Field : uint8_t {
  other,
  host,
  connection,
  keep_alive,
  proxy_connection,
  te,
  trailer,
  upgrade,
  content_length,
  transfer_encoding,
  x_forwarded_for,
  x_forwarded_proto,
  x_forwarded_host,
  x_forwarded_client_cert, // always cut; lb sets it from a verified client certificate
  via,
  max_forwards,
  request_id, // the listener's configured request id header (keep it last: see below)
};
static_assert(static_cast<unsigned>(Field::request_id) < 32, "Head::fields has a bit for each");

struct Header {
  Span name;
  Span value;             // without surrounding whitespace
  const char* line_start; // first byte of the field line
  const char* line_end;   // one past its line terminator
  Field field;
  bool hop_by_hop; // not forwarded
};

inline constexpr unsigned max_headers = 100;

struct Head {
  const char* start = nullptr; // first byte of the start line
  const char* end = nullptr;   // one past the empty line that ends the head
  Span method;                 // requests
  Span target;                 // requests
  int status = 0;              // responses
  uint8_t major = 1;
  uint8_t minor = 1;
  bool keep_alive = true; // what the message says about its connection
  bool chunked = false;
  bool has_content_length = false;
  uint64_t content_length = 0;
  uint32_t fields = 0; // a bit (1 << Field) for each kind of field present
  unsigned count = 0;
  Header headers[max_headers];

  // Back to an empty head. Only the fields before `count` are ever read, so
  // the header array is left as it is (clearing it would write 6 KiB).
  void clear() {
    start = end = nullptr;
    method = target = Span{};
    status = 0;
    major = minor = 1;
    keep_alive = true;
    chunked = has_content_length = false;
    content_length = 0;
    fields = 0;
    count = 0;
  }
  // Whether a field of this kind is present: most heads lack most of them,
  // and this answers without a walk over the fields.
  bool has(Field f) const { return fields & (1u << static_cast<unsigned>(f)); }
  // The first field of this kind, or nullptr.
  const Header* find(Field f) const { return has(f) ? find_present(f) : nullptr; }
  // Ends of the start line: one past its line terminator.
  const char* start_line_end() const { return count ? headers[0].line_start : end_of_fields(); }
  // Where the empty line that ends the head begins.
  const char* end_of_fields() const;

private:
  const Header* find_present(Field f) const;
};

// ASCII case-insensitive equality.
bool iequals(std::string_view a, std::string_view b);

} // namespace lb::http

namespace lb::http {

// Marks as hop-by-hop every field named by the Connection header(s) (RFC 9110 §7.6.1).
void mark_connection_options(Head& head);

// The value of cookie `name` in the Cookie header(s), or empty.
std::string_view find_cookie(const Head& head, std::string_view name);

// The value of the first header named `name` (case-insensitive), or empty.
std::string_view find_header(const Head& head, std::string_view name);

// Whether a comma-separated list value holds `token` (case-insensitive).
bool has_token(std::string_view list, std::string_view token);

} // namespace lb::http
