// libFuzzer target: the request parser, fed in arbitrary pieces from one
// buffer as a connection does, across message boundaries (pipelining).
#include "lb/http/parser.hpp"

#include <cstdint>
#include <cstring>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  // The first byte chooses the piece size, the rest is the connection's bytes.
  size_t step = 1 + data[0] % 64;
  std::vector<char> buffer(data + 1, data + size);
  const char* p = buffer.data();
  const char* end = p + buffer.size();
  lb::http::Parser parser(lb::http::Parser::Kind::request);
  parser.set_request_id_header("X-Request-Id");
  const char* fed_to = p;
  while (p < end) {
    fed_to = std::min(end, std::max(fed_to, p) + step);
    auto r = parser.feed(p, fed_to);
    if (r.event == lb::http::Parser::Event::error)
      break;
    if (r.stop < p || r.stop > fed_to)
      __builtin_trap(); // never outside its input
    if (r.event == lb::http::Parser::Event::head_complete) {
      lb::http::Head& h = parser.head();
      lb::http::mark_connection_options(h);
      // Spans must lie inside the head.
      for (unsigned i = 0; i < h.count; ++i) {
        const auto& f = h.headers[i];
        if (f.name.p < h.start || f.name.end() > h.end || f.value.end() > h.end ||
            f.line_start > f.line_end || f.line_end > h.end)
          __builtin_trap();
      }
    }
    p = r.stop;
  }
  parser.finish_at_eof();
  return 0;
}
