#include "lb/proxy/outbox.hpp"

namespace lb::proxy {

bool Outbox::add(const void* p, size_t n) {
  if (n == 0)
    return true;
  if (count == capacity)
    return false;
  v[count].iov_base = const_cast<void*>(p);
  v[count].iov_len = n;
  ++count;
  return true;
}

void Outbox::advance(size_t n) {
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

std::string Outbox::text() const {
  std::string s;
  for (unsigned i = first; i < count; ++i)
    s.append(static_cast<const char*>(v[i].iov_base), v[i].iov_len);
  return s;
}

} // namespace lb::proxy
