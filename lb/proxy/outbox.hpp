#pragma once
// The gather list of one write: slices of buffers that outlive the write, in
// order (a head forwarded without copying its bytes, the fields lb adds, body
// bytes). Fixed capacity: no allocation.
//
// The bytes lb makes itself (the fields it adds, their names and its own
// values: never bytes a peer sent) go through put(): copied into the outbox's
// own space, where neighbours join into one slice. The kernel pays for every
// slice of a write (a request head otherwise goes out as 14), so a
// forwarded head is a few slices: the peer's bytes, lb's, the peer's.

#include <sys/uio.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <string_view>

namespace lb::proxy {

struct Outbox {
  static constexpr unsigned capacity = 128;
  Outbox() = default;
  Outbox(const Outbox&) = delete; // slices point into `own`
  Outbox& operator=(const Outbox&) = delete;
  // (The counts first, beside the first slices: one cache line for a short list.)
  unsigned count = 0;
  unsigned first = 0;
  size_t own_used = 0;
  iovec v[capacity];
  char own[512]; // put()'s bytes (the fields lb adds to a head)
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
  // Adds bytes lb made (see above): copied and joined to the slice before
  // when that one is lb's too; by reference (as add()) when the space is full,
  // so `s` must outlive the write all the same.
  // Inlined: most calls add a literal, whose copy then takes a few moves.
  [[gnu::always_inline]] bool put(std::string_view s) {
    if (s.empty())
      return true; // (an empty view may have no data: no memcpy from null)
    if (s.size() > sizeof own - own_used)
      return add(s);
    char* at = own + own_used;
    std::memcpy(at, s.data(), s.size());
    own_used += s.size();
    if (count > first && static_cast<char*>(v[count - 1].iov_base) + v[count - 1].iov_len == at) {
      v[count - 1].iov_len += s.size();
      return true;
    }
    return add(at, s.size());
  }
  bool empty() const { return first == count; }
  void clear() { count = first = 0, own_used = 0; }
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
