#include "lb/proxy/outbox.hpp"

namespace lb::proxy {

std::string Outbox::text() const {
  std::string s;
  for (unsigned i = first; i < count; ++i)
    s.append(static_cast<const char*>(v[i].iov_base), v[i].iov_len);
  return s;
}

} // namespace lb::proxy
