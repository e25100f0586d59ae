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
  bool add(const void* p, size_t n) {
    if (n == 0)
      return true;
    if (count == capacity)
      return false;
    v[count].iov_base = const_cast<void*>(p);
    v[count].iov_len = n;
    ++count;
    return true;
  }
  bool add(std::string_view s) { return add(s.data(), s.size()); }
  bool empty() const { return first == count; }
  void clear() { count = first = 0; }
  // Drops the first n bytes (written).
  void advance(size_t n) {
    while (n && first < count) {
      if (n >= v[first].iov_len) {
        n -= v[first].iov_len;
        ++first;
      } else {
        v[first].iov_base = static_cast<char*>(v[first].iov_base) + n;
        v[first].iov_len -= n;
        n = 0;
      }
    }
  }
  // The bytes still to write, copied (tests and diagnostics).
  std::string text() const;
};

} // namespace lb::proxy
