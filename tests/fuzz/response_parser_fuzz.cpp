// libFuzzer target: the response parser (a misbehaving backend), with and
// without the HEAD flag, fed in arbitrary pieces.
#include "lb/http/parser.hpp"

#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  size_t step = 1 + data[0] % 64;
  bool head_request = data[0] & 0x80;
  std::vector<char> buffer(data + 1, data + size);
  const char* p = buffer.data();
  const char* end = p + buffer.size();
  lb::http::Parser parser(lb::http::Parser::Kind::response);
  parser.set_head_request(head_request);
  const char* fed_to = p;
  while (p < end) {
    fed_to = std::min(end, std::max(fed_to, p) + step);
    auto r = parser.feed(p, fed_to);
    if (r.event == lb::http::Parser::Event::error)
      break;
    if (r.stop < p || r.stop > fed_to)
      __builtin_trap();
    if (r.event == lb::http::Parser::Event::head_complete) {
      const lb::http::Head& h = parser.head();
      if (h.start && (h.start < buffer.data() || h.end > end))
        __builtin_trap();
    }
    p = r.stop;
  }
  parser.finish_at_eof();
  return 0;
}
