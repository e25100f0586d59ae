#pragma once
// Decodes a chunked body (RFC 9112 §7.1) that lb's parser has checked already
// (so well-formed): the chunks' bytes to one string, the trailer section to
// another. Used where a chunked HTTP/1.1 body becomes HTTP/2 DATA frames and
// trailing HEADERS (both ways: responses to HTTP/2 clients, requests to
// HTTP/2 backends).

#include <cstddef>
#include <cstdint>
#include <string>

namespace lb::http {

class ChunkDecoder {
public:
  // Takes p[0, n): data bytes are appended to `data`, the trailer section
  // ("Name: value\r\n" lines and the empty line, or just "\r\n") to
  // `trailers`. Bytes after the end are ignored.
  void feed(const char* p, size_t n, std::string& data, std::string& trailers);
  // The last chunk and the trailer section are in.
  bool done() const { return state_ == State::done; }
  void reset() {
    state_ = State::size;
    left_ = 0;
  }

private:
  enum class State : uint8_t { size, extension, data, data_end, trailers, done };
  State state_ = State::size;
  uint64_t left_ = 0;
};

} // namespace lb::http
