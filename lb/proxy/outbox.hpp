#pragma once
// The gather list of one write: slices of buffers that outlive the write, in
// order (a head forwarded without copying its bytes, the fields lb adds, body
// bytes). Fixed capacity: no allocation.

#include <sys/uio.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace lb::proxy {

struct Outbox {
  static constexpr unsigned capacity = 128;
  iovec v[capacity];
  unsigned count = 0;
  unsigned first = 0;
  // False when the list is full (the slice is not added).
  bool add(const void* p, size_t n);
  bool add(std::string_view s) { return add(s.data(), s.size()); }
  bool empty() const { return first == count; }
  void clear() { count = first = 0; }
  // Drops the first n bytes (written).
  void advance(size_t n);
  // The bytes still to write, copied (tests and diagnostics).
  std::string text() const;
};

} // namespace lb::proxy
