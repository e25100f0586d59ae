#include "lb/proxy/client_connection.hpp"

#include "lb/proxy/client_connection_impl.hpp"

#include <openssl/ssl.h>

namespace lb::proxy {

// Upgraded connections (WebSocket): after a 101, bytes both ways until
// either side ends; each end is passed on as a half close.

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
      if (r == 0) {
        wait_then<&ClientConnection::pump_up>(x_->conn_->socket, asio::socket_base::wait_write,
                                              x_->backend_write_slot_);
        return;
      }
      arm(Timer::tunnel);
    }
    if (budget == 16) { // let other connections run
      asio::post(worker_.io, in_slot(client_read_slot_, [self = Ref(this)] { self->pump_up(); }));
      return;
    }
    if (!cbuf_)
      cbuf_ = worker_.buffers.acquire();
    ssize_t n = client_recv(cbuf_->data(), cbuf_->capacity);
    if (n > 0) {
      x_->bytes_in_ += static_cast<uint64_t>(n);
      x_->to_backend_.clear();
      x_->to_backend_.add(cbuf_->data(), static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait_then<&ClientConnection::pump_up>(client_, asio::socket_base::wait_read,
                                            client_read_slot_);
      return;
    }
    if (n < 0)
      return close();
    // The client is done sending: pass the end on.
    x_->up_done_ = true;
    if (x_->conn_->ssl)
      SSL_shutdown(x_->conn_->ssl); // close_notify, best effort
    error_code ignored;
    x_->conn_->socket.shutdown(asio::socket_base::shutdown_send, ignored);
    return tunnel_half_closed();
  }
}

void ClientConnection::pump_down() {
  for (int budget = 0; !closed_; ++budget) {
    if (!x_->to_client_.empty()) {
      int r = client_write(x_->to_client_, x_->bytes_out_);
      if (r < 0)
        return close();
      if (r == 0) {
        wait_then<&ClientConnection::pump_down>(client_, asio::socket_base::wait_write,
                                                x_->client_write_slot_);
        return;
      }
      arm(Timer::tunnel);
    }
    if (budget == 16) {
      asio::post(worker_.io,
                 in_slot(x_->backend_read_slot_, [self = Ref(this)] { self->pump_down(); }));
      return;
    }
    ssize_t n = backend_recv(x_->ubuf_->data(), x_->ubuf_->capacity);
    if (n > 0) {
      x_->to_client_.clear();
      x_->to_client_.add(x_->ubuf_->data(), static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait_then<&ClientConnection::pump_down>(x_->conn_->socket, asio::socket_base::wait_read,
                                              x_->backend_read_slot_);
      return;
    }
    if (n < 0)
      return close();
    x_->down_done_ = true;
    error_code ignored;
    client_.shutdown(asio::socket_base::shutdown_send, ignored);
    return tunnel_half_closed();
  }
}

void ClientConnection::tunnel_half_closed() {
  if (x_->up_done_ && x_->down_done_)
    close();
}

} // namespace lb::proxy
