#pragma once
// What both HTTP/2 sides of lb (h2_session: to clients, h2_upstream: to
// backends) do with the HTTP/1.1 heads lb writes: their "Name: value" lines
// as HTTP/2 fields (nghttp2_nv pointing into the head, names lowered in
// place, the connection's own fields left out).

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace lb::proxy {

inline nghttp2_nv nv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

inline std::string_view name_of(const nghttp2_nv& f) {
  return {reinterpret_cast<const char*>(f.name), f.namelen};
}
inline std::string_view value_of(const nghttp2_nv& f) {
  return {reinterpret_cast<const char*>(f.value), f.valuelen};
}

// Fields about the HTTP/1.1 connection, which HTTP/2 does not carry (RFC 9113 §8.2.2).
bool is_connection_field(std::string_view lower);

// "Name: value\r\n" lines in [at, end) (a head's fields or a trailer section,
// as lb wrote them) to `list`: names lowered in place, the connection's own
// fields left out. Returns how many were added (at most `room`); `chunked`
// says whether a transfer-encoding was among them.
size_t fields_to_nv(char* at, char* end, nghttp2_nv* list, size_t room, bool& chunked);

// "1a2b\r\n": a chunk's size line.
void append_hex(std::string& out, size_t n);

} // namespace lb::proxy
