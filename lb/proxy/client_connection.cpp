#include "lb/proxy/client_connection.hpp"

#include "lb/proxy/client_connection_impl.hpp"
#include "lb/proxy/h2_session.hpp"

#include "lb/http/proxy_protocol.hpp"
#include "lb/http/request_line.hpp"
#include "lb/io/acme_challenges.hpp"
#include "lb/io/log.hpp"
#include "lb/proxy/header_rules.hpp"
#include "lb/proxy/local_answer.hpp"
#include "lb/upstream/hashing.hpp"

#include <openssl/err.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <bit>
#include <charconv>
#include <cstdio>
#include <cstring>

namespace lb::proxy {

// An idle keep-alive connection costs this object, its entry in the event
// loop's table (8 bytes) and the kernel's: at most 296 bytes here (a 304-byte
// chunk) keeps it well within 512 bytes (bench/run.sh --scenarios idle).
// Whatever only a request in flight needs belongs in the Exchange.
static_assert(sizeof(ClientConnection) <= 296, "an idle connection must stay small");

// The client connection: the PROXY header, TLS, request heads read and
// checked, routing, lb's own answers, answers in order, keep-alive, timers.
// (The request toward its backend: upstream_exchange.cpp; tunnels: tunnel.cpp.)

void ClientConnection::start(WorkerContext& worker, const ListenerRuntime& listener, int fd,
                             const sockaddr* peer) {
  auto* c = new ClientConnection(worker, listener, fd, peer);
  c->add_ref(); // the event loop's registration, until close()
  Ref self(c);
  if (!worker.loop.add(c->client_)) {
    io::log("listener %s: cannot watch a connection: %s", listener.config.name.c_str(),
            std::strerror(errno));
    return self->close();
  }
  // A PROXY header or a TLS handshake must come as promptly as a request head.
  self->arm(listener.tls || listener.config.proxy_protocol ? Timer::header : Timer::idle);
  if (listener.tls && !self->ssl_)
    return self->close();
  self->do_read_request();
}

ClientConnection* ClientConnection::new_stream(WorkerContext& worker,
                                               const ListenerRuntime& listener, H2Stream& stream,
                                               const ClientConnection& parent) {
  auto* c = new ClientConnection(worker, listener, -1, nullptr, &stream);
  c->runtime_ = parent.runtime_; // (the listener's snapshot; each request adopts the newest)
  c->client_family_ = parent.client_family_;
  std::memcpy(c->client_addr_, parent.client_addr_, sizeof c->client_addr_);
  c->add_ref(); // the stream's, until close()
  return c;
}

void ClientConnection::run_stream() {
  Ref self(this);
  arm(Timer::header);
  do_read_request();
}

void ClientConnection::stream_ready() {
  client_.in_ready = client_.out_ready = true;
  if (client_in_ || client_out_)
    worker_.loop.schedule(client_);
}

void ClientConnection::start_h2(const char* early, size_t n) {
  h2_ = new H2Session(*this, worker_, *listener_, client_, ssl_, early, n);
  client_in_ = client_out_ = nullptr;
  worker_.buffers.release(cbuf_);
  cbuf_ = nullptr;
  c_len_ = 0;
  release_exchange();
  arm(Timer::idle);
  if (!h2_->on_event())
    close();
}

ClientConnection::ClientConnection(WorkerContext& worker, const ListenerRuntime& listener, int fd,
                                   const sockaddr* peer, H2Stream* stream)
    : worker_(worker), listener_(&listener), runtime_(worker.runtime), stream_(stream),
      of_stream_(stream != nullptr) {
  // The socket is non-blocking and TCP_NODELAY already (accept4, the listener).
  // A request often comes with the connection: the first read is tried at once.
  client_.fd = fd;
  client_.handler = &ClientConnection::on_client_event;
  client_.owner = this;
  client_.in_ready = client_.out_ready = true;
  set_client_address(peer);
  proxy_pending_ = listener_->config.proxy_protocol && !stream_;
  if (listener_->tls && !stream_)
    ssl_ = listener_->tls->accept(fd);
  fire = &ClientConnection::on_timeout;
  next_in_worker = worker_.sessions;
  if (next_in_worker)
    next_in_worker->prev_in_worker = this;
  worker_.sessions = this;
  ++worker_.session_count;
  if (!stream_)
    worker_.metrics->listeners.at(listener_->id).connections.add(1);
}

// ---- Waiting: a step per socket and direction, run by the socket's next
// edge (or by the loop's next pass). A step that is set again replaces the
// one before: a connection waits for one thing per direction at a time.

void ClientConnection::on_client_event(void* self, uint32_t) {
  Ref keep(static_cast<ClientConnection*>(self));
  keep->client_event();
}

// A reader is due when the socket is readable (or, after a TLS read that
// must write first, writable); a writer when writable (or, after a TLS write
// that must read first, readable: decided before the reader runs, which may
// drain the socket and take in what the writer waited for).
static bool in_due(const io::Watch& w) { return w.in_ready || (w.read_needs_write && w.out_ready); }

void ClientConnection::client_event() {
  if (closed_)
    return;
  if (h2_) {
    bool open = h2_->on_event();
    if (!open)
      return close();
    if (h2_->take_progress())
      arm(Timer::idle);
    return;
  }
  bool out_due = client_out_ && (client_out_on_in_ ? client_.in_ready : client_.out_ready);
  if (client_in_ && (client_in_now_ || in_due(client_))) {
    Step s = std::exchange(client_in_, nullptr);
    client_in_now_ = false;
    (this->*s)();
    if (closed_)
      return;
  }
  if (client_out_ && (out_due || (client_out_on_in_ ? client_.in_ready : client_.out_ready))) {
    Step s = std::exchange(client_out_, nullptr);
    (this->*s)();
  }
}

void ClientConnection::wait_client_in(Step s) {
  client_in_ = s;
  client_in_now_ = false;
  if (in_due(client_)) // an edge came while this connection was busy
    worker_.loop.schedule(client_);
}

void ClientConnection::client_in_next_pass(Step s) {
  client_in_ = s;
  client_in_now_ = true;
  worker_.loop.schedule(client_);
}

void ClientConnection::wait_client_out(Step s, bool on_in) {
  client_out_ = s;
  client_out_on_in_ = on_in;
  if (on_in ? client_.in_ready : client_.out_ready)
    worker_.loop.schedule(client_);
}

void ClientConnection::on_backend_event(void* self, uint32_t) {
  Ref keep(static_cast<ClientConnection*>(self));
  keep->backend_event();
}

// Writes first: a connect completes with EPOLLOUT.
void ClientConnection::backend_event() {
  if (closed_ || !x_ || !x_->conn_)
    return;
  const io::Watch* w = &x_->conn_->watch;
  if (x_->backend_out_ && (x_->backend_out_on_in_ ? in_due(*w) : w->out_ready)) {
    Step s = std::exchange(x_->backend_out_, nullptr);
    (this->*s)();
    if (closed_ || !x_ || !x_->conn_)
      return;
    w = &x_->conn_->watch; // (a retry may have another connection by now)
  }
  if (x_->backend_in_ && (x_->backend_in_now_ || in_due(*w))) {
    Step s = std::exchange(x_->backend_in_, nullptr);
    x_->backend_in_now_ = false;
    (this->*s)();
  }
}

void ClientConnection::wait_backend_in(Step s) {
  x_->backend_in_ = s;
  x_->backend_in_now_ = false;
  if (in_due(x_->conn_->watch))
    worker_.loop.schedule(x_->conn_->watch);
}

void ClientConnection::backend_in_next_pass(Step s) {
  x_->backend_in_ = s;
  x_->backend_in_now_ = true;
  worker_.loop.schedule(x_->conn_->watch);
}

void ClientConnection::wait_backend_out(Step s, bool on_in) {
  x_->backend_out_ = s;
  x_->backend_out_on_in_ = on_in;
  io::Watch& w = x_->conn_->watch;
  if (on_in ? w.in_ready : w.out_ready)
    worker_.loop.schedule(w);
}

// The backend connection's events come to this connection while it serves
// the request.
void ClientConnection::own_backend_socket() {
  x_->conn_->watch.handler = &ClientConnection::on_backend_event;
  x_->conn_->watch.owner = this;
}

// The address is kept in binary (an idle connection stays small); each
// request's exchange holds it as text.
void ClientConnection::set_client_address(const sockaddr* peer) {
  client_family_ = 0;
  if (peer && peer->sa_family == AF_INET) {
    std::memcpy(client_addr_, &reinterpret_cast<const sockaddr_in*>(peer)->sin_addr, 4);
    client_family_ = AF_INET;
  } else if (peer && peer->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(peer);
    bool mapped = IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr);
    std::memcpy(client_addr_, in6->sin6_addr.s6_addr + (mapped ? 12 : 0), mapped ? 4 : 16);
    client_family_ = mapped ? AF_INET : AF_INET6;
  }
  if (x_)
    format_client_address();
}

// Once per request: IPv4 by hand (glibc's inet_ntop formats with sprintf,
// a thousand instructions), IPv6 by inet_ntop.
void ClientConnection::format_client_address() {
  size_t addr_len = client_family_ == AF_INET6 ? 16 : 4;
  if (x_->client_family_ == client_family_ &&
      std::memcmp(x_->client_addr_, client_addr_, addr_len) == 0)
    return;
  x_->client_family_ = client_family_;
  std::memcpy(x_->client_addr_, client_addr_, addr_len);
  char* out = x_->client_ip_;
  if (client_family_ == AF_INET) {
    char* p = out;
    for (int i = 0; i < 4; ++i) {
      unsigned v = client_addr_[i];
      if (v >= 100)
        *p++ = static_cast<char>('0' + v / 100);
      if (v >= 10)
        *p++ = static_cast<char>('0' + v / 10 % 10);
      *p++ = static_cast<char>('0' + v % 10);
      if (i < 3)
        *p++ = '.';
    }
    x_->client_ip_len_ = static_cast<uint8_t>(p - out);
    return;
  }
  const char* ip = client_family_ == AF_INET6
                       ? ::inet_ntop(AF_INET6, client_addr_, out, sizeof x_->client_ip_)
                       : nullptr;
  x_->client_ip_len_ = ip ? static_cast<uint8_t>(std::strlen(out)) : 0;
}

void ClientConnection::ensure_exchange() {
  if (x_)
    return;
  x_ = worker_.exchanges.acquire();
  x_->try_timer_.owner = this;
  x_->try_timer_.fire = &ClientConnection::on_try_timeout;
  x_->req_.set_request_id_header(listener_->config.headers.request_id);
  format_client_address();
}

void ClientConnection::release_exchange() {
  if (!x_)
    return;
  client_out_ = nullptr; // a write of this exchange
  if (x_->conn_ || x_->active_backend_ >= 0 || x_->pipe_ || x_->up_pipe_)
    release_backend(false);
  worker_.buffers.release(x_->client_tls_stage_);
  worker_.buffers.release(x_->backend_tls_stage_);
  worker_.buffers.release(x_->ubuf_);
  x_->client_tls_stage_ = x_->backend_tls_stage_ = nullptr;
  x_->ubuf_ = nullptr;
  worker_.exchanges.release(x_);
  x_ = nullptr;
}

// A listener with proxy_protocol: the connection starts with a PROXY v1/v2
// header from an outer load balancer, naming the real client. Returns 1 when
// the header has been read, 0 to wait for more of it, -1 to close (a bad or
// missing header).
int ClientConnection::take_proxy_header() {
  // What follows the header (HTTP, or a TLS ClientHello) must stay in the
  // socket for whoever reads next: the bytes are peeked, and only header
  // bytes are consumed. While the header is incomplete, every byte received
  // is part of it: those are consumed (kept in cbuf_ from offset 0) so that
  // the next wait is for new bytes, not for the ones already there.
  if (!client_.in_ready)
    return 0;
  if (!cbuf_)
    cbuf_ = worker_.buffers.acquire();
  uint32_t have = c_len_;
  size_t room = cbuf_->capacity - have;
  ssize_t n = ::recv(client_.fd, cbuf_->data() + have, room, MSG_PEEK);
  if (n == 0)
    return -1;
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      client_.drained();
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  }
  http::ProxyHeader header;
  size_t seen = have + static_cast<size_t>(n);
  switch (http::parse_proxy_header(cbuf_->data(), seen, header)) {
  case http::ProxyParse::invalid:
    return -1;
  case http::ProxyParse::need_more:
    if (seen >= cbuf_->capacity)
      return -1;
    if (::recv(client_.fd, cbuf_->data() + have, static_cast<size_t>(n), 0) != n)
      return -1;
    if (static_cast<size_t>(n) < room)
      client_.drained(); // all the socket had is taken
    c_len_ = static_cast<uint32_t>(seen);
    return 0;
  case http::ProxyParse::complete:
    break;
  }
  size_t rest = header.length - have;
  // (Bytes after the header may still be in the socket: it stays readable.)
  if (::recv(client_.fd, cbuf_->data() + have, rest, 0) != static_cast<ssize_t>(rest))
    return -1;
  if (!header.local)
    set_client_address(reinterpret_cast<const sockaddr*>(&header.source));
  proxy_pending_ = false;
  c_len_ = 0;
  return 1;
}

int ClientConnection::tls_handshake() {
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    handshake_done_ = true;
    if (io::TlsServer::acme_challenge(ssl_))
      return -1; // an ACME validation: the handshake was all it came for
    if (!listener_->config.tls.client_ca.empty())
      client_cert_ = io::TlsServer::client_cert_details(ssl_);
    return 1;
  }
  int e = SSL_get_error(ssl_, r);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
    return -1;
  if (e == SSL_ERROR_WANT_READ) {
    client_.drained();
    wait_client_in(&ClientConnection::read_request_head);
  } else {
    client_.blocked();
    wait_client_out(&ClientConnection::read_request_head, false);
  }
  return 0;
}

ssize_t ClientConnection::client_recv(char* p, size_t n) {
  if (stream_) {
    ssize_t r = stream_->recv(p, n);
    if (r < 0)
      client_.drained();
    return r;
  }
  if (!ssl_)
    return plain_recv(client_, p, n);
  return tls_recv(client_, ssl_, p, n);
}

int ClientConnection::client_write(Outbox& out, uint64_t& written) {
  write_wants_read_ = false;
  if (stream_) {
    int r = stream_->write(out, written);
    if (r == 0)
      client_.blocked();
    return r;
  }
  if (!out.empty() && worker_.loop.defer_write(client_))
    return 0;
  if (!ssl_)
    return write_some(client_, out, written);
  return tls_write(client_, ssl_, out, x_->client_tls_stage_, written);
}

// SSL_write takes one buffer: gather into a staging buffer (TLS copies the
// bytes to encrypt them anyway). After WANT_WRITE the same bytes are staged
// again, as OpenSSL requires for the retry.
int ClientConnection::tls_write(io::Watch& w, SSL* ssl, Outbox& out, io::Buffer*& stage,
                                uint64_t& written) {
  if (!stage)
    stage = worker_.buffers.acquire();
  while (!out.empty()) {
    if (!w.out_ready)
      return 0;
    size_t staged = 0;
    for (unsigned i = out.first; i < out.count && staged < stage->capacity; ++i) {
      size_t take = std::min<size_t>(out.v[i].iov_len, stage->capacity - staged);
      std::memcpy(stage->data() + staged, out.v[i].iov_base, take);
      staged += take;
    }
    ERR_clear_error();
    int r = SSL_write(ssl, stage->data(), static_cast<int>(staged));
    if (r > 0) {
      out.advance(static_cast<size_t>(r));
      written += static_cast<uint64_t>(r);
      continue;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
      // TLS may need the peer's bytes first: waiting for writability then
      // would wake up at once, again and again.
      write_wants_read_ = e == SSL_ERROR_WANT_READ;
      if (write_wants_read_)
        w.drained();
      else
        w.blocked();
      return 0;
    }
    errno = EPIPE;
    return -1;
  }
  worker_.buffers.release(stage);
  stage = nullptr;
  return 1;
}

ClientConnection::~ClientConnection() {
  io::Timeouts::disarm(timer());
  worker_.loop.close(client_); // (closed already, by close())
  if (ssl_)
    SSL_free(ssl_);
  worker_.buffers.release(cbuf_);
  if (x_) {
    count_bytes();
    worker_.buffers.release(x_->client_tls_stage_);
    worker_.buffers.release(x_->backend_tls_stage_);
    delete x_->conn_;
    worker_.buffers.release(x_->ubuf_);
    worker_.exchanges.release(x_);
  }
  if (prev_in_worker)
    prev_in_worker->next_in_worker = next_in_worker;
  else
    worker_.sessions = next_in_worker;
  if (next_in_worker)
    next_in_worker->prev_in_worker = prev_in_worker;
  if (!of_stream_) {
    worker_.metrics->listeners.at(listener_->id).connections.add(-1);
    if (worker_.on_session_closed)
      worker_.on_session_closed(listener_->id);
  }
  if (--worker_.session_count == 0 && worker_.draining && worker_.on_drained)
    worker_.loop.post(worker_.on_drained);
}

void ClientConnection::trim_if_idle() {
  if (ssl_ && !h2_ && timer_kind_ == Timer::idle && !cbuf_)
    SSL_free_buffers(ssl_);
}

void ClientConnection::close_if_idle() {
  if (h2_)
    return h2_->drain(); // GOAWAY; it closes when its streams are done
  keep_client_ = false;
  if (timer_kind_ == Timer::idle && c_len_ == 0)
    close();
}

void ClientConnection::close() {
  if (closed_)
    return;
  closed_ = true;
  if (x_ && x_->started_ != io::Clock::time_point{}) {
    // A request cut short (the client left, the backend failed mid-response,
    // a forced shutdown) is logged and counted too: under the status sent, or
    // 499 when none was (nginx's "client closed request").
    if (!x_->status_)
      x_->status_ = 499;
    finish_request_log();
    x_->started_ = {};
  }
  count_bytes();
  if (x_ && x_->queued_) {
    Ref keep(this); // leave_queue drops the queue's reference
    leave_queue();
  }
  io::Timeouts::disarm(timer());
  timer_kind_ = Timer::none;
  if (h2_)
    delete std::exchange(h2_, nullptr); // (its streams' connections close with it)
  if (stream_)
    std::exchange(stream_, nullptr)->detach();
  worker_.loop.close(client_);
  client_in_ = client_out_ = nullptr;
  release_backend(false);
  worker_.buffers.release(cbuf_);
  cbuf_ = nullptr;
  c_len_ = 0;
  if (x_)
    x_->c_parsed_ = 0;
  release(); // the event loop's registration (the caller holds another)
}

// Closes after the last response without losing it: a close with unread
// request bytes would make the kernel send a reset that can destroy the
// response in the client's receive buffer. So: send FIN, discard what the
// client still sends (bounded in bytes and time), then close.
void ClientConnection::close_gracefully(bool request_read) {
  if (closed_)
    return;
  release_backend(false);
  if (stream_)
    return close(); // the stream ends with the response
  if (ssl_) {
    SSL_shutdown(ssl_); // close_notify, best effort
  } else {
    // Nothing unread from a client whose request was read whole: a plain close
    // sends FIN, not a reset. (As nginx's lingering_close heuristics.) Asked
    // of the socket itself: bytes may have come after its last edge was seen.
    char probe;
    ssize_t pending = ::recv(client_.fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (pending < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && request_read)
      return close();
  }
  if (::shutdown(client_.fd, SHUT_WR) != 0)
    return close();
  arm(Timer::linger);
  linger_read();
}

void ClientConnection::linger_read() {
  char sink[4096];
  for (;;) {
    ssize_t n = client_recv(sink, sizeof sink);
    if (n > 0) {
      x_->lingered_ += static_cast<uint32_t>(n);
      if (x_->lingered_ > (1u << 20))
        return close();
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return wait_client_in(&ClientConnection::linger_read);
    return close();
  }
}

void ClientConnection::do_read_request() {
  if (closed_)
    return;
  read_request_head();
}

void ClientConnection::read_request_head() {
  const auto& limits = listener_->config.limits;
  if (proxy_pending_) {
    int r = take_proxy_header();
    if (r < 0)
      return close();
    if (r == 0) {
      if (c_len_ == 0) { // nothing of the header yet: hold no buffer
        worker_.buffers.release(cbuf_);
        cbuf_ = nullptr;
      }
      return wait_client_in(&ClientConnection::read_request_head);
    }
  }
  if (ssl_ && !handshake_done_) {
    int r = tls_handshake();
    if (r < 0)
      return close();
    if (r == 0)
      return;
    if (listener_->config.http2) {
      const unsigned char* alpn = nullptr;
      unsigned alpn_len = 0;
      SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
      if (alpn_len == 2 && alpn[0] == 'h' && alpn[1] == '2')
        return start_h2(nullptr, 0);
    }
  }
  ensure_exchange(); // what the request needs, from its first byte on
  // The header timer runs from the head's first byte; it is armed only if the
  // head is still incomplete when the read waits (the same pass: the same
  // deadline). A head read whole goes straight to the exchange's timer.
  bool head_started = false;
  for (;;) {
    if (x_->c_parsed_ == 0 && c_len_ > 0 && listener_->config.http2 && !stream_ &&
        std::memcmp(cbuf_->data(), h2_preface.data(),
                    std::min<size_t>(c_len_, h2_preface.size())) == 0) {
      // HTTP/2 with prior knowledge (its preface is no HTTP/1.1 request).
      if (c_len_ >= h2_preface.size())
        return start_h2(cbuf_->data(), c_len_);
    } else if (x_->c_parsed_ < c_len_) {
      char* data = cbuf_->data();
      auto r = x_->req_.feed(data + x_->c_parsed_, data + c_len_);
      x_->c_parsed_ = static_cast<uint32_t>(r.stop - data);
      if (r.event == http::Parser::Event::head_complete) {
        x_->head_end_ = x_->c_parsed_;
        return on_request_head();
      }
      if (r.event == http::Parser::Event::error) {
        keep_client_ = false;
        return respond_error(x_->req_.error_status(), x_->req_.error_reason(), true);
      }
    }
    // (Bytes parsed: an exchange holds the request.)
    if (x_->c_parsed_ > http::max_target_bytes + 16 && !x_->req_.target_complete()) {
      keep_client_ = false;
      return respond_error(414, "request target longer than 8 KiB", true);
    }
    if (x_->c_parsed_ > limits.max_header_bytes || (cbuf_ && c_len_ == cbuf_->capacity)) {
      keep_client_ = false;
      return respond_error(431, "request head larger than max_header_bytes", true);
    }
    if (!cbuf_)
      cbuf_ = worker_.buffers.acquire();
    ssize_t n = client_recv(cbuf_->data() + c_len_, cbuf_->capacity - c_len_);
    if (n > 0) {
      bool was_empty = c_len_ == 0;
      c_len_ += static_cast<uint32_t>(n);
      x_->bytes_in_ += static_cast<uint64_t>(n);
      if (x_->c_parsed_ == 0)
        skip_empty_lines();
      if (was_empty && c_len_ > 0)
        head_started = true;
      continue;
    }
    if (n == 0)
      return close(); // the client is done (or gave up mid-head)
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return close();
    if (c_len_ == 0) { // idle between requests: hold no buffer, no exchange
      worker_.buffers.release(cbuf_);
      cbuf_ = nullptr;
      release_exchange();
    }
    if (head_started)
      arm(Timer::header);
    return wait_client_in(&ClientConnection::read_request_head);
  }
}

// Empty lines before a request line are ignored (RFC 9112 §2.2: some clients
// send CRLF after a body). They do not start a request: no header timer, and
// the idle timer is not renewed by them.
void ClientConnection::skip_empty_lines() {
  const char* data = cbuf_->data();
  uint32_t k = 0;
  while (k < c_len_ && (data[k] == '\r' || data[k] == '\n'))
    ++k;
  if (k == 0)
    return;
  std::memmove(cbuf_->data(), data + k, c_len_ - k);
  c_len_ -= k;
}

void ClientConnection::on_request_head() {
  x_->started_ = worker_.loop.now();
  http::Head& head = x_->req_.head();

  // Request id: the client's if it sent one, else a new one.
  assign_request_id();

  keep_client_ = head.keep_alive && !worker_.draining;
  if (x_->head_end_ > listener_->config.limits.max_header_bytes) {
    keep_client_ = false;
    return respond_error(431, "request head larger than max_header_bytes", true);
  }
  http::RequestLineCheck line = http::check_request_line(head);
  if (line.status) {
    keep_client_ = false;
    return respond_error(line.status, line.reason, true);
  }
  x_->authority_ = line.authority;
  find_grpc(head);
  uint64_t max_body = listener_->config.limits.max_body_bytes;
  if (max_body && head.has_content_length && head.content_length > max_body) {
    keep_client_ = false;
    return respond_error(413, "request body larger than max_body_bytes", true);
  }
  x_->upgrade_requested_ = mark_request_head(head, x_->authority_);

  // A keep-alive connection follows reloads request by request; one that
  // cannot (its listener is gone, or it checks client certificates again)
  // says Connection: close on this response.
  if (!adopt_runtime())
    keep_client_ = false;

  // Body bytes that arrived with the head, up to the end of this message.
  auto r = x_->req_.feed(cbuf_->data() + x_->c_parsed_, cbuf_->data() + c_len_);
  if (r.event == http::Parser::Event::error) {
    keep_client_ = false;
    return respond_error(400, x_->req_.error_reason(), true);
  }
  x_->c_parsed_ = static_cast<uint32_t>(r.stop - cbuf_->data());
  x_->msg_end_ = x_->c_parsed_;
  x_->req_done_ = r.event == http::Parser::Event::message_complete;
  if (max_body && x_->req_.body_bytes() > max_body) {
    keep_client_ = false;
    return respond_error(413, "request body larger than max_body_bytes", true);
  }
  // ACME's HTTP-01 validations come from the CA, whatever the allow list
  // says; other paths under the prefix (a backend's own) are routed.
  if (io::AcmeChallenges::http_pending() &&
      head.target.view().starts_with(io::acme_challenge_path) && respond_acme_challenge(head))
    return;
  ClientAddress client{client_family_ == AF_INET6, client_family_ ? client_addr_ : nullptr,
                       !client_cert().empty()};
  if (!access_allowed(listener_->config, client))
    return respond_error(403, "the client's address is not allowed on this listener (allow/deny)",
                         !keep_client_);

  // Max-Forwards (RFC 9110 §7.6.2): an OPTIONS or TRACE that may go no
  // further is answered here, whatever the routes say; one that may goes on
  // with one hop less.
  x_->max_forwards_len_ = 0;
  if (std::optional<uint64_t> hops = max_forwards(head)) {
    if (*hops == 0)
      return respond_final_recipient();
    x_->max_forwards_len_ = static_cast<uint8_t>(
        std::snprintf(x_->max_forwards_, sizeof x_->max_forwards_, "Max-Forwards: %llu\r\n",
                      static_cast<unsigned long long>(*hops - 1)));
  }

  const CompiledRoute* route =
      listener_->router.match(head, x_->authority_.view(), client, &x_->route_);
  if (!route)
    return respond_error(404, "no route matches the request", !keep_client_);
  x_->rule_ = route;
  const config::Route& rc = *route->config;
  if (route->limiter) {
    const config::HashKey& key = rc.rate_limit->key;
    uint64_t hash = route->limiter->hash(key_of(key)); // (route: the empty key, one bucket)
    RateLimiter::Verdict v = route->limiter->take(hash, steady_us());
    if (!v.allowed)
      return respond_rate_limited(*route, v.retry_after_s);
  }
  bool local =
      rc.action == config::Route::Action::redirect || rc.action == config::Route::Action::respond;
  if (local && !x_->req_done_)
    keep_client_ = false; // answered before its body is read: the connection cannot go on
  if (rc.action == config::Route::Action::redirect)
    return respond_redirect();
  if (rc.action == config::Route::Action::respond) {
    x_->status_ = rc.respond.status;
    FixedAnswer answer{rc.respond.status, rc.respond.content_type, rc.respond.body, keep_client_,
                       head.method.view() == "HEAD"};
    write_fixed(answer, x_->answer_, x_->to_client_);
    return send_local_answer();
  }
  int pool = Router::pool_of(*route, rc.has_split_key ? key_of(rc.split_key) : std::string_view());
  if (pool < 0)
    return respond_error(503, "the route's split has no pool to send to", !keep_client_);
  x_->pool_ = runtime_->pools[static_cast<size_t>(pool)].get();
  const config::Pool& pc = x_->pool_->config();
  if (pc.maintenance)
    return respond_maintenance();
  // What the balancer may use: the hash key, the sticky cookie.
  x_->has_hash_ = false;
  if (pc.balance == config::Balance::ring_hash || pc.balance == config::Balance::maglev) {
    std::string_view key = key_of(pc.hash_key);
    if (!key.empty()) {
      x_->hash_ = upstream::hash64(key);
      x_->has_hash_ = true;
    }
  }
  x_->sticky_backend_ = -1;
  if (!pc.sticky_cookie.empty()) {
    std::string_view value = http::find_cookie(head, pc.sticky_cookie);
    if (!value.empty())
      x_->sticky_backend_ = x_->pool_->sticky_backend(value);
  }
  x_->resp_.set_head_request(head.method.view() == "HEAD");
  arm(Timer::exchange);
  do_attempt();
}

// ---- What the exchange asks of its client side: the request body as it
// comes, the response as it goes (each resuming the exchange's next step).

void ClientConnection::do_read_request_body() {
  // The body bytes after the head have been sent: reuse that room.
  if (x_->msg_end_ > x_->head_end_)
    x_->body_discarded_ = true;
  c_len_ = x_->c_parsed_ = x_->msg_end_ = x_->head_end_;
  if (request_splice_possible() && (x_->up_pipe_ = worker_.pipes.acquire()))
    return splice_request_body();
  if (++x_->request_chain_ % 16 == 0) {
    // Bytes keep coming without blocking: continue from the event loop so the
    // stack does not grow with the body.
    return client_in_next_pass(&ClientConnection::read_request_body);
  }
  read_request_body();
}

void ClientConnection::read_request_body() {
  for (;;) {
    ssize_t n = client_recv(cbuf_->data() + c_len_, cbuf_->capacity - c_len_);
    if (n > 0) {
      c_len_ += static_cast<uint32_t>(n);
      x_->bytes_in_ += static_cast<uint64_t>(n);
      break;
    }
    if (n == 0)
      return close(); // the client left before its request was complete
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return close();
    // The request may end before more of its body comes (an early response,
    // a failed backend, a timeout), or go to another backend (a retry or a
    // replay, which starts its own body pump): release_backend() and
    // finish_request_state() then take this wait back.
    return wait_client_in(&ClientConnection::read_request_body);
  }
  arm(Timer::exchange);
  char* data = cbuf_->data();
  auto r = x_->req_.feed(data + x_->c_parsed_, data + c_len_);
  if (r.event == http::Parser::Event::error) {
    keep_client_ = false;
    if (x_->resp_started_)
      return close();
    return respond_error(400, x_->req_.error_reason(), true);
  }
  // A gRPC call from an HTTP/2 client to a pool that speaks HTTP/2 is a
  // stream of messages (its servers bound each one): max_body_bytes does
  // not cut it.
  uint64_t max_body = grpc_stream() ? 0 : listener_->config.limits.max_body_bytes;
  if (max_body && x_->req_.body_bytes() > max_body) {
    keep_client_ = false;
    if (x_->resp_started_)
      return close();
    return respond_error(413, "request body larger than max_body_bytes", true);
  }
  x_->c_parsed_ = static_cast<uint32_t>(r.stop - data);
  uint32_t from = x_->msg_end_;
  x_->msg_end_ = x_->c_parsed_;
  x_->req_done_ = r.event == http::Parser::Event::message_complete;
  x_->to_backend_.clear();
  x_->to_backend_.add(data + from, x_->msg_end_ - from);
  do_write_backend();
}

void ClientConnection::do_write_client() {
  int r = client_write(x_->to_client_, x_->bytes_out_);
  if (r > 0)
    return on_response_bytes_sent();
  if (r == 0) {
    x_->client_writing_ = true;
    return wait_client_out(&ClientConnection::on_client_writable, write_wants_read_);
  }
  close(); // the client is gone
}

void ClientConnection::on_client_writable() {
  x_->client_writing_ = false;
  if (timer_kind_ == Timer::exchange)
    arm(Timer::exchange);
  do_write_client();
}

// What a split_key, hash_key names, in this request.
std::string_view ClientConnection::key_of(const config::HashKey& key) const {
  switch (key.kind) {
  case config::HashKey::Kind::route:
    return {};
  case config::HashKey::Kind::source_ip:
    return client_ip();
  case config::HashKey::Kind::header:
    return http::find_header(x_->req_.head(), key.name);
  case config::HashKey::Kind::cookie:
    return http::find_cookie(x_->req_.head(), key.name);
  }
  return {};
}

// A route's redirect: the parts it does not give are the request's.
void ClientConnection::respond_redirect() {
  const config::Redirect& rd = x_->rule_->config->redirect;
  const http::Head& head = x_->req_.head();
  std::string_view from_host = x_->authority_.view();
  if (from_host.empty())
    if (const http::Header* h = head.find(http::Field::host))
      from_host = h->value.view();
  // The request's host and port ("[::1]:8080" -> "[::1]", "8080").
  std::string_view req_host = from_host, req_port;
  size_t colon = from_host.rfind(':');
  if (colon != std::string_view::npos && from_host.find(']', colon) == std::string_view::npos) {
    req_host = from_host.substr(0, colon);
    req_port = from_host.substr(colon + 1);
  }
  bool https = ssl_ != nullptr || (stream_ && stream_->https());
  std::string_view scheme =
      rd.scheme.empty() ? std::string_view(https ? "https" : "http") : std::string_view(rd.scheme);
  RedirectAnswer a;
  a.code = rd.code;
  a.scheme = scheme;
  a.host = rd.host.empty() ? req_host : std::string_view(rd.host);
  if (a.host.empty())
    return respond_error(400, "a redirect needs the request's Host", !keep_client_);
  uint16_t port = rd.port;
  if (!port && scheme == (https ? "https" : "http") && !req_port.empty()) {
    unsigned p = 0;
    auto [end, ec] = std::from_chars(req_port.data(), req_port.data() + req_port.size(), p);
    if (ec == std::errc() && end == req_port.data() + req_port.size() && p > 0 && p < 65536)
      port = static_cast<uint16_t>(p);
  }
  if (port == (scheme == "https" ? 443 : 80))
    port = 0;
  a.port = port;
  // The target's path and query (an absolute-form target's path starts after its authority).
  std::string_view target = head.target.view();
  if (!x_->authority_.empty())
    target = std::string_view(x_->authority_.end(),
                              static_cast<size_t>(head.target.end() - x_->authority_.end()));
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  if (path.empty() || path.front() != '/')
    path = "/"; // ("OPTIONS *", "http://host?q")
  if (rd.has_path) {
    a.path_before = rd.path;
  } else if (rd.has_prefix) {
    a.path_before = rd.prefix;
    a.path_after = path.substr(std::min(path.size(), x_->rule_->config->match.path_prefix.size()));
  } else {
    a.path_before = path;
  }
  if (rd.has_query) {
    a.has_query = !rd.query.empty();
    a.query = rd.query;
  } else if (q != std::string_view::npos) {
    a.has_query = true;
    a.query = target.substr(q + 1);
  }
  a.keep_alive = keep_client_;
  x_->status_ = rd.code;
  write_redirect(a, x_->answer_, x_->to_client_);
  send_local_answer();
}

std::string_view ClientConnection::client_cert() const {
  return stream_ ? stream_->client_cert() : std::string_view(client_cert_);
}

bool ClientConnection::respond_acme_challenge(const http::Head& head) {
  std::string_view token = head.target.view().substr(io::acme_challenge_path.size());
  token = token.substr(0, token.find('?'));
  std::optional<std::string> answer = io::AcmeChallenges::instance().http_answer(token);
  if (!answer)
    return false;
  if (!x_->req_done_)
    keep_client_ = false;
  x_->acme_answer_ = std::move(*answer);
  x_->status_ = 200;
  FixedAnswer fixed{200, "application/octet-stream", x_->acme_answer_, keep_client_,
                    head.method.view() == "HEAD"};
  write_fixed(fixed, x_->answer_, x_->to_client_);
  send_local_answer();
  return true;
}

void ClientConnection::respond_rate_limited(const CompiledRoute& route, uint32_t retry_after) {
  const config::RateLimit& rl = *route.config->rate_limit;
  route.limiter->count_refused(worker_.id);
  RateLimitFields fields;
  fields.limit = rl.rate;
  fields.window_s =
      static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(rl.per).count());
  fields.burst = rl.burst;
  fields.retry_after = retry_after;
  respond_error(429, "the route's rate limit is reached: try again later", !keep_client_, &fields);
}

void ClientConnection::respond_maintenance() {
  keep_client_ = keep_client_ && x_->req_done_;
  x_->status_ = 503;
  MaintenanceAnswer answer;
  answer.pool = x_->pool_->name();
  answer.request_id_header = listener_->config.headers.request_id;
  answer.request_id = request_id();
  answer.keep_alive = keep_client_;
  answer.head_request = x_->req_.head().method.view() == "HEAD";
  write_maintenance(answer, x_->answer_, x_->to_client_);
  send_local_answer();
}

void ClientConnection::respond_final_recipient() {
  if (!x_->req_done_)
    keep_client_ = false; // its body is not read: the connection cannot go on
  x_->status_ = 200;
  // A TRACE's echo refers to the request's bytes: they stay in the read
  // buffer until the request is logged, after this answer.
  if (!write_final_recipient(x_->req_.head(), keep_client_, x_->answer_, x_->to_client_))
    return respond_error(400, "request has too many header fields to echo", true);
  send_local_answer();
}

void ClientConnection::send_local_answer() {
  // Whatever read was awaited (a head after a header timeout, a body) waits
  // no more: the connection goes on, if at all, once this answer is out.
  client_in_ = nullptr;
  x_->resp_started_ = true;
  x_->answered_locally_ = true;
  // Whatever timer ran (a connect or queue timer of the request) has no say
  // over this answer any more.
  arm(Timer::answer);
  do_write_client();
}

void ClientConnection::respond_error(int status, const char* reason, bool close_after,
                                     const RateLimitFields* rate_limit) {
  if (closed_)
    return;
  ensure_exchange(); // a head timeout can come before any byte of a request
  if (x_->resp_started_)
    return close();
  release_backend(false);
  if (close_after || !x_->req_done_)
    keep_client_ = false;
  x_->status_ = status;
  // An error in the head itself (400, 431, 408) comes before the request had
  // an id: it gets one now, for the answer and the access log.
  if (!x_->request_id_len_)
    assign_request_id();
  if (x_->grpc_) {
    // A gRPC client reads grpc-status, not an HTTP error page.
    x_->status_ = 200;
    x_->grpc_status_ = grpc_status_for(status);
    if ((status == 504 || status == 408) && x_->grpc_timeout_.count() > 0 &&
        worker_.loop.now() >= x_->started_ + x_->grpc_timeout_)
      reason = "the call's grpc-timeout passed";
    GrpcAnswer answer{x_->grpc_status_, reason ? reason : "", request_id(), keep_client_};
    write_grpc_error(answer, x_->answer_, x_->to_client_);
    return send_local_answer();
  }
  ErrorAnswer answer;
  answer.status = status;
  answer.reason = reason ? reason : "";
  answer.request_id = request_id();
  answer.keep_alive = keep_client_;
  const http::Head& req = x_->req_.head();
  answer.head_request = req.start && req.method.view() == "HEAD";
  answer.rate_limit = rate_limit;
  write_error(answer, x_->answer_, x_->to_client_);
  send_local_answer();
}

void ClientConnection::count_bytes() {
  if (!x_)
    return;
  ListenerMetrics& lm = worker_.metrics->listeners.at(listener_->id);
  if (x_->bytes_in_ > x_->counted_in_)
    lm.bytes_in.add(x_->bytes_in_ - x_->counted_in_);
  if (x_->bytes_out_ > x_->counted_out_)
    lm.bytes_out.add(x_->bytes_out_ - x_->counted_out_);
  x_->counted_in_ = x_->bytes_in_;
  x_->counted_out_ = x_->bytes_out_;
}

void ClientConnection::finish_request() {
  finish_request_log();
  finish_request_state();
}

void ClientConnection::finish_request_log() {
  if (x_->status_) {
    WorkerMetrics& m = *worker_.metrics;
    ListenerMetrics& lm = m.listeners.at(listener_->id);
    (of_stream_ ? lm.requests_h2 : lm.requests)
        .at(x_->pool_ ? x_->pool_->id() + 1 : 0)
        .add(x_->status_);
    if (x_->pool_ && x_->started_ != io::Clock::time_point{})
      m.pools.at(x_->pool_->id())
          .duration.observe(
              std::chrono::duration<double>(worker_.loop.now() - x_->started_).count());
    if (x_->h2_ && x_->h2_->grpc_status() >= 0) // (a stream still held: the client went)
      x_->grpc_status_ = x_->h2_->grpc_status();
    if (x_->pool_ && x_->grpc_ && x_->grpc_status_ >= 0)
      m.pools.at(x_->pool_->id())
          .grpc[std::min<size_t>(static_cast<size_t>(x_->grpc_status_),
                                 PoolMetrics::grpc_codes - 1)]
          .add();
  }
  count_bytes();
  if (worker_.access_log.enabled() && (x_->status_ || c_len_)) {
    const http::Head& h = x_->req_.head();
    AccessRecord rec;
    rec.request_id = request_id();
    rec.client = client_ip();
    rec.listener = listener_->config.name;
    rec.route = x_->route_;
    if (x_->pool_)
      rec.pool = x_->pool_->name();
    if (x_->pool_ && x_->backend_ >= 0)
      rec.backend = x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label;
    if (h.start) {
      rec.method = h.method.view();
      rec.target = h.target.view();
      rec.version_minor = h.minor;
      for (unsigned i = 0; i < h.count; ++i) {
        if (http::iequals(h.headers[i].name.view(), "user-agent"))
          rec.user_agent = h.headers[i].value.view();
        else if (http::iequals(h.headers[i].name.view(), "referer"))
          rec.referer = h.headers[i].value.view();
      }
    }
    rec.http2 = of_stream_;
    rec.status = x_->status_;
    rec.grpc_status = x_->grpc_ ? x_->grpc_status_ : -1;
    rec.bytes_in = x_->bytes_in_;
    rec.bytes_out = x_->bytes_out_;
    rec.upstream_ms = x_->upstream_ms_;
    rec.total_ms =
        x_->started_ == io::Clock::time_point{} ? 0 : ms_between(x_->started_, worker_.loop.now());
    worker_.access_log.write(rec);
  }
}

// A reload or DNS change published a new snapshot: the next request uses it
// (this one keeps what it started with). False when the new snapshot lacks
// this connection's listener, or changed how its client certificate is
// checked: it keeps the old one until it closes.
bool ClientConnection::adopt_runtime() {
  if (runtime_ == worker_.runtime)
    return true;
  const ListenerRuntime* now = worker_.runtime->listener_by_id(listener_->id);
  if (!now)
    return false;
  // Who the client is was settled at the handshake, against the client_ca
  // then in force: when client certificates are asked for and the TLS
  // settings were built again (a reload, tls.watch), the client shakes hands
  // again on a new connection (this one closes after its response).
  if (ssl_ && listener_->tls.get() != now->tls.get() &&
      (!listener_->config.tls.client_ca.empty() || !now->config.tls.client_ca.empty()))
    return false;
  runtime_ = worker_.runtime;
  listener_ = now;
  // The parser looks for the request id header by the listener's name for it.
  if (x_)
    x_->req_.set_request_id_header(listener_->config.headers.request_id);
  return true;
}

void ClientConnection::finish_request_state() {
  client_in_ = nullptr; // a wait for this request's body
  // Nothing may read this request's head from now on: its spans point into a
  // buffer that goes back to the worker's free list.
  x_->req_.head().clear();
  if (stream_)
    stream_->response_complete();
  bool keep = keep_client_ && !closed_ && x_->req_done_ && !worker_.draining && !stream_;
  bool request_read = x_->req_done_;
  // Per-request state back to its start (a backend still held is let go).
  if (x_->conn_ || x_->active_backend_ >= 0 || x_->ubuf_ || x_->pipe_ || x_->up_pipe_)
    release_backend(false);
  worker_.buffers.release(x_->client_tls_stage_);
  worker_.buffers.release(x_->backend_tls_stage_);
  x_->client_tls_stage_ = x_->backend_tls_stage_ = nullptr;
  // A listener the newest config no longer has closes its connections.
  if (!adopt_runtime())
    keep = false;
  if (!keep) {
    x_->reset_fields();
    return close_gracefully(request_read);
  }

  // A pipelined request may already be in the buffer: move it to the front.
  uint32_t left = c_len_ - x_->msg_end_;
  if (left) {
    std::memmove(cbuf_->data(), cbuf_->data() + x_->msg_end_, left);
    x_->reset_fields();
    x_->bytes_in_ = x_->counted_in_ = left; // already counted in the metrics with the last request
    arm(Timer::header);
  } else {
    worker_.buffers.release(cbuf_);
    cbuf_ = nullptr;
    release_exchange();
    arm(Timer::idle);
  }
  c_len_ = left; // (the exchange's offsets are back to 0 with its fields)
  keep_client_ = true;
  if (!left && !(ssl_ && SSL_has_pending(ssl_))) {
    // Nothing buffered: the next request comes with the socket's next edge
    // (or on the next pass, when one came while this request was served).
    // (A TLS connection may hold decrypted bytes the socket no longer signals.)
    return wait_client_in(&ClientConnection::read_request_head);
  }
  if (++serve_chain_ % 8 == 0) {
    // The next request is here already (pipelined, or TLS bytes): requests lb
    // answers itself would otherwise run one inside the other, with no bound
    // on the stack. Every few, continue from the event loop.
    return client_in_next_pass(&ClientConnection::do_read_request);
  }
  do_read_request();
}

void ClientConnection::arm(Timer t) {
  timer_kind_ = t;
  std::chrono::milliseconds d{};
  switch (t) {
  case Timer::none:
    io::Timeouts::disarm(timer());
    return;
  case Timer::idle:
  case Timer::answer:
    d = listener_->config.timeouts.idle;
    break;
  case Timer::header:
    d = listener_->config.timeouts.header;
    break;
  case Timer::connect:
    d = x_->pool_->config().timeouts.connect;
    break;
  case Timer::exchange:
    d = x_->pool_->config().timeouts.response;
    x_->grpc_deadline_armed_ = false;
    if (x_->grpc_timeout_.count() > 0) {
      // grpc-timeout: a deadline for the whole call, from its head. The
      // timer queues are one per duration: what is left is rounded down to
      // a power of two (few queues); timed_out() arms again until the
      // deadline is there.
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          x_->started_ + x_->grpc_timeout_ - worker_.loop.now());
      if (left < d) {
        auto ms = static_cast<uint64_t>(std::max<int64_t>(left.count(), 0));
        d = std::chrono::milliseconds(ms ? std::bit_floor(ms) : 0);
        x_->grpc_deadline_armed_ = true;
      }
    }
    break;
  case Timer::linger:
    d = std::chrono::seconds(2);
    break;
  case Timer::tunnel:
    d = listener_->config.timeouts.tunnel;
    break;
  case Timer::queue:
    d = x_->pool_->config().queue_timeout;
    break;
  }
  worker_.timeouts.arm(timer(), d, worker_.loop.now());
}

void ClientConnection::on_timeout(io::Timeouts::Entry* e) {
  ClientConnection* s = static_cast<ClientConnection*>(e);
  Ref self(s);
  s->timed_out();
}

void ClientConnection::timed_out() {
  if (closed_)
    return;
  Timer kind = timer_kind_;
  timer_kind_ = Timer::none;
  switch (kind) {
  case Timer::idle:
    if (h2_)
      h2_->idle_timeout(); // GOAWAY first
    return close();
  case Timer::none:
  case Timer::linger:
  case Timer::tunnel:
  case Timer::answer:
    return close();
  case Timer::header:
    // Before the PROXY header or the TLS handshake is complete there is no
    // way to answer: close.
    if (proxy_pending_ || (ssl_ && !handshake_done_))
      return close();
    keep_client_ = false;
    return respond_error(408, "request head not received within timeouts.header", true);
  case Timer::connect:
    std::snprintf(x_->reason_, sizeof x_->reason_,
                  x_->h2_ ? "HTTP/2 connection to %s not up in time (connect, "
                            "TLS, ALPN)"
                  : x_->conn_ && x_->conn_->ssl ? "TLS handshake with %s timed out"
                                                : "connect to %s timed out",
                  x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str());
    io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
    backend_metrics().connect_errors.add();
    x_->pool_->report(static_cast<size_t>(x_->backend_), upstream::Outcome::connect_failure);
    return backend_failed(Failure::connect, x_->reason_);
  case Timer::queue:
    leave_queue();
    std::snprintf(x_->reason_, sizeof x_->reason_,
                  "circuit open: pool %s stayed at max_connections_per_backend for queue_timeout",
                  x_->pool_->name().c_str());
    return respond_error(503, x_->reason_, !x_->req_done_);
  case Timer::exchange:
    if (x_->grpc_deadline_armed_) {
      if (worker_.loop.now() < x_->started_ + x_->grpc_timeout_)
        return arm(Timer::exchange); // (a step of the rounded-down wait)
      keep_client_ = false;
      return respond_error(504, "the call's grpc-timeout passed", true);
    }
    keep_client_ = false;
    if (!x_->req_done_)
      return respond_error(408, "request body not received in time", true);
    return respond_error(504, "backend did not respond within timeouts.response", true);
  }
}

// content-type application/grpc (or application/grpc+proto, ...): lb's own
// answers to it are gRPC-shaped; its grpc-timeout ("100m": digits and a
// unit, H M S m u n) bounds the response.
void ClientConnection::find_grpc(const http::Head& head) {
  x_->grpc_ = false;
  x_->grpc_timeout_ = std::chrono::milliseconds(0);
  for (unsigned i = 0; i < head.count; ++i) {
    const http::Header& h = head.headers[i];
    if (h.name.n != 12)
      continue;
    std::string_view name = h.name.view(), value = h.value.view();
    if (http::iequals(name, "content-type")) {
      x_->grpc_ = value.size() >= 16 && http::iequals(value.substr(0, 16), "application/grpc") &&
                  (value.size() == 16 || value[16] == '+' || value[16] == ';');
    } else if (http::iequals(name, "grpc-timeout") && value.size() >= 2 && value.size() <= 9) {
      uint64_t n = 0;
      bool digits = true;
      for (char c : value.substr(0, value.size() - 1)) {
        digits &= c >= '0' && c <= '9';
        n = n * 10 + static_cast<uint64_t>(c - '0');
      }
      uint64_t ms = 0;
      switch (value.back()) {
      case 'H':
        ms = n * 3600000;
        break;
      case 'M':
        ms = n * 60000;
        break;
      case 'S':
        ms = n * 1000;
        break;
      case 'm':
        ms = n;
        break;
      case 'u':
        ms = (n + 999) / 1000;
        break;
      case 'n':
        ms = (n + 999999) / 1000000;
        break;
      default:
        digits = false;
      }
      // (At most a day: the clock's arithmetic stays far from overflow, and
      // every pool's timeouts.response is shorter anyway.)
      if (digits)
        x_->grpc_timeout_ =
            std::chrono::milliseconds(std::clamp<uint64_t>(ms, 1, uint64_t{86400} * 1000));
    }
  }
  if (!x_->grpc_)
    x_->grpc_timeout_ = std::chrono::milliseconds(0); // (only a gRPC call's counts)
}

bool ClientConnection::grpc_stream() const {
  return x_->grpc_ && of_stream_ && x_->pool_ &&
         x_->pool_->config().protocol != config::Protocol::http1;
}

void ClientConnection::assign_request_id() {
  x_->request_id_len_ = 0;
  if (listener_->config.headers.request_id.empty() || x_->req_.head().find(http::Field::request_id))
    return;
  // 16 hex digits: the process's prefix, the worker, a counter.
  uint64_t n = ++worker_.next_request;
  uint64_t id =
      (uint64_t{worker_.id_prefix} << 32) | (uint64_t{worker_.id & 0xffu} << 24) | (n & 0xffffff);
  static constexpr char hex[] = "0123456789abcdef";
  for (int i = 15; i >= 0; --i, id >>= 4)
    x_->request_id_[i] = hex[id & 0xf];
  x_->request_id_len_ = 16;
}

std::string_view ClientConnection::request_id() const {
  if (x_->request_id_len_)
    return {x_->request_id_, x_->request_id_len_};
  if (const http::Header* h = x_->req_.head().find(http::Field::request_id))
    return h->value.view();
  return "-";
}

} // namespace lb::proxy
