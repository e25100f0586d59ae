#include "lb/proxy/client_connection.hpp"

#include "lb/proxy/client_connection_impl.hpp"

#include <openssl/ssl.h>

#include <sys/socket.h>

#include <cstdint>
#include <utility>

namespace lb::proxy {

// Upgraded connections (WebSocket): after a 101, bytes both ways until
// either side ends; each end is passed on as a half close.
//
// A direction that fills lb's whole buffer in one read carries bulk data:
// from then on its bytes go socket to socket through a pipe (splice), never
// copied through lb. Plain sockets on both sides only (TLS is copied).
// Small messages stay on the copying path, which costs them less.

bool ClientConnection::tunnel_splice_possible() const {
  return !ssl_ && !stream_ && !x_->h2_ && !x_->conn_->ssl && runtime_->config->splice;
}

void ClientConnection::start_tunnel() {
  x_->tunnel_pending_ = false;
  x_->tunnel_ = true;
  finish_request_log();
  x_->started_ = {}; // logged: the tunnel's end is not another request
  arm(Timer::tunnel);
  // What either side sent after the switch is already in the buffers.
  x_->to_backend_.clear();
  if (cbuf_)
    x_->to_backend_.add(cbuf_->data() + x_->msg_end_, c_len_ - x_->msg_end_);
  x_->to_client_.clear();
  x_->to_client_.add(x_->ubuf_->data() + x_->u_parsed_, x_->u_len_ - x_->u_parsed_);
  pump_up();
  if (!closed_)
    pump_down();
}

void ClientConnection::pump_up() {
  for (int budget = 0; !closed_; ++budget) {
    if (!x_->to_backend_.empty()) {
      uint64_t written = 0;
      int r = backend_write(x_->to_backend_, written);
      if (r < 0)
        return close();
      if (r == 0)
        return wait_backend_out(&ClientConnection::pump_up, write_wants_read_);
      arm(Timer::tunnel);
    }
    if (budget == 16) // let other connections run
      return client_in_next_pass(&ClientConnection::pump_up);
    if (!cbuf_)
      cbuf_ = worker_.buffers.acquire();
    if (x_->up_pipe_)
      return splice_up(); // (what the buffer held is sent)
    ssize_t n = client_recv(cbuf_->data(), cbuf_->capacity);
    if (n > 0) {
      x_->bytes_in_ += static_cast<uint64_t>(n);
      x_->to_backend_.clear();
      x_->to_backend_.add(cbuf_->data(), static_cast<size_t>(n));
      if (static_cast<size_t>(n) == cbuf_->capacity && tunnel_splice_possible())
        x_->up_pipe_ = worker_.pipes.acquire(); // (none: copying goes on)
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return wait_client_in(&ClientConnection::pump_up);
    if (n < 0)
      return close();
    // The client is done sending: pass the end on.
    x_->up_done_ = true;
    if (x_->conn_->ssl)
      SSL_shutdown(x_->conn_->ssl); // close_notify, best effort
    ::shutdown(x_->conn_->watch.fd, SHUT_WR);
    return tunnel_half_closed();
  }
}

void ClientConnection::pump_down() {
  for (int budget = 0; !closed_; ++budget) {
    if (!x_->to_client_.empty()) {
      int r = client_write(x_->to_client_, x_->bytes_out_);
      if (r < 0)
        return close();
      if (r == 0)
        return wait_client_out(&ClientConnection::pump_down, write_wants_read_);
      arm(Timer::tunnel);
    }
    if (budget == 16)
      return backend_in_next_pass(&ClientConnection::pump_down);
    if (x_->pipe_)
      return splice_down();
    ssize_t n = backend_recv(x_->ubuf_->data(), x_->ubuf_->capacity);
    if (n > 0) {
      x_->to_client_.clear();
      x_->to_client_.add(x_->ubuf_->data(), static_cast<size_t>(n));
      if (static_cast<size_t>(n) == x_->ubuf_->capacity && tunnel_splice_possible())
        x_->pipe_ = worker_.pipes.acquire();
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return wait_backend_in(&ClientConnection::pump_down);
    if (n < 0)
      return close();
    x_->down_done_ = true;
    ::shutdown(client_.fd, SHUT_WR);
    return tunnel_half_closed();
  }
}

void ClientConnection::splice_up() {
  io::SpliceMoved moved;
  io::SpliceStep step =
      io::splice_step(*x_->up_pipe_, client_, x_->conn_->watch, UINT64_MAX, moved);
  x_->bytes_in_ += moved.in;
  if (moved.in > 0 || moved.out > 0)
    arm(Timer::tunnel);
  switch (step) {
  case io::SpliceStep::wait_in:
    // The pipe is empty: back to the pool while the client is silent; the
    // next read that fills the buffer takes one again.
    worker_.pipes.release(std::exchange(x_->up_pipe_, nullptr));
    return wait_client_in(&ClientConnection::pump_up);
  case io::SpliceStep::wait_out:
    return wait_backend_out(&ClientConnection::splice_up, false);
  case io::SpliceStep::done:
  case io::SpliceStep::yield:
    return client_in_next_pass(&ClientConnection::splice_up);
  case io::SpliceStep::in_ended: // the client is done sending: pass the end on
    x_->up_done_ = true;
    ::shutdown(x_->conn_->watch.fd, SHUT_WR);
    return tunnel_half_closed();
  case io::SpliceStep::in_failed:
  case io::SpliceStep::out_failed:
    return close();
  }
}

void ClientConnection::splice_down() {
  io::SpliceMoved moved;
  io::SpliceStep step = io::splice_step(*x_->pipe_, x_->conn_->watch, client_, UINT64_MAX, moved);
  x_->bytes_out_ += moved.out;
  if (moved.in > 0 || moved.out > 0)
    arm(Timer::tunnel);
  switch (step) {
  case io::SpliceStep::wait_in:
    worker_.pipes.release(std::exchange(x_->pipe_, nullptr));
    return wait_backend_in(&ClientConnection::pump_down);
  case io::SpliceStep::wait_out:
    return wait_client_out(&ClientConnection::splice_down, false);
  case io::SpliceStep::done:
  case io::SpliceStep::yield:
    return backend_in_next_pass(&ClientConnection::splice_down);
  case io::SpliceStep::in_ended:
    x_->down_done_ = true;
    ::shutdown(client_.fd, SHUT_WR);
    return tunnel_half_closed();
  case io::SpliceStep::in_failed:
  case io::SpliceStep::out_failed:
    return close();
  }
}

void ClientConnection::tunnel_half_closed() {
  if (x_->up_done_ && x_->down_done_)
    close();
}

} // namespace lb::proxy
