#pragma once
// What the files that implement ClientConnection share (client_connection.cpp,
// upstream_exchange.cpp, tunnel.cpp): the reference a pending handler holds,
// handler memory, the gather write, the wait-then-step helper. Not for other
// modules.

#include "lb/proxy/client_connection.hpp"

#include <boost/asio/bind_allocator.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>

namespace lb::proxy {

namespace asio = boost::asio;
using boost::system::error_code;

// A strong reference held by every pending completion handler.
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

template <class Slot, class F> inline auto in_slot(Slot& slot, F&& f) {
  return asio::bind_allocator(io::SlotAllocator<void, Slot>(slot), std::forward<F>(f));
}

template <class Socket> inline int fd_of(Socket& s) { return s.native_handle(); }

// Writes as much of `out` as the socket takes now. Returns 1 when all is
// written, 0 when the socket would block, -1 on error (errno set).
inline int write_some(int fd, Outbox& out, uint64_t& written) {
  while (!out.empty()) {
    msghdr m{};
    m.msg_iov = out.v + out.first;
    m.msg_iovlen = std::min<unsigned>(out.count - out.first, 1024);
    ssize_t n = ::sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      return -1;
    }
    written += static_cast<uint64_t>(n);
    out.advance(static_cast<size_t>(n));
  }
  return 1;
}

// Waits until `socket` is ready for `what`, then runs `Step`, unless the session
// closed meanwhile; a failed wait closes it. The handler lives in `slot`.
template <void (ClientConnection::*Step)(), class Socket, class Slot>
void ClientConnection::wait_then(Socket& socket, asio::socket_base::wait_type what, Slot& slot) {
  socket.async_wait(what, in_slot(slot, [self = Ref(this)](const error_code& ec) {
                      ClientConnection* s = self.operator->();
                      if (s->closed_)
                        return;
                      if (ec)
                        return s->close();
                      (s->*Step)();
                    }));
}

// recv() for a TLS connection: the same results and errno conventions.
inline ssize_t tls_recv(SSL* ssl, char* p, size_t n) {
  ERR_clear_error();
  int r = SSL_read(ssl, p, static_cast<int>(std::min<size_t>(n, INT32_MAX)));
  if (r > 0)
    return r;
  switch (SSL_get_error(ssl, r)) {
  case SSL_ERROR_ZERO_RETURN:
    return 0;
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE:
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
