#include "lb/proxy/client_connection.hpp"

#include "lb/proxy/client_connection_impl.hpp"
#include "lb/proxy/h2_session.hpp"

#include "lb/io/log.hpp"
#include "lb/proxy/header_rules.hpp"
#include "lb/proxy/retry_policy.hpp"

#include <openssl/err.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cstdio>
#include <cstring>

namespace lb::proxy {

// One request toward one backend: pick, connect (TLS), send the head and
// stream the body, read the response and stream it back, replay or retry
// (retry_policy), report the outcome to the pool (passive health) and count
// it once.

HeaderVars ClientConnection::header_vars() const {
  HeaderVars v;
  v.client_ip = client_ip();
  v.request_id = request_id();
  v.host = x_->authority_.view();
  if (v.host.empty())
    if (const http::Header* h = x_->req_.head().find(http::Field::host))
      v.host = h->value.view();
  return v;
}

ssize_t ClientConnection::backend_recv(char* p, size_t n) {
  if (x_->h2_)
    return x_->h2_->recv(p, n);
  if (!x_->conn_->ssl)
    return plain_recv(x_->conn_->watch, p, n);
  return tls_recv(x_->conn_->watch, x_->conn_->ssl, p, n);
}

int ClientConnection::backend_write(Outbox& out, uint64_t& written) {
  write_wants_read_ = false;
  if (x_->h2_) {
    while (!out.empty()) {
      const iovec& v = out.v[out.first];
      ssize_t n = x_->h2_->send(static_cast<const char*>(v.iov_base), v.iov_len);
      if (n < 0)
        return errno == EAGAIN ? 0 : -1;
      written += static_cast<uint64_t>(n);
      out.advance(static_cast<size_t>(n));
    }
    return 1;
  }
  if (!out.empty() && worker_.loop.defer_write(x_->conn_->watch))
    return 0;
  if (!x_->conn_->ssl)
    return write_some(x_->conn_->watch, out, written);
  return tls_write(x_->conn_->watch, x_->conn_->ssl, out, x_->backend_tls_stage_, written);
}

void ClientConnection::do_attempt() {
  if (x_->retry_.attempts == 0 && x_->retry_.replays == 0 && !x_->queued_ &&
      x_->pool_->config().has_retry_budget)
    worker_.retry_budget(x_->pool_->id()).on_request(worker_.loop.now());
  upstream::PickRequest pick{x_->tried_, x_->hash_, x_->has_hash_, x_->sticky_backend_};
  int b = x_->pool_->pick(pick);
  if (x_->pool_->tracks_active()) {
    // Circuit breaker: a backend at max_connections_per_backend is skipped; when
    // all are, the request waits in the queue (up to queue_timeout), then 503.
    bool busy = false;
    for (size_t guard = 0; b >= 0 && !x_->pool_->try_acquire(static_cast<size_t>(b)); ++guard) {
      busy = true;
      pick.tried.add(static_cast<size_t>(b));
      b = guard < x_->pool_->backends().size() ? x_->pool_->pick(pick) : -1;
    }
    if (b < 0 && busy) {
      if (!x_->queued_ && x_->pool_->config().queue_timeout.count() > 0) {
        x_->queued_ = true;
        add_ref(); // held by the queue
        worker_.queue.push_back(this);
        if (worker_.poll_queue)
          worker_.poll_queue();
        arm(Timer::queue);
        return;
      }
      if (x_->queued_)
        return; // still waiting: the queue polls again
      std::snprintf(x_->reason_, sizeof x_->reason_,
                    "circuit open: every backend of pool %s is at max_connections_per_backend",
                    x_->pool_->name().c_str());
      return respond_error(503, x_->reason_, !x_->req_done_);
    }
    x_->acquired_ = b >= 0;
  }
  if (b < 0) {
    leave_queue();               // answered now: the queue must not try it again
    if (x_->retry_.attempts > 0) // the last failure's reason is kept in x_->reason_
      return respond_error(502, x_->reason_, !x_->req_done_);
    std::snprintf(x_->reason_, sizeof x_->reason_, "no healthy backend in pool %s",
                  x_->pool_->name().c_str());
    return respond_error(503, x_->reason_, !x_->req_done_);
  }
  if (x_->queued_) {
    leave_queue();
    arm(Timer::exchange); // the queue's deadline no longer applies
  }
  x_->tried_.add(static_cast<size_t>(b));
  PoolMetrics& pm = worker_.metrics->pools.at(x_->pool_->id());
  if (x_->retry_.attempts > 0 || x_->retry_.replays > 0)
    pm.retries[x_->retry_reason_].add();
  if (x_->retry_.attempts == 0 && x_->retry_.replays == 0 && x_->pool_->selection().fail_open) {
    pm.fail_open.add();
    x_->pool_->note_fail_open();
  }
  ++x_->retry_.attempts;
  x_->backend_ = b;
  x_->active_backend_ = b;
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(b)];
  worker_.metrics->backends.at(backend.id).active.add(1);
  x_->resp_.reset();
  x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
  if (x_->retry_.attempts == 1)
    x_->upstream_started_ = worker_.loop.now();
  // This attempt's own state (a retry follows an attempt that got this far).
  x_->req_sent_ = false;
  x_->dechunk_ = false;
  x_->in_response_head_ = false;
  if (x_->pool_->config().protocol != config::Protocol::http1) {
    if (x_->upgrade_requested_) {
      leave_queue();
      return respond_error(501,
                           "the pool speaks HTTP/2 to its backends: upgrades (WebSocket) are not "
                           "carried to it",
                           true);
    }
    return do_open_stream();
  }
  // A request that is not replayed if the backend closes the connection
  // under it gets one that was checked just now.
  bool verify = !idempotent(x_->req_.head().method.view());
  x_->conn_ = worker_.connections.take(backend.id, worker_.loop.now(), verify);
  // A reload may have changed the pool's tls settings: those are no use now.
  while (x_->conn_ && x_->conn_->tls.get() != x_->pool_->tls()) {
    delete x_->conn_;
    x_->conn_ = worker_.connections.take(backend.id, worker_.loop.now(), verify);
  }
  x_->conn_reused_ = x_->conn_ != nullptr;
  if (x_->conn_reused_) {
    own_backend_socket();
    // A retry may come here with the failed attempt's connect timer still
    // armed (or none, after a connect timeout): time this exchange.
    arm(Timer::exchange);
    return do_send_request_head();
  }
  do_connect();
}

// A new connection: the socket joins the event loop once its connect is
// under way (before, an unconnected socket reads as hung up) and stays in
// it until it closes, in use or idle in the pool.
void ClientConnection::do_connect() {
  x_->conn_ = new upstream::Connection(worker_.loop);
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(x_->backend_)];
  x_->conn_->backend = backend.id;
  x_->conn_->idle_timeout = x_->pool_->config().timeouts.idle;
  const auto& endpoint = backend.endpoint;
  int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return backend_failed(Failure::connect, "cannot open a socket");
  io::Watch& w = x_->conn_->watch;
  w.fd = fd;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  own_backend_socket();
  arm(Timer::connect);
  int r = ::connect(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size()));
  int error = r == 0 ? 0 : errno;
  if (error && error != EINPROGRESS)
    return connect_failed(error);
  if (!worker_.loop.add(w))
    return connect_failed(errno);
  if (r == 0) {
    w.out_ready = true;
    return on_connected();
  }
  wait_backend_out(&ClientConnection::on_connect, false);
}

void ClientConnection::on_connect() {
  int error = 0;
  socklen_t len = sizeof error;
  if (::getsockopt(x_->conn_->watch.fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
    error = errno;
  if (error)
    return connect_failed(error);
  on_connected();
}

void ClientConnection::connect_failed(int error) {
  std::snprintf(x_->reason_, sizeof x_->reason_, "connect to %s failed: %s",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                std::strerror(error));
  io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
  backend_metrics().connect_errors.add();
  bool refused = error == ECONNREFUSED;
  x_->pool_->report(static_cast<size_t>(x_->backend_),
                    refused ? upstream::Outcome::refused : upstream::Outcome::connect_failure);
  backend_failed(refused ? Failure::refused : Failure::connect, x_->reason_);
}

void ClientConnection::on_connected() {
  if (x_->pool_->config().tls.enabled)
    return start_backend_tls();
  arm(Timer::exchange);
  do_send_request_head();
}

// A pool that speaks HTTP/2: a stream on one of the worker's connections to
// the backend (a new connection connects under the connect timeout; its
// failure counts as a failed connect). The exchange's backend "socket" is a
// watch with no fd that the stream makes ready.
void ClientConnection::do_open_stream() {
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(x_->backend_)];
  x_->conn_ = new upstream::Connection(worker_.loop);
  x_->conn_->backend = backend.id;
  own_backend_socket();
  if (x_->pool_->config().tls.enabled && !x_->pool_->tls()) {
    std::snprintf(x_->reason_, sizeof x_->reason_, "TLS to %s cannot be set up: %s",
                  backend.label.c_str(), x_->pool_->tls_error().c_str());
    io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
    return backend_failed(Failure::connect, x_->reason_);
  }
  x_->h2_ = worker_.h2.open(backend, x_->pool_->shared_tls(), x_->pool_->config().timeouts.idle,
                            x_->conn_->watch);
  x_->conn_reused_ = x_->h2_->reused();
  if (x_->h2_->pending()) {
    arm(Timer::connect);
    return wait_backend_out(&ClientConnection::on_stream_open, false);
  }
  on_stream_open();
}

// The backend did not take the stream (REFUSED_STREAM, past its GOAWAY, or
// its connection closed before the stream's HEADERS went out): nothing was
// processed, so any request is sent again (the same backend may take it on
// a new connection), unless body bytes it had were dropped already.
void ClientConnection::stream_refused() {
  std::snprintf(x_->reason_, sizeof x_->reason_, "%s refused the stream",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str());
  backend_failed(Failure::unprocessed, x_->reason_);
}

void ClientConnection::on_stream_open() {
  H2Call& call = *x_->h2_;
  if (call.pending()) {
    x_->conn_->watch.out_ready = false; // (the stream says when the connection is up)
    return wait_backend_out(&ClientConnection::on_stream_open, false);
  }
  if (call.error() && call.failure().empty())
    return connect_failed(call.error());
  if (call.error()) {
    std::snprintf(x_->reason_, sizeof x_->reason_, "HTTP/2 connection to %s failed: %s",
                  x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                  call.failure().c_str());
    io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
    backend_metrics().connect_errors.add();
    x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::connect_failure);
    return backend_failed(Failure::connect, x_->reason_);
  }
  arm(Timer::exchange);
  do_send_request_head();
}

// HTTPS toward the backend: the handshake runs under the connect timeout, and
// its failure counts as a failed connect (retried on another backend).
void ClientConnection::start_backend_tls() {
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(x_->backend_)];
  if (x_->pool_->tls()) {
    x_->conn_->tls = x_->pool_->shared_tls();
    x_->conn_->ssl = x_->pool_->tls()->connect(x_->conn_->watch.fd, backend.host_name,
                                               backend.endpoint.address().to_string());
  }
  if (!x_->conn_->ssl) {
    std::snprintf(x_->reason_, sizeof x_->reason_, "TLS to %s cannot be set up: %s",
                  backend.label.c_str(),
                  x_->pool_->tls() ? "out of memory" : x_->pool_->tls_error().c_str());
    io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
    return backend_failed(Failure::connect, x_->reason_);
  }
  backend_handshake();
}

void ClientConnection::backend_handshake() {
  ERR_clear_error();
  int r = SSL_do_handshake(x_->conn_->ssl);
  if (r == 1) {
    arm(Timer::exchange);
    return do_send_request_head();
  }
  int e = SSL_get_error(x_->conn_->ssl, r);
  if (e == SSL_ERROR_WANT_READ) {
    x_->conn_->watch.drained();
    return wait_backend_in(&ClientConnection::backend_handshake);
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    x_->conn_->watch.blocked();
    return wait_backend_out(&ClientConnection::backend_handshake, false);
  }
  std::string why = io::TlsClient::failure(x_->conn_->ssl);
  std::snprintf(x_->reason_, sizeof x_->reason_, "TLS handshake with %s failed: %s",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                why.c_str());
  io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
  backend_metrics().connect_errors.add();
  x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::connect_failure);
  backend_failed(Failure::connect, x_->reason_);
}

void ClientConnection::do_send_request_head() {
  const auto& headers_cfg = listener_->config.headers;
  RequestRules rules;
  rules.forwarded_for = headers_cfg.forwarded_for;
  rules.client_ip = client_ip();
  rules.https = ssl_ != nullptr || (stream_ && stream_->https());
  rules.via = headers_cfg.via;
  rules.authority = x_->authority_;
  rules.request_id_header = headers_cfg.request_id;
  rules.request_id = {x_->request_id_, x_->request_id_len_};
  rules.max_forwards_line = {x_->max_forwards_, x_->max_forwards_len_};
  rules.client_cert = client_cert();
  rules.upgrade = x_->upgrade_requested_;
  if (x_->rule_ && x_->rule_->modifies_request) {
    rules.route = x_->rule_->config;
    if (x_->rule_->request_vars)
      rules.vars = header_vars();
  }
  Outbox& out = x_->to_backend_;
  bool ok = write_request_head(x_->req_.head(), rules, out);
  ok &= out.add(cbuf_->data() + x_->head_end_, x_->msg_end_ - x_->head_end_);
  if (!ok) {
    keep_client_ = false;
    return respond_error(400, "request has too many header fields to forward", true);
  }
  x_->reading_response_ = false;
  do_write_backend();
}

void ClientConnection::do_write_backend() {
  uint64_t written = 0;
  int r = backend_write(x_->to_backend_, written);
  if (r > 0)
    return on_request_bytes_sent();
  if (r == 0) {
    x_->backend_writing_ = true;
    return wait_backend_out(&ClientConnection::on_backend_writable, write_wants_read_);
  }
  if (x_->h2_ && errno == E2BIG && !x_->reading_response_) {
    keep_client_ = false;
    return respond_error(400, "request has too many header fields to forward", true);
  }
  request_send_failed();
}

// Writing the request (head or body) to the backend failed (errno).
void ClientConnection::request_send_failed() {
  if (x_->reading_response_)
    return stop_request_body();
  if (x_->h2_ && x_->h2_->refused() && x_->u_len_ == 0 && !x_->resp_started_)
    return stream_refused();
  std::snprintf(x_->reason_, sizeof x_->reason_, "sending to %s failed: %s",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                std::strerror(errno));
  backend_failed(x_->u_len_ == 0 && !x_->resp_started_
                     ? (x_->conn_reused_ ? Failure::reused_early : Failure::before_response)
                     : Failure::backend,
                 x_->reason_);
}

void ClientConnection::on_backend_writable() {
  x_->backend_writing_ = false;
  arm(Timer::exchange);
  do_write_backend();
}

// The backend stopped taking the request body (it answered early and closed,
// or it failed) while its response is being read. The body is not sent on;
// the response decides: an answer still goes to the client whole (and the
// connection closes after it, the rest of the body unread), a failure is
// handled where the read fails.
void ClientConnection::stop_request_body() {
  x_->backend_writing_ = false;
  keep_client_ = false;
  x_->backend_keep_alive_ = false;
}

void ClientConnection::on_request_bytes_sent() {
  x_->backend_writing_ = false;
  if (x_->req_done_ && !x_->req_sent_) {
    x_->req_sent_ = true;
    start_try_clock();
  }
  if (!x_->reading_response_) {
    // The response comes with the socket's next edge (or on the next pass,
    // when one came meanwhile): never from inside this write, so the steps
    // below do not run re-entrantly into the next request.
    x_->reading_response_ = true;
    wait_backend_in(&ClientConnection::do_read_response);
  }
  if (!x_->req_done_)
    return do_read_request_body();
  if (x_->resp_done_ && !x_->client_writing_ && !x_->answered_locally_)
    on_response_complete();
}

void ClientConnection::do_read_response() { read_response(); }

// Long response bodies are not copied through lb: once a response's head and
// the body bytes read with it are out, a body framed by Content-Length with
// at least this much still to come goes from the backend's socket to the
// client's through a pipe (splice_body). Below it, copying costs less than
// the pipe's extra system calls. A response's first read takes at most this
// much too, so a long body is spliced from there on.
static constexpr uint64_t splice_from = 16 * 1024;

// Splicing needs plain sockets on both sides (TLS encrypts in user space), an
// HTTP/1.1 client connection and backend (HTTP/2 frames the bytes) and the
// body passed on as it comes (no dechunking for an HTTP/1.0 client).
bool ClientConnection::splice_possible() const {
  return !ssl_ && !stream_ && !x_->h2_ && x_->conn_ && !x_->conn_->ssl && !x_->dechunk_ &&
         !x_->tunnel_pending_ && !x_->in_response_head_ && runtime_->config->splice;
}

void ClientConnection::splice_body() {
  io::SpliceMoved moved;
  io::SpliceStep step =
      io::splice_step(*x_->pipe_, x_->conn_->watch, client_, x_->resp_.body_left(), moved);
  x_->resp_.skip_body(moved.in);
  x_->bytes_out_ += moved.out;
  if (moved.in > 0 || (moved.out > 0 && timer_kind_ == Timer::exchange))
    arm(Timer::exchange);
  switch (step) {
  case io::SpliceStep::done: // the whole body is with the client
    worker_.pipes.release(std::exchange(x_->pipe_, nullptr));
    x_->resp_done_ = true;
    return on_response_complete();
  case io::SpliceStep::wait_in:
    // The pipe is empty: back to the pool while the backend is silent.
    worker_.pipes.release(std::exchange(x_->pipe_, nullptr));
    return wait_backend_in(&ClientConnection::resume_splice_body);
  case io::SpliceStep::wait_out: // the client's socket is full: the pipe holds the rest
    x_->client_writing_ = true;
    return wait_client_out(&ClientConnection::on_splice_writable, false);
  case io::SpliceStep::yield:
    return backend_in_next_pass(&ClientConnection::splice_body);
  case io::SpliceStep::out_failed:
    return close(); // the client is gone
  case io::SpliceStep::in_ended:
  case io::SpliceStep::in_failed:
    break;
  }
  std::snprintf(x_->reason_, sizeof x_->reason_, "%s %s",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                step == io::SpliceStep::in_ended ? "closed the connection mid-response"
                                                 : "reset the connection");
  x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::server_error);
  backend_failed(Failure::backend, x_->reason_);
}

// A request body framed by Content-Length with at least splice_from still to
// come once the head (and the body bytes read with it) went out: the rest
// goes from the client's socket to the backend's through a pipe. Plain
// sockets on both sides, HTTP/1.1 both ways, no protocol switch asked for.
bool ClientConnection::request_splice_possible() const {
  return !ssl_ && !stream_ && !x_->h2_ && x_->conn_ && !x_->conn_->ssl && !x_->upgrade_requested_ &&
         x_->req_.body_left() >= splice_from && runtime_->config->splice;
}

void ClientConnection::splice_request_body() {
  io::SpliceMoved moved;
  io::SpliceStep step =
      io::splice_step(*x_->up_pipe_, client_, x_->conn_->watch, x_->req_.body_left(), moved);
  x_->req_.skip_body(moved.in);
  x_->bytes_in_ += moved.in;
  if (moved.in > 0) {
    x_->body_discarded_ = true; // (no replay: the body goes on as it comes)
    arm(Timer::exchange);
  } else if (moved.out > 0) {
    arm(Timer::exchange);
  }
  switch (step) {
  case io::SpliceStep::done: // the whole body is with the backend
    worker_.pipes.release(std::exchange(x_->up_pipe_, nullptr));
    x_->req_.reset(); // (llhttp did not see the body: the next request starts afresh)
    x_->req_done_ = true;
    return on_request_bytes_sent();
  case io::SpliceStep::wait_in:
    // The pipe is empty: back to the pool while the client is silent (a
    // paused upload holds no pipe).
    worker_.pipes.release(std::exchange(x_->up_pipe_, nullptr));
    return wait_client_in(&ClientConnection::resume_request_splice);
  case io::SpliceStep::wait_out: // the backend's socket is full: the pipe holds the rest
    x_->backend_writing_ = true;
    return wait_backend_out(&ClientConnection::on_request_splice_writable, false);
  case io::SpliceStep::yield:
    return client_in_next_pass(&ClientConnection::splice_request_body);
  case io::SpliceStep::in_ended:
  case io::SpliceStep::in_failed:
    return close(); // the client left before its request was complete
  case io::SpliceStep::out_failed:
    x_->backend_writing_ = false;
    return request_send_failed();
  }
}

void ClientConnection::resume_request_splice() {
  if (!(x_->up_pipe_ = worker_.pipes.acquire()))
    return read_request_body(); // no pipe to be had: the rest is copied
  splice_request_body();
}

void ClientConnection::on_request_splice_writable() {
  x_->backend_writing_ = false;
  splice_request_body();
}

void ClientConnection::resume_splice_body() {
  if (!(x_->pipe_ = worker_.pipes.acquire()))
    return read_response(); // no pipe to be had: the rest is copied
  splice_body();
}

void ClientConnection::on_splice_writable() {
  x_->client_writing_ = false;
  if (timer_kind_ == Timer::exchange)
    arm(Timer::exchange);
  splice_body();
}

void ClientConnection::read_response() {
  for (;;) {
    if (!x_->ubuf_)
      x_->ubuf_ = worker_.buffers.acquire();
    if (x_->u_len_ == x_->ubuf_->capacity) {
      // Only a head can fill the buffer (a body is sent on as it comes).
      return backend_failed(Failure::backend, "response head too large");
    }
    size_t room = x_->ubuf_->capacity - x_->u_len_;
    if (x_->u_len_ == 0 && !x_->resp_started_ && splice_possible())
      room = std::min<size_t>(room, splice_from); // a long body is spliced after this
    ssize_t n = backend_recv(x_->ubuf_->data() + x_->u_len_, room);
    if (n > 0) {
      x_->u_len_ += static_cast<uint32_t>(n);
      arm(Timer::exchange);
      return parse_response();
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (x_->u_len_ == 0) {
        worker_.buffers.release(x_->ubuf_);
        x_->ubuf_ = nullptr;
      }
      return wait_backend_in(&ClientConnection::read_response);
    }
    // End of file or reset.
    if (n == 0 && x_->resp_.body_until_eof() && x_->resp_.in_message() && !x_->in_response_head_) {
      x_->resp_.finish_at_eof();
      x_->resp_done_ = true;
      x_->backend_keep_alive_ = false;
      if (!x_->client_writing_)
        on_response_bytes_sent();
      return;
    }
    bool nothing_received = x_->u_len_ == 0 && !x_->resp_started_ && !x_->resp_.in_message();
    if (x_->h2_ && x_->h2_->refused() && nothing_received)
      return stream_refused();
    std::snprintf(x_->reason_, sizeof x_->reason_, "%s %s",
                  x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                  n == 0 ? (nothing_received ? "closed the connection without a response"
                                             : "closed the connection mid-response")
                         : "reset the connection");
    if (!nothing_received || !x_->conn_reused_)
      x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::server_error);
    return backend_failed(
        nothing_received ? (x_->conn_reused_ ? Failure::reused_early : Failure::before_response)
                         : Failure::backend,
        x_->reason_);
  }
}

void ClientConnection::parse_response() {
  char* data = x_->ubuf_->data();
  for (;;) {
    x_->resp_.dechunk_into(x_->dechunk_ && !x_->in_response_head_ && x_->resp_.in_message()
                               ? data + x_->u_sent_
                               : nullptr);
    auto r = x_->resp_.feed(data + x_->u_parsed_, data + x_->u_len_);
    x_->u_parsed_ = static_cast<uint32_t>(r.stop - data);
    switch (r.event) {
    case http::Parser::Event::error:
      std::snprintf(x_->reason_, sizeof x_->reason_, "invalid response from %s: %s",
                    x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                    x_->resp_.error_reason() ? x_->resp_.error_reason() : "parse error");
      return backend_failed(Failure::backend, x_->reason_);
    case http::Parser::Event::head_complete:
      return on_response_head();
    case http::Parser::Event::message_complete:
      if (x_->in_response_head_) {
        // An interim (1xx) response ended: the final one follows. Move what is
        // left to the front so the next head has the whole buffer.
        uint32_t left = x_->u_len_ - x_->u_parsed_;
        std::memmove(data, data + x_->u_parsed_, left);
        x_->u_len_ = left;
        x_->u_parsed_ = x_->u_sent_ = 0;
        if (left)
          continue;
        return read_response();
      }
      x_->resp_done_ = true;
      if (x_->u_parsed_ != x_->u_len_)
        x_->backend_keep_alive_ = false; // bytes past the response
      break;
    case http::Parser::Event::need_more:
      // A head (final or interim) not complete yet: its bytes stay where they
      // are, the rest is read after them.
      if (x_->in_response_head_ || !x_->resp_started_)
        return read_response();
      break;
    }
    break;
  }
  // Body bytes: send what was parsed.
  x_->to_client_.clear();
  const char* body_end =
      x_->resp_.dechunked_end() ? x_->resp_.dechunked_end() : data + x_->u_parsed_;
  x_->to_client_.add(data + x_->u_sent_, static_cast<size_t>(body_end - (data + x_->u_sent_)));
  x_->resp_.dechunk_into(nullptr);
  x_->u_sent_ = x_->u_parsed_;
  do_write_client();
}

void ClientConnection::on_response_head() {
  http::Head& head = x_->resp_.head();
  const bool client_http10 = x_->req_.head().minor == 0;
  // An HTTP/2 stream gets no 1xx either (its body and trailers, chunked or
  // not, are turned into frames by the stream).
  ResponseShape shape = mark_response_head(head, client_http10);
  if (shape.interim && (client_http10 || stream_)) {
    // No 1xx to an HTTP/1.0 client (RFC 9110 §15.2): skip it, the final response follows.
    x_->in_response_head_ = true;
    x_->u_sent_ = x_->u_parsed_;
    return parse_response();
  }
  if (shape.switching && (!x_->upgrade_requested_ || !x_->req_sent_))
    return backend_failed(Failure::backend, "backend switched protocols without an upgrade");
  x_->dechunk_ = shape.dechunk;
  std::string_view set_cookie;
  if (shape.switching) {
    io::Timeouts::disarm(x_->try_timer_);
    x_->status_ = 101;
    x_->upstream_ms_ = ms_between(x_->upstream_started_, worker_.loop.now());
    x_->tunnel_pending_ = true;
  } else if (shape.interim) {
    x_->in_response_head_ = true;
  } else {
    if (!x_->pool_->config().retry_statuses.empty() && retry_on_status(head.status))
      return;
    io::Timeouts::disarm(x_->try_timer_);
    x_->in_response_head_ = false;
    x_->status_ = head.status;
    x_->upstream_ms_ = ms_between(x_->upstream_started_, worker_.loop.now());
    backend_metrics().responses.add(head.status);
    x_->pool_->report(static_cast<size_t>(x_->backend_), head.status >= 500
                                                             ? upstream::Outcome::server_error
                                                             : upstream::Outcome::success);
    x_->backend_keep_alive_ = head.keep_alive && !x_->resp_.body_until_eof();
    if (const http::Header* ka = head.find(http::Field::keep_alive))
      learn_keep_alive(ka->value.view());
    // A body ended by close, a request not read whole, a draining worker, a
    // dechunked body (ended by close): the connection ends with this response.
    if (x_->resp_.body_until_eof() || !x_->req_done_ || worker_.draining || x_->dechunk_)
      keep_client_ = false;
    const config::Pool& pc = x_->pool_->config();
    if (!pc.sticky_cookie.empty() && x_->sticky_backend_ != x_->backend_) {
      // Pin the client to this backend from now on (also when its old one left).
      set_cookie = sticky_cookie_line(x_->resp_extra_, sizeof x_->resp_extra_, pc.sticky_cookie,
                                      x_->pool_->sticky_value(static_cast<size_t>(x_->backend_)));
    }
  }
  ResponseRules rules;
  rules.via = listener_->config.headers.via;
  rules.keep_client = keep_client_;
  rules.client_http10 = client_http10;
  rules.set_cookie_line = set_cookie;
  if (x_->rule_ && x_->rule_->modifies_response) {
    rules.edits = &x_->rule_->config->response_headers;
    if (x_->rule_->response_vars)
      rules.vars = header_vars();
  }
  Outbox& out = x_->to_client_;
  if (!write_response_head(head, shape, rules, out))
    return backend_failed(Failure::backend, "response has too many header fields");
  x_->resp_started_ = true;

  if (!shape.interim && !shape.switching) {
    // Body bytes that came with the head, up to the end of the response.
    char* data = x_->ubuf_->data();
    char* body_start = data + (head.end - data);
    x_->resp_.dechunk_into(x_->dechunk_ ? body_start : nullptr);
    auto r = x_->resp_.feed(data + x_->u_parsed_, data + x_->u_len_);
    if (r.event == http::Parser::Event::error) {
      keep_client_ = false;
      x_->backend_keep_alive_ = false;
      x_->to_client_.clear();
      return close();
    }
    x_->u_parsed_ = static_cast<uint32_t>(r.stop - data);
    if (r.event == http::Parser::Event::message_complete) {
      x_->resp_done_ = true;
      if (x_->u_parsed_ != x_->u_len_)
        x_->backend_keep_alive_ = false;
    }
    const char* body_end = x_->dechunk_ ? x_->resp_.dechunked_end() : data + x_->u_parsed_;
    x_->resp_.dechunk_into(nullptr);
    out.add(body_start, static_cast<size_t>(body_end - body_start));
  }
  x_->u_sent_ = x_->u_parsed_;
  do_write_client();
}

void ClientConnection::on_response_bytes_sent() {
  x_->client_writing_ = false;
  if (x_->tunnel_)
    return pump_down();
  if (x_->answered_locally_)
    return finish_request();
  if (x_->tunnel_pending_)
    return start_tunnel();
  if (x_->in_response_head_) {
    // An interim response went out; carry on with what follows it.
    return parse_response();
  }
  if (x_->resp_done_)
    return on_response_complete();
  if (x_->resp_.body_left() >= splice_from && splice_possible() && !x_->pipe_ &&
      (x_->pipe_ = worker_.pipes.acquire())) {
    // The rest of a long body goes by splice; the buffer is not needed for it.
    worker_.buffers.release(std::exchange(x_->ubuf_, nullptr));
    x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
    return splice_body();
  }
  // Head and body so far are sent: the whole buffer is free for more body.
  x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
  if (++x_->response_chain_ % 16 == 0) // let other connections run
    return backend_in_next_pass(&ClientConnection::read_response);
  read_response();
}

void ClientConnection::on_response_complete() {
  if (!x_->req_sent_) {
    // The backend answered before the request was fully sent (or read): neither
    // connection can carry another message safely.
    keep_client_ = false;
    if (x_->backend_writing_ || !x_->req_done_) {
      release_backend(false);
      return finish_request();
    }
  }
  release_backend(x_->backend_keep_alive_ && x_->req_sent_);
  finish_request();
}

void ClientConnection::retry_queued() {
  if (closed_ || !x_ || !x_->queued_)
    return;
  do_attempt();
}

void ClientConnection::leave_queue() {
  if (!x_->queued_)
    return;
  x_->queued_ = false;
  auto& q = worker_.queue;
  for (size_t i = 0; i < q.size(); ++i)
    if (q[i] == this) {
      q.erase(q.begin() + static_cast<std::ptrdiff_t>(i));
      release(); // the queue's reference; a handler or the caller holds another
      break;
    }
}

// Whether the pool's retry budget lets one more retry go now (counted when it does).
bool ClientConnection::retry_budget_allows() {
  const config::Pool& pc = x_->pool_->config();
  if (worker_.retry_budget(x_->pool_->id())
          .take(pc, worker_.id, worker_.workers, worker_.loop.now()))
    return true;
  worker_.metrics->pools.at(x_->pool_->id()).budget_exhausted.add();
  return false;
}

// The per_try_timeout of the attempt under way starts once its request is all
// sent (an upload is bounded by timeouts.response, not by this) and ends
// with its response head.
void ClientConnection::start_try_clock() {
  auto per_try = x_->pool_->config().per_try_timeout;
  if (per_try.count() > 0 && !x_->status_)
    worker_.timeouts.arm(x_->try_timer_, per_try, worker_.loop.now());
}

void ClientConnection::on_try_timeout(io::Timeouts::Entry* e) {
  Ref self(static_cast<Exchange::TryTimer*>(e)->owner);
  self->try_timed_out();
}

void ClientConnection::try_timed_out() {
  if (closed_ || !x_ || x_->backend_ < 0 || x_->resp_started_)
    return;
  std::snprintf(x_->reason_, sizeof x_->reason_, "%s did not answer within per_try_timeout",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str());
  x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::server_error);
  backend_failed(Failure::try_timeout, x_->reason_);
}

// Whether a backend this request has not tried could take it now (asked
// before a response is thrown away or the retry budget is spent on nothing).
bool ClientConnection::another_backend_left() const {
  upstream::PickRequest pick{x_->tried_, x_->hash_, x_->has_hash_, x_->sticky_backend_};
  return x_->pool_->pick(pick) >= 0;
}

// A response whose status the pool retries on (retry_on: 502, 503, 504): when
// another attempt may go (idempotent, the body still held, retries and
// backends left, the budget), this one is discarded and the request tried on
// another backend. Otherwise it goes to the client as it is.
bool ClientConnection::retry_on_status(int status) {
  const config::Pool& pc = x_->pool_->config();
  if (!retries_status(pc, status) || x_->resp_started_ || !x_->req_sent_)
    return false;
  RetryRequest request{idempotent(x_->req_.head().method.view()), x_->body_discarded_};
  RetryLimits limits = retry_limits(pc, x_->pool_->backends().size(), x_->tried_.full());
  if (after_failure(Failure::status, request, limits, x_->retry_) != Retry::another_backend ||
      !another_backend_left() || !retry_budget_allows())
    return false;
  backend_metrics().responses.add(status);
  x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::server_error);
  x_->retry_reason_ = static_cast<uint8_t>(reason_of(Failure::status, status));
  x_->in_response_head_ = false; // (an interim response the client did not see may have come)
  release_backend(false);        // (its body is not read: the connection goes)
  do_attempt();
  return true;
}

void ClientConnection::backend_failed(Failure failure, const char* reason) {
  release_backend(false);
  if (closed_)
    return;
  const config::Pool& pc = x_->pool_->config();
  // A gRPC call to an HTTP/2 pool goes to another backend when nothing of
  // its answer came (whatever its method: gRPC is all POST), unless the
  // pool's retry_on leaves out reset.
  bool grpc_retry = x_->grpc_ && pc.retry_reset && pc.protocol != config::Protocol::http1;
  RetryRequest request{idempotent(x_->req_.head().method.view()) || grpc_retry,
                       x_->body_discarded_};
  RetryLimits limits = retry_limits(pc, x_->pool_->backends().size(), x_->tried_.full());
  Retry next = after_failure(failure, request, limits, x_->retry_);
  if (next == Retry::another_backend && failure == Failure::try_timeout && !another_backend_left())
    next = Retry::none; // the client gets the 504, not "no backend left"
  if (next == Retry::another_backend && !retry_budget_allows())
    next = Retry::none;
  switch (next) {
  case Retry::replay:
    // The backend closed a pooled connection as we reused it: not its fault.
    x_->tried_.remove(static_cast<size_t>(x_->backend_));
    x_->retry_reason_ = static_cast<uint8_t>(RetryReason::replay);
    return do_attempt();
  case Retry::another_backend:
    x_->retry_reason_ = static_cast<uint8_t>(reason_of(failure, 0));
    return do_attempt();
  case Retry::none:
    break;
  }
  if (x_->resp_started_)
    return close();
  respond_error(failure == Failure::try_timeout ? 504 : 502, reason,
                !x_->req_done_ || x_->backend_writing_);
}

void ClientConnection::release_backend(bool reusable) {
  if (client_in_ == &ClientConnection::read_request_body ||
      client_in_ == &ClientConnection::splice_request_body ||
      client_in_ == &ClientConnection::resume_request_splice)
    client_in_ = nullptr; // this attempt's body pump
  if (!x_)
    return;
  x_->backend_in_ = x_->backend_out_ = nullptr;
  io::Timeouts::disarm(x_->try_timer_);
  if (x_->active_backend_ >= 0 && x_->pool_) {
    worker_.metrics->backends.at(x_->pool_->backends()[static_cast<size_t>(x_->active_backend_)].id)
        .active.add(-1);
    if (x_->acquired_)
      x_->pool_->release(static_cast<size_t>(x_->active_backend_));
    x_->active_backend_ = -1;
  }
  x_->acquired_ = false;
  if (x_->h2_) {
    if (x_->h2_->grpc_status() >= 0)
      x_->grpc_status_ = x_->h2_->grpc_status();
    worker_.h2.release(std::exchange(x_->h2_, nullptr));
    reusable = false; // (the stream's watch; the connection stays with the worker)
  }
  if (x_->conn_) {
    if (reusable && !closed_) {
      ++x_->conn_->requests;
      worker_.connections.put(x_->conn_, worker_.loop.now());
    } else {
      delete x_->conn_;
    }
    x_->conn_ = nullptr;
  }
  worker_.pipes.release(std::exchange(x_->pipe_, nullptr)); // (closed when it holds bytes)
  worker_.pipes.release(std::exchange(x_->up_pipe_, nullptr));
  worker_.buffers.release(x_->ubuf_);
  x_->ubuf_ = nullptr;
  x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
  x_->backend_writing_ = false;
  x_->reading_response_ = false;
}

// "Keep-Alive: timeout=5, max=100": retire the connection a little before the
// backend closes it, so a request is never sent into that close.
void ClientConnection::learn_keep_alive(std::string_view v) {
  size_t at = v.find("timeout=");
  if (at == std::string_view::npos || !x_->conn_)
    return;
  unsigned long seconds = 0;
  size_t i = at + 8;
  while (i < v.size() && v[i] >= '0' && v[i] <= '9' && seconds < 100000)
    seconds = seconds * 10 + (v[i++] - '0');
  if (i == at + 8)
    return;
  auto budget = std::chrono::milliseconds(seconds * 1000);
  auto margin = std::min<std::chrono::milliseconds>(budget / 2, std::chrono::milliseconds(500));
  x_->conn_->retire_at = worker_.loop.now() + budget - margin;
}

} // namespace lb::proxy
