#include "lb/proxy/h2_fields.hpp"

#include <cstdio>
#include <cstring>

namespace lb::proxy {

bool is_connection_field(std::string_view lower) {
  return lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" ||
         lower == "transfer-encoding" || lower == "upgrade" || lower == "te";
}

size_t fields_to_nv(char* at, char* end, nghttp2_nv* list, size_t room, bool& chunked) {
  size_t n = 0;
  while (at < end && n < room) {
    char* e = static_cast<char*>(std::memchr(at, '\r', static_cast<size_t>(end - at)));
    if (!e)
      e = end;
    char* colon = static_cast<char*>(std::memchr(at, ':', static_cast<size_t>(e - at)));
    if (colon) {
      for (char* c = at; c < colon; ++c)
        *c = static_cast<char>(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
      const char* v = colon + 1;
      while (v < e && (*v == ' ' || *v == '\t'))
        ++v;
      const char* ve = e;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        --ve;
      std::string_view name(at, static_cast<size_t>(colon - at));
      if (name == "transfer-encoding")
        chunked = true; // (lb passes on only "chunked" as the last coding)
      if (!is_connection_field(name))
        list[n++] = nv(name, std::string_view(v, static_cast<size_t>(ve - v)));
    }
    at = e + 2;
  }
  return n;
}

void append_hex(std::string& out, size_t n) {
  char buf[20];
  int len = std::snprintf(buf, sizeof buf, "%zx\r\n", n);
  out.append(buf, static_cast<size_t>(len));
}

} // namespace lb::proxy
