#include "lb/http/chunked.hpp"

#include <algorithm>
#include <cstring>

namespace lb::http {

void ChunkDecoder::feed(const char* p, size_t n, std::string& data, std::string& trailers) {
  const char* end = p + n;
  while (p < end) {
    switch (state_) {
    case State::size: {
      char c = *p++;
      int digit = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
      if (digit >= 0)
        left_ = left_ * 16 + static_cast<uint64_t>(digit);
      else if (c == '\n')
        state_ = left_ ? State::data : State::trailers;
      else if (c != '\r')
        state_ = State::extension;
      break;
    }
    case State::extension:
      if (*p++ == '\n')
        state_ = left_ ? State::data : State::trailers;
      break;
    case State::data: {
      size_t take = static_cast<size_t>(std::min<uint64_t>(left_, static_cast<uint64_t>(end - p)));
      data.append(p, take);
      p += take;
      left_ -= take;
      if (!left_)
        state_ = State::data_end;
      break;
    }
    case State::data_end: // the CRLF after a chunk's bytes
      if (*p++ == '\n')
        state_ = State::size;
      break;
    case State::trailers: {
      // Up to the empty line; kept whole (a trailer section is small: lb's
      // parser bounds it with the head's limit).
      const char* lf = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
      const char* stop = lf ? lf + 1 : end;
      trailers.append(p, stop);
      p = stop;
      if (lf && (trailers == "\r\n" || trailers.ends_with("\r\n\r\n")))
        state_ = State::done;
      break;
    }
    case State::done:
      return;
    }
  }
}

} // namespace lb::http
