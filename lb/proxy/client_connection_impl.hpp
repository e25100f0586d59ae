#pragma once
// What the files that implement ClientConnection share (client_connection.cpp,
// upstream_exchange.cpp, tunnel.cpp): the reference a running step holds,
// reads and writes that keep the socket's readiness (h2_upstream.cpp reads
// its backend connections with them too). Not for other modules.

#include "lb/proxy/client_connection.hpp"

#include "lb/io/sys.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>

namespace lb::proxy {

// A strong reference: held by the event loop's registration of the client
// socket, and by whoever runs a step.
class ClientConnection::Ref {
public:
  explicit Ref(ClientConnection* s) : s_(s) { s_->add_ref(); }
  Ref(const Ref& o) : s_(o.s_) { s_->add_ref(); }
  Ref(Ref&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  Ref& operator=(const Ref&) = delete;
  ~Ref() {
    if (s_)
      s_->release();
  }
  ClientConnection* operator->() const { return s_; }

private:
  ClientConnection* s_;
};

inline double ms_between(io::Clock::time_point a, io::Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Writes as much of `out` as the socket takes now. Returns 1 when all is
// written, 0 when the socket would block, -1 on error (errno set). A short
// write means the socket is full: no write until its next EPOLLOUT.
inline int write_some(io::Watch& w, Outbox& out, uint64_t& written) {
  while (!out.empty()) {
    if (!w.out_ready)
      return 0;
    msghdr m{};
    m.msg_iov = out.v + out.first;
    m.msg_iovlen = out.count - out.first;
    size_t asked = 0;
    for (unsigned i = out.first; i < out.count; ++i)
      asked += out.v[i].iov_len;
    ssize_t n = io::sys::sendmsg(w.fd, &m, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        w.blocked();
        return 0;
      }
      return -1;
    }
    written += static_cast<uint64_t>(n);
    out.advance(static_cast<size_t>(n));
    if (static_cast<size_t>(n) < asked)
      w.blocked();
  }
  return 1;
}

// Reads into p[0, n) from a plain socket, keeping its readiness: none known,
// no system call (EAGAIN at once); a short read means drained.
inline ssize_t plain_recv(io::Watch& w, char* p, size_t n) {
  if (!w.in_ready) {
    errno = EAGAIN;
    return -1;
  }
  ssize_t r = io::sys::recv(w.fd, p, n, 0);
  if (r < 0 ? errno == EAGAIN || errno == EWOULDBLOCK : static_cast<size_t>(r) < n)
    w.drained();
  return r;
}

// recv() for a TLS connection: the same results and errno conventions.
// OpenSSL may hold bytes already read from the socket: those are read even
// when the socket is drained.
// A read that must write first (a TLS 1.3 key update answered into a full
// socket) waits for room to write: Watch::read_needs_write.
inline ssize_t tls_recv(io::Watch& w, SSL* ssl, char* p, size_t n) {
  if (!w.in_ready && !SSL_has_pending(ssl) && !(w.read_needs_write && w.out_ready)) {
    errno = EAGAIN;
    return -1;
  }
  w.read_needs_write = false;
  ERR_clear_error();
  int r = SSL_read(ssl, p, static_cast<int>(std::min<size_t>(n, INT32_MAX)));
  if (r > 0)
    return r;
  switch (SSL_get_error(ssl, r)) {
  case SSL_ERROR_ZERO_RETURN:
    return 0;
  case SSL_ERROR_WANT_READ:
    w.drained();
    errno = EAGAIN;
    return -1;
  case SSL_ERROR_WANT_WRITE:
    w.blocked();
    w.read_needs_write = true;
    errno = EAGAIN;
    return -1;
  case SSL_ERROR_SYSCALL:
    if (errno == 0)
      return 0; // closed without close_notify
    return -1;
  default:
    errno = ECONNRESET;
    return -1;
  }
}

} // namespace lb::proxy
