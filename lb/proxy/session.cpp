#include "lb/proxy/session.hpp"

#include "lb/http/proxy_protocol.hpp"
#include "lb/http/request_line.hpp"
#include "lb/io/log.hpp"
#include "lb/proxy/header_rules.hpp"
#include "lb/proxy/local_answer.hpp"
#include "lb/proxy/retry_policy.hpp"
#include "lb/upstream/hashing.hpp"

#include <boost/asio/bind_allocator.hpp>

#include <openssl/err.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace lb::proxy {

namespace asio = boost::asio;
using boost::system::error_code;
using std::chrono::duration;

// A strong reference held by every pending completion handler.
class Session::Ref {
public:
  explicit Ref(Session* s) : s_(s) { s_->add_ref(); }
  Ref(const Ref& o) : s_(o.s_) { s_->add_ref(); }
  Ref(Ref&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  Ref& operator=(const Ref&) = delete;
  ~Ref() {
    if (s_)
      s_->release();
  }
  Session* operator->() const { return s_; }

private:
  Session* s_;
};

namespace {

double ms_between(io::Clock::time_point a, io::Clock::time_point b) {
  return duration<double, std::milli>(b - a).count();
}

template <class Slot, class F> auto in_slot(Slot& slot, F&& f) {
  return asio::bind_allocator(io::SlotAllocator<void, Slot>(slot), std::forward<F>(f));
}

template <class Socket> int fd_of(Socket& s) { return s.native_handle(); }

} // namespace

// Writes as much of `out` as the socket takes now. Returns 1 when all is
// written, 0 when the socket would block, -1 on error (errno set).
static int write_some(int fd, Session* /*unused*/, iovec* v, unsigned& first, unsigned count,
                      uint64_t& written) {
  while (first < count) {
    msghdr m{};
    m.msg_iov = v + first;
    m.msg_iovlen = std::min<unsigned>(count - first, 1024);
    ssize_t n = ::sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      return -1;
    }
    written += static_cast<uint64_t>(n);
    size_t left = static_cast<size_t>(n);
    while (left && first < count) {
      if (left >= v[first].iov_len) {
        left -= v[first].iov_len;
        ++first;
      } else {
        v[first].iov_base = static_cast<char*>(v[first].iov_base) + left;
        v[first].iov_len -= left;
        left = 0;
      }
    }
  }
  return 1;
}

// Waits until `socket` is ready for `what`, then runs `Step`, unless the session
// closed meanwhile; a failed wait closes it. The handler lives in `slot`.
template <void (Session::*Step)(), class Socket, class Slot>
void Session::wait_then(Socket& socket, asio::socket_base::wait_type what, Slot& slot) {
  socket.async_wait(what, in_slot(slot, [self = Ref(this)](const error_code& ec) {
                      Session* s = self.operator->();
                      if (s->closed_)
                        return;
                      if (ec)
                        return s->close();
                      (s->*Step)();
                    }));
}

// ---- Start and end ----------------------------------------------------------

void Session::start(WorkerContext& worker, const ListenerRuntime& listener, ClientSocket socket,
                    const sockaddr* peer) {
  Ref self(new Session(worker, listener, std::move(socket), peer));
  // A PROXY header or a TLS handshake must come as promptly as a request head.
  self->arm(listener.tls || listener.config.proxy_protocol ? Timer::header : Timer::idle);
  if (listener.tls && !self->ssl_)
    return self->close();
  self->do_read_request();
}

Session::Session(WorkerContext& worker, const ListenerRuntime& listener, ClientSocket socket,
                 const sockaddr* peer)
    : worker_(worker), listener_(&listener), runtime_(worker.runtime), client_(std::move(socket)) {
  // The socket is non-blocking and TCP_NODELAY already (accept4, the listener).
  set_client_address(peer);
  proxy_pending_ = listener_->config.proxy_protocol;
  if (listener_->tls)
    ssl_ = listener_->tls->accept(client_.native_handle());
  fire = &Session::on_timeout;
  next_in_worker = worker_.sessions;
  if (next_in_worker)
    next_in_worker->prev_in_worker = this;
  worker_.sessions = this;
  ++worker_.session_count;
  worker_.metrics->listeners.at(listener_->id).connections.add(1);
}

// The address is kept in binary (an idle connection stays small); each
// request's exchange holds it as text.
void Session::set_client_address(const sockaddr* peer) {
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

void Session::format_client_address() {
  const char* ip = client_family_ ? ::inet_ntop(client_family_, client_addr_, x_->client_ip_,
                                                sizeof x_->client_ip_)
                                  : nullptr;
  x_->client_ip_len_ = ip ? static_cast<uint8_t>(std::strlen(x_->client_ip_)) : 0;
}

void Session::ensure_exchange() {
  if (x_)
    return;
  x_ = worker_.exchanges.acquire();
  x_->req_.set_request_id_header(listener_->config.headers.request_id);
  format_client_address();
}

void Session::release_exchange() {
  if (!x_ || x_->handlers_pending())
    return;
  worker_.buffers.release(x_->client_tls_stage_);
  worker_.buffers.release(x_->backend_tls_stage_);
  worker_.buffers.release(x_->ubuf_);
  worker_.exchanges.release(x_);
  x_ = nullptr;
}

// A listener with proxy_protocol: the connection starts with a PROXY v1/v2
// header from an outer load balancer, naming the real client. Returns 1 when
// the header has been read, 0 to wait for more of it, -1 to close (a bad or
// missing header).
int Session::take_proxy_header() {
  // What follows the header (HTTP, or a TLS ClientHello) must stay in the
  // socket for whoever reads next: the bytes are peeked, and only header
  // bytes are consumed. While the header is incomplete, every byte received
  // is part of it: those are consumed (kept in cbuf_ from offset 0) so that
  // the next wait is for new bytes, not for the ones already there.
  if (!cbuf_)
    cbuf_ = worker_.buffers.acquire();
  uint32_t have = c_len_;
  ssize_t n = ::recv(fd_of(client_), cbuf_->data() + have, cbuf_->capacity - have, MSG_PEEK);
  if (n == 0)
    return -1;
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  http::ProxyHeader header;
  size_t seen = have + static_cast<size_t>(n);
  switch (http::parse_proxy_header(cbuf_->data(), seen, header)) {
  case http::ProxyParse::invalid:
    return -1;
  case http::ProxyParse::need_more:
    if (seen >= cbuf_->capacity)
      return -1;
    if (::recv(fd_of(client_), cbuf_->data() + have, static_cast<size_t>(n), 0) != n)
      return -1;
    c_len_ = static_cast<uint32_t>(seen);
    return 0;
  case http::ProxyParse::complete:
    break;
  }
  size_t rest = header.length - have;
  if (::recv(fd_of(client_), cbuf_->data() + have, rest, 0) != static_cast<ssize_t>(rest))
    return -1;
  if (!header.local)
    set_client_address(reinterpret_cast<const sockaddr*>(&header.source));
  proxy_pending_ = false;
  c_len_ = 0;
  return 1;
}

int Session::tls_handshake() {
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    handshake_done_ = true;
    return 1;
  }
  int e = SSL_get_error(ssl_, r);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
    return -1;
  wait_then<&Session::read_request_head>(client_,
                                         e == SSL_ERROR_WANT_READ ? asio::socket_base::wait_read
                                                                  : asio::socket_base::wait_write,
                                         client_read_slot_);
  return 0;
}

namespace {

// recv() for a TLS connection: the same results and errno conventions.
ssize_t tls_recv(SSL* ssl, char* p, size_t n) {
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

} // namespace

ssize_t Session::client_recv(char* p, size_t n) {
  if (!ssl_)
    return ::recv(fd_of(client_), p, n, 0);
  return tls_recv(ssl_, p, n);
}

ssize_t Session::backend_recv(char* p, size_t n) {
  if (!x_->conn_->ssl)
    return ::recv(fd_of(x_->conn_->socket), p, n, 0);
  return tls_recv(x_->conn_->ssl, p, n);
}

int Session::client_write(Outbox& out, uint64_t& written) {
  write_wants_read_ = false;
  if (!ssl_)
    return write_some(fd_of(client_), this, out.v, out.first, out.count, written);
  return tls_write(ssl_, out, x_->client_tls_stage_, written);
}

int Session::backend_write(Outbox& out, uint64_t& written) {
  write_wants_read_ = false;
  if (!x_->conn_->ssl)
    return write_some(fd_of(x_->conn_->socket), this, out.v, out.first, out.count, written);
  return tls_write(x_->conn_->ssl, out, x_->backend_tls_stage_, written);
}

// SSL_write takes one buffer: gather into a staging buffer (TLS copies the
// bytes to encrypt them anyway). After WANT_WRITE the same bytes are staged
// again, as OpenSSL requires for the retry.
int Session::tls_write(SSL* ssl, Outbox& out, io::Buffer*& stage, uint64_t& written) {
  if (!stage)
    stage = worker_.buffers.acquire();
  while (!out.empty()) {
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
      return 0;
    }
    errno = EPIPE;
    return -1;
  }
  worker_.buffers.release(stage);
  stage = nullptr;
  return 1;
}

Session::~Session() {
  io::Timeouts::disarm(timer());
  if (ssl_)
    SSL_free(ssl_);
  worker_.buffers.release(cbuf_);
  if (x_) {
    // No handler can be pending in its slots: each would hold a reference.
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
  worker_.metrics->listeners.at(listener_->id).connections.add(-1);
  if (worker_.on_session_closed)
    worker_.on_session_closed(listener_->id);
  if (--worker_.session_count == 0 && worker_.draining && worker_.on_drained)
    asio::post(worker_.io, worker_.on_drained);
}

void Session::trim_if_idle() {
  if (ssl_ && timer_kind_ == Timer::idle && !cbuf_)
    SSL_free_buffers(ssl_);
}

void Session::close_if_idle() {
  keep_client_ = false;
  if (timer_kind_ == Timer::idle && c_len_ == 0)
    close();
}

void Session::close() {
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
  error_code ec;
  client_.close(ec);
  release_backend(false);
  worker_.buffers.release(cbuf_);
  cbuf_ = nullptr;
  c_len_ = c_parsed_ = 0;
}

// Closes after the last response without losing it: a close with unread
// request bytes would make the kernel send a reset that can destroy the
// response in the client's receive buffer. So: send FIN, discard what the
// client still sends (bounded in bytes and time), then close.
void Session::close_gracefully(bool request_read) {
  if (closed_)
    return;
  release_backend(false);
  if (ssl_) {
    SSL_shutdown(ssl_); // close_notify, best effort
  } else {
    // Nothing unread from a client whose request was read whole: a plain close
    // sends FIN, not a reset. (As nginx's lingering_close heuristics.)
    char probe;
    ssize_t pending = ::recv(fd_of(client_), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (pending < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && request_read)
      return close();
  }
  error_code ec;
  client_.shutdown(asio::socket_base::shutdown_send, ec);
  if (ec)
    return close();
  arm(Timer::linger);
  linger_read();
}

void Session::linger_read() {
  char sink[4096];
  for (;;) {
    ssize_t n = client_recv(sink, sizeof sink);
    if (n > 0) {
      lingered_ += static_cast<uint32_t>(n);
      if (lingered_ > (1u << 20))
        return close();
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait_then<&Session::linger_read>(client_, asio::socket_base::wait_read, client_read_slot_);
      return;
    }
    return close();
  }
}

// ---- Reading the request head ----------------------------------------------

void Session::do_read_request() {
  if (closed_)
    return;
  read_request_head();
}

void Session::read_request_head() {
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
      wait_then<&Session::read_request_head>(client_, asio::socket_base::wait_read,
                                             client_read_slot_);
      return;
    }
  }
  if (ssl_ && !handshake_done_) {
    int r = tls_handshake();
    if (r < 0)
      return close();
    if (r == 0)
      return;
  }
  for (;;) {
    if (c_parsed_ < c_len_) {
      char* data = cbuf_->data();
      auto r = x_->req_.feed(data + c_parsed_, data + c_len_);
      c_parsed_ = static_cast<uint32_t>(r.stop - data);
      if (r.event == http::Parser::Event::head_complete) {
        head_end_ = c_parsed_;
        return on_request_head();
      }
      if (r.event == http::Parser::Event::error) {
        keep_client_ = false;
        return respond_error(x_->req_.error_status(), x_->req_.error_reason(), true);
      }
    }
    // (Bytes parsed: an exchange holds the request.)
    if (c_parsed_ > http::max_target_bytes + 16 && !x_->req_.target_complete()) {
      keep_client_ = false;
      return respond_error(414, "request target longer than 8 KiB", true);
    }
    if (c_parsed_ > limits.max_header_bytes || (cbuf_ && c_len_ == cbuf_->capacity)) {
      keep_client_ = false;
      return respond_error(431, "request head larger than max_header_bytes", true);
    }
    if (!cbuf_)
      cbuf_ = worker_.buffers.acquire();
    ensure_exchange();
    ssize_t n = client_recv(cbuf_->data() + c_len_, cbuf_->capacity - c_len_);
    if (n > 0) {
      bool was_empty = c_len_ == 0;
      c_len_ += static_cast<uint32_t>(n);
      x_->bytes_in_ += static_cast<uint64_t>(n);
      if (c_parsed_ == 0)
        skip_empty_lines();
      if (was_empty && c_len_ > 0)
        arm(Timer::header);
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
    wait_then<&Session::read_request_head>(client_, asio::socket_base::wait_read,
                                           client_read_slot_);
    return;
  }
}

// Empty lines before a request line are ignored (RFC 9112 §2.2: some clients
// send CRLF after a body). They do not start a request: no header timer, and
// the idle timer is not renewed by them.
void Session::skip_empty_lines() {
  const char* data = cbuf_->data();
  uint32_t k = 0;
  while (k < c_len_ && (data[k] == '\r' || data[k] == '\n'))
    ++k;
  if (k == 0)
    return;
  std::memmove(cbuf_->data(), data + k, c_len_ - k);
  c_len_ -= k;
}

void Session::on_request_head() {
  x_->started_ = io::Clock::now();
  http::Head& head = x_->req_.head();

  // Request id: the client's if it sent one, else a new one.
  assign_request_id();

  keep_client_ = head.keep_alive && !worker_.draining;
  if (head_end_ > listener_->config.limits.max_header_bytes) {
    keep_client_ = false;
    return respond_error(431, "request head larger than max_header_bytes", true);
  }
  http::RequestLineCheck line = http::check_request_line(head);
  if (line.status) {
    keep_client_ = false;
    return respond_error(line.status, line.reason, true);
  }
  x_->authority_ = line.authority;
  uint64_t max_body = listener_->config.limits.max_body_bytes;
  if (max_body && head.has_content_length && head.content_length > max_body) {
    keep_client_ = false;
    return respond_error(413, "request body larger than max_body_bytes", true);
  }
  x_->upgrade_requested_ = mark_request_head(head, x_->authority_);

  adopt_runtime(); // a keep-alive connection follows reloads request by request
  int pool = listener_->router.match(head, x_->authority_.view(), &x_->route_);
  bool has_body = head.chunked || head.content_length > 0;

  // Body bytes that arrived with the head, up to the end of this message.
  auto r = x_->req_.feed(cbuf_->data() + c_parsed_, cbuf_->data() + c_len_);
  if (r.event == http::Parser::Event::error) {
    keep_client_ = false;
    return respond_error(400, x_->req_.error_reason(), true);
  }
  c_parsed_ = static_cast<uint32_t>(r.stop - cbuf_->data());
  msg_end_ = c_parsed_;
  x_->req_done_ = r.event == http::Parser::Event::message_complete;
  if (max_body && x_->req_.body_bytes() > max_body) {
    keep_client_ = false;
    return respond_error(413, "request body larger than max_body_bytes", true);
  }

  // Max-Forwards (RFC 9110 §7.6.2): an OPTIONS or TRACE that may go no
  // further is answered here, whatever the routes say; one that may goes on
  // with one hop less.
  x_->max_forwards_len_ = 0;
  if (std::optional<uint64_t> hops = max_forwards(head)) {
    if (*hops == 0) {
      if (has_body && !x_->req_done_)
        keep_client_ = false;
      return respond_final_recipient();
    }
    x_->max_forwards_len_ = static_cast<uint8_t>(
        std::snprintf(x_->max_forwards_, sizeof x_->max_forwards_, "Max-Forwards: %llu\r\n",
                      static_cast<unsigned long long>(*hops - 1)));
  }

  if (pool < 0) {
    if (has_body && !x_->req_done_)
      keep_client_ = false;
    return respond_error(404, "no route matches the request", !keep_client_);
  }
  x_->pool_ = runtime_->pools[static_cast<size_t>(pool)].get();
  const config::Pool& pc = x_->pool_->config();
  if (pc.maintenance)
    return respond_maintenance();
  // What the balancer may use: the hash key, the sticky cookie.
  x_->has_hash_ = false;
  if (pc.balance == config::Balance::ring_hash || pc.balance == config::Balance::maglev) {
    std::string_view key;
    switch (pc.hash_key.kind) {
    case config::HashKey::Kind::source_ip:
      key = client_ip();
      break;
    case config::HashKey::Kind::header:
      key = http::find_header(head, pc.hash_key.name);
      break;
    case config::HashKey::Kind::cookie:
      key = http::find_cookie(head, pc.hash_key.name);
      break;
    }
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

// ---- Choosing a backend and connecting ------------------------------------

void Session::do_attempt() {
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
    pm.retries.add();
  if (x_->retry_.attempts == 0 && x_->retry_.replays == 0 && x_->pool_->selection().fail_open) {
    pm.fail_open.add();
    x_->pool_->note_fail_open();
  }
  ++x_->retry_.attempts;
  ++attempt_;
  x_->backend_ = b;
  x_->active_backend_ = b;
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(b)];
  worker_.metrics->backends.at(backend.id).active.add(1);
  x_->resp_.reset();
  x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
  if (x_->retry_.attempts == 1)
    x_->upstream_started_ = io::Clock::now();
  x_->conn_ = worker_.connections.take(backend.id);
  // A reload may have changed the pool's tls settings: those are no use now.
  while (x_->conn_ && x_->conn_->tls.get() != x_->pool_->tls()) {
    delete x_->conn_;
    x_->conn_ = worker_.connections.take(backend.id);
  }
  x_->conn_reused_ = x_->conn_ != nullptr;
  if (x_->conn_reused_) {
    // A retry may come here with the failed attempt's connect timer still
    // armed (or none, after a connect timeout): time this exchange.
    arm(Timer::exchange);
    return do_send_request_head();
  }
  do_connect();
}

void Session::do_connect() {
  x_->conn_ = new upstream::Connection(worker_.io);
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(x_->backend_)];
  x_->conn_->backend = backend.id;
  x_->conn_->idle_timeout = x_->pool_->config().timeouts.idle;
  const auto& endpoint = backend.endpoint;
  error_code ec;
  x_->conn_->socket.open(endpoint.protocol(), ec);
  if (!ec)
    x_->conn_->socket.non_blocking(true, ec);
  if (ec)
    return backend_failed(Failure::connect, "cannot open a socket");
  arm(Timer::connect);
  x_->conn_->socket.async_connect(
      endpoint,
      in_slot(x_->backend_write_slot_,
              [self = Ref(this), a = attempt_](const error_code& e) { self->on_connect(e, a); }));
}

void Session::on_connect(const error_code& ec, uint32_t attempt) {
  if (closed_ || attempt != attempt_)
    return;
  if (ec) {
    std::snprintf(x_->reason_, sizeof x_->reason_, "connect to %s failed: %s",
                  x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                  ec.message().c_str());
    io::log("pool %s: %s", x_->pool_->name().c_str(), x_->reason_);
    backend_metrics().connect_errors.add();
    bool refused = ec == asio::error::connection_refused;
    x_->pool_->report(static_cast<size_t>(x_->backend_),
                      refused ? upstream::Outcome::refused : upstream::Outcome::connect_failure);
    return backend_failed(refused ? Failure::refused : Failure::connect, x_->reason_);
  }
  error_code ignored;
  x_->conn_->socket.set_option(asio::ip::tcp::no_delay(true), ignored);
  if (x_->pool_->config().tls.enabled)
    return start_backend_tls();
  arm(Timer::exchange);
  do_send_request_head();
}

// HTTPS toward the backend: the handshake runs under the connect timeout, and
// its failure counts as a failed connect (retried on another backend).
void Session::start_backend_tls() {
  const upstream::Backend& backend = x_->pool_->backends()[static_cast<size_t>(x_->backend_)];
  if (x_->pool_->tls()) {
    x_->conn_->tls = x_->pool_->shared_tls();
    x_->conn_->ssl = x_->pool_->tls()->connect(fd_of(x_->conn_->socket), backend.host_name,
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

void Session::backend_handshake() {
  ERR_clear_error();
  int r = SSL_do_handshake(x_->conn_->ssl);
  if (r == 1) {
    arm(Timer::exchange);
    return do_send_request_head();
  }
  int e = SSL_get_error(x_->conn_->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    x_->conn_->socket.async_wait(
        e == SSL_ERROR_WANT_READ ? asio::socket_base::wait_read : asio::socket_base::wait_write,
        in_slot(x_->backend_write_slot_, [self = Ref(this), a = attempt_](const error_code& ec) {
          if (self->closed_ || a != self->attempt_)
            return;
          if (ec)
            return self->backend_failed(Failure::connect, "backend connection failed");
          self->backend_handshake();
        }));
    return;
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

// ---- Sending the request ----------------------------------------------------

void Session::do_send_request_head() {
  const auto& headers_cfg = listener_->config.headers;
  RequestRules rules;
  rules.forwarded_for = headers_cfg.forwarded_for;
  rules.client_ip = client_ip();
  rules.https = ssl_ != nullptr;
  rules.via = headers_cfg.via;
  rules.authority = x_->authority_;
  rules.request_id_header = headers_cfg.request_id;
  rules.request_id = {x_->request_id_, x_->request_id_len_};
  rules.max_forwards_line = {x_->max_forwards_, x_->max_forwards_len_};
  rules.upgrade = x_->upgrade_requested_;
  Outbox& out = x_->to_backend_;
  bool ok = write_request_head(x_->req_.head(), rules, out);
  ok &= out.add(cbuf_->data() + head_end_, msg_end_ - head_end_);
  if (!ok) {
    keep_client_ = false;
    return respond_error(400, "request has too many header fields to forward", true);
  }
  x_->reading_response_ = false;
  do_write_backend();
}

void Session::do_write_backend() {
  uint64_t written = 0;
  int r = backend_write(x_->to_backend_, written);
  if (r > 0)
    return on_request_bytes_sent();
  if (r == 0) {
    x_->backend_writing_ = true;
    x_->conn_->socket.async_wait(
        write_wants_read_ ? asio::socket_base::wait_read : asio::socket_base::wait_write,
        in_slot(x_->backend_write_slot_, [self = Ref(this), a = attempt_](const error_code& ec) {
          self->on_backend_writable(ec, a);
        }));
    return;
  }
  if (x_->reading_response_)
    return stop_request_body();
  std::snprintf(x_->reason_, sizeof x_->reason_, "sending to %s failed: %s",
                x_->pool_->backends()[static_cast<size_t>(x_->backend_)].label.c_str(),
                std::strerror(errno));
  backend_failed(x_->u_len_ == 0 && !x_->resp_started_
                     ? (x_->conn_reused_ ? Failure::reused_early : Failure::before_response)
                     : Failure::backend,
                 x_->reason_);
}

void Session::on_backend_writable(const error_code& ec, uint32_t attempt) {
  if (closed_ || attempt != attempt_)
    return;
  x_->backend_writing_ = false;
  if (ec && x_->reading_response_)
    return stop_request_body();
  if (ec)
    return backend_failed(Failure::backend, "backend connection failed");
  arm(Timer::exchange);
  do_write_backend();
}

// The backend stopped taking the request body (it answered early and closed,
// or it failed) while its response is being read. The body is not sent on;
// the response decides: an answer still goes to the client whole (and the
// connection closes after it, the rest of the body unread), a failure is
// handled where the read fails.
void Session::stop_request_body() {
  x_->backend_writing_ = false;
  keep_client_ = false;
  x_->backend_keep_alive_ = false;
}

void Session::on_request_bytes_sent() {
  x_->backend_writing_ = false;
  if (x_->req_done_)
    x_->req_sent_ = true;
  if (!x_->reading_response_) {
    // Start reading the response from the event loop, not from inside this
    // write: the steps below must not run re-entrantly into the next request.
    x_->reading_response_ = true;
    asio::post(worker_.io, in_slot(x_->backend_read_slot_, [self = Ref(this), a = attempt_] {
                 if (!self->closed_ && a == self->attempt_)
                   self->do_read_response();
               }));
  }
  if (!x_->req_done_)
    return do_read_request_body();
  if (x_->resp_done_ && !x_->client_writing_ && !x_->answered_locally_)
    on_response_complete();
}

void Session::do_read_request_body() {
  // The body bytes after the head have been sent: reuse that room.
  if (msg_end_ > head_end_)
    x_->body_discarded_ = true;
  c_len_ = c_parsed_ = msg_end_ = head_end_;
  if (++x_->request_chain_ % 16 == 0) {
    // Bytes keep coming without blocking: continue from the event loop so the
    // stack does not grow with the body.
    asio::post(worker_.io,
               in_slot(client_read_slot_, [self = Ref(this), g = request_gen_, a = attempt_] {
                 if (!self->closed_ && g == self->request_gen_ && a == self->attempt_)
                   self->read_request_body();
               }));
    return;
  }
  read_request_body();
}

void Session::read_request_body() {
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
    // replay, which starts its own body pump): this wait is then stale and
    // does nothing.
    client_.async_wait(asio::socket_base::wait_read,
                       in_slot(client_read_slot_, [self = Ref(this), g = request_gen_,
                                                   a = attempt_](const error_code& ec) {
                         if (self->closed_ || g != self->request_gen_ || a != self->attempt_)
                           return;
                         if (ec)
                           return self->close();
                         self->read_request_body();
                       }));
    return;
  }
  arm(Timer::exchange);
  char* data = cbuf_->data();
  auto r = x_->req_.feed(data + c_parsed_, data + c_len_);
  if (r.event == http::Parser::Event::error) {
    keep_client_ = false;
    if (x_->resp_started_)
      return close();
    return respond_error(400, x_->req_.error_reason(), true);
  }
  uint64_t max_body = listener_->config.limits.max_body_bytes;
  if (max_body && x_->req_.body_bytes() > max_body) {
    keep_client_ = false;
    if (x_->resp_started_)
      return close();
    return respond_error(413, "request body larger than max_body_bytes", true);
  }
  c_parsed_ = static_cast<uint32_t>(r.stop - data);
  uint32_t from = msg_end_;
  msg_end_ = c_parsed_;
  x_->req_done_ = r.event == http::Parser::Event::message_complete;
  x_->to_backend_.clear();
  x_->to_backend_.add(data + from, msg_end_ - from);
  do_write_backend();
}

// ---- Receiving the response -------------------------------------------------

void Session::do_read_response() { read_response(); }

void Session::on_backend_readable(const error_code& ec, uint32_t attempt) {
  if (closed_ || attempt != attempt_)
    return;
  if (ec)
    return backend_failed(Failure::backend, "backend connection failed");
  read_response();
}

void Session::read_response() {
  for (;;) {
    if (!x_->ubuf_)
      x_->ubuf_ = worker_.buffers.acquire();
    if (x_->u_len_ == x_->ubuf_->capacity) {
      // Only a head can fill the buffer (a body is sent on as it comes).
      return backend_failed(Failure::backend, "response head too large");
    }
    ssize_t n = backend_recv(x_->ubuf_->data() + x_->u_len_, x_->ubuf_->capacity - x_->u_len_);
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
      x_->conn_->socket.async_wait(
          asio::socket_base::wait_read,
          in_slot(x_->backend_read_slot_, [self = Ref(this), a = attempt_](const error_code& ec) {
            self->on_backend_readable(ec, a);
          }));
      return;
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

void Session::parse_response() {
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

void Session::on_response_head() {
  http::Head& head = x_->resp_.head();
  const bool client_http10 = x_->req_.head().minor == 0;
  ResponseShape shape = mark_response_head(head, client_http10);
  if (shape.interim && client_http10) {
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
    x_->status_ = 101;
    x_->upstream_ms_ = ms_between(x_->upstream_started_, io::Clock::now());
    x_->tunnel_pending_ = true;
  } else if (shape.interim) {
    x_->in_response_head_ = true;
  } else {
    x_->in_response_head_ = false;
    x_->status_ = head.status;
    x_->upstream_ms_ = ms_between(x_->upstream_started_, io::Clock::now());
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

void Session::do_write_client() {
  int r = client_write(x_->to_client_, x_->bytes_out_);
  if (r > 0)
    return on_response_bytes_sent();
  if (r == 0) {
    x_->client_writing_ = true;
    client_.async_wait(
        write_wants_read_ ? asio::socket_base::wait_read : asio::socket_base::wait_write,
        in_slot(x_->client_write_slot_,
                [self = Ref(this)](const error_code& ec) { self->on_client_writable(ec); }));
    return;
  }
  close(); // the client is gone
}

void Session::on_client_writable(const error_code& ec) {
  if (closed_)
    return;
  x_->client_writing_ = false;
  if (ec)
    return close();
  if (timer_kind_ == Timer::exchange)
    arm(Timer::exchange);
  do_write_client();
}

void Session::on_response_bytes_sent() {
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
  // Head and body so far are sent: the whole buffer is free for more body.
  x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
  if (++x_->response_chain_ % 16 == 0) {
    asio::post(worker_.io, in_slot(x_->backend_read_slot_, [self = Ref(this), a = attempt_] {
                 if (!self->closed_ && a == self->attempt_)
                   self->read_response();
               }));
    return;
  }
  read_response();
}

void Session::on_response_complete() {
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

// ---- The queue (circuit breaker) ------------------------------------------------

void Session::retry_queued() {
  if (closed_ || !x_ || !x_->queued_)
    return;
  do_attempt();
}

void Session::leave_queue() {
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

void Session::respond_maintenance() {
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

// ---- Tunnels -------------------------------------------------------------------

void Session::start_tunnel() {
  x_->tunnel_pending_ = false;
  x_->tunnel_ = true;
  finish_request_log();
  x_->started_ = {}; // logged: the tunnel's end is not another request
  arm(Timer::tunnel);
  // What either side sent after the switch is already in the buffers.
  x_->to_backend_.clear();
  if (cbuf_)
    x_->to_backend_.add(cbuf_->data() + msg_end_, c_len_ - msg_end_);
  x_->to_client_.clear();
  x_->to_client_.add(x_->ubuf_->data() + x_->u_parsed_, x_->u_len_ - x_->u_parsed_);
  pump_up();
  if (!closed_)
    pump_down();
}

void Session::pump_up() {
  for (int budget = 0; !closed_; ++budget) {
    if (!x_->to_backend_.empty()) {
      uint64_t written = 0;
      int r = backend_write(x_->to_backend_, written);
      if (r < 0)
        return close();
      if (r == 0) {
        wait_then<&Session::pump_up>(x_->conn_->socket, asio::socket_base::wait_write,
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
      wait_then<&Session::pump_up>(client_, asio::socket_base::wait_read, client_read_slot_);
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

void Session::pump_down() {
  for (int budget = 0; !closed_; ++budget) {
    if (!x_->to_client_.empty()) {
      int r = client_write(x_->to_client_, x_->bytes_out_);
      if (r < 0)
        return close();
      if (r == 0) {
        wait_then<&Session::pump_down>(client_, asio::socket_base::wait_write,
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
      wait_then<&Session::pump_down>(x_->conn_->socket, asio::socket_base::wait_read,
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

void Session::tunnel_half_closed() {
  if (x_->up_done_ && x_->down_done_)
    close();
}

// ---- Ends ---------------------------------------------------------------------

void Session::backend_failed(Failure failure, const char* reason) {
  release_backend(false);
  if (closed_)
    return;
  RetryRequest request{idempotent(x_->req_.head().method.view()), x_->body_discarded_};
  RetryLimits limits{x_->pool_->config().retries, x_->pool_->backends().size(), x_->tried_.full()};
  switch (after_failure(failure, request, limits, x_->retry_)) {
  case Retry::replay:
    // The backend closed a pooled connection as we reused it: not its fault.
    x_->tried_.remove(static_cast<size_t>(x_->backend_));
    return do_attempt();
  case Retry::another_backend:
    return do_attempt();
  case Retry::none:
    break;
  }
  if (x_->resp_started_)
    return close();
  respond_error(502, reason, !x_->req_done_ || x_->backend_writing_);
}

void Session::respond_final_recipient() {
  if (!x_->req_done_)
    keep_client_ = false; // its body is not read: the connection cannot go on
  x_->status_ = 200;
  // A TRACE's echo refers to the request's bytes: they stay in the read
  // buffer until the request is logged, after this answer.
  if (!write_final_recipient(x_->req_.head(), keep_client_, x_->answer_, x_->to_client_))
    return respond_error(400, "request has too many header fields to echo", true);
  send_local_answer();
}

void Session::send_local_answer() {
  x_->resp_started_ = true;
  x_->answered_locally_ = true;
  // Whatever timer ran (a connect or queue timer of the request) has no say
  // over this answer any more.
  arm(Timer::answer);
  do_write_client();
}

void Session::respond_error(int status, const char* reason, bool close_after) {
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
  ErrorAnswer answer;
  answer.status = status;
  answer.reason = reason ? reason : "";
  answer.request_id = request_id();
  answer.keep_alive = keep_client_;
  const http::Head& req = x_->req_.head();
  answer.head_request = req.start && req.method.view() == "HEAD";
  write_error(answer, x_->answer_, x_->to_client_);
  send_local_answer();
}

void Session::count_bytes() {
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

void Session::release_backend(bool reusable) {
  ++attempt_; // handlers of this attempt must ignore what they see
  if (!x_)
    return;
  if (x_->active_backend_ >= 0 && x_->pool_) {
    worker_.metrics->backends.at(x_->pool_->backends()[static_cast<size_t>(x_->active_backend_)].id)
        .active.add(-1);
    if (x_->acquired_)
      x_->pool_->release(static_cast<size_t>(x_->active_backend_));
    x_->active_backend_ = -1;
  }
  x_->acquired_ = false;
  if (x_->conn_) {
    if (reusable && !closed_) {
      ++x_->conn_->requests;
      worker_.connections.put(x_->conn_);
    } else {
      delete x_->conn_;
    }
    x_->conn_ = nullptr;
  }
  worker_.buffers.release(x_->ubuf_);
  x_->ubuf_ = nullptr;
  x_->u_len_ = x_->u_parsed_ = x_->u_sent_ = 0;
  x_->backend_writing_ = false;
  x_->reading_response_ = false;
}

void Session::finish_request() {
  finish_request_log();
  finish_request_state();
}

void Session::finish_request_log() {
  if (x_->status_) {
    WorkerMetrics& m = *worker_.metrics;
    m.listeners.at(listener_->id).requests.at(x_->pool_ ? x_->pool_->id() + 1 : 0).add(x_->status_);
    if (x_->pool_ && x_->started_ != io::Clock::time_point{})
      m.pools.at(x_->pool_->id())
          .duration.observe(std::chrono::duration<double>(io::Clock::now() - x_->started_).count());
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
    rec.status = x_->status_;
    rec.bytes_in = x_->bytes_in_;
    rec.bytes_out = x_->bytes_out_;
    rec.upstream_ms = x_->upstream_ms_;
    rec.total_ms =
        x_->started_ == io::Clock::time_point{} ? 0 : ms_between(x_->started_, io::Clock::now());
    worker_.access_log.write(rec);
  }
}

// A reload or DNS change published a new snapshot: the next request uses it
// (this one keeps what it started with). False when the new snapshot lacks
// this connection's listener: it keeps the old one until it closes.
bool Session::adopt_runtime() {
  if (runtime_ == worker_.runtime)
    return true;
  const ListenerRuntime* now = worker_.runtime->listener_by_id(listener_->id);
  if (!now)
    return false;
  runtime_ = worker_.runtime;
  listener_ = now;
  // The parser looks for the request id header by the listener's name for it.
  if (x_)
    x_->req_.set_request_id_header(listener_->config.headers.request_id);
  return true;
}

void Session::finish_request_state() {
  ++request_gen_; // handlers still waiting for this request's body ignore what they see
  // Nothing may read this request's head from now on: its spans point into a
  // buffer that goes back to the worker's free list.
  x_->req_.head().clear();
  bool keep = keep_client_ && !closed_ && x_->req_done_ && !worker_.draining;
  bool request_read = x_->req_done_;
  // Per-request state back to its start (a backend still held is let go).
  release_backend(false);
  worker_.buffers.release(x_->client_tls_stage_);
  worker_.buffers.release(x_->backend_tls_stage_);
  x_->reset_fields();
  // A listener the newest config no longer has closes its connections.
  if (!adopt_runtime())
    keep = false;
  if (!keep)
    return close_gracefully(request_read);

  // A pipelined request may already be in the buffer: move it to the front.
  uint32_t left = c_len_ - msg_end_;
  if (left) {
    std::memmove(cbuf_->data(), cbuf_->data() + msg_end_, left);
    x_->bytes_in_ = x_->counted_in_ = left; // already counted in the metrics with the last request
    arm(Timer::header);
  } else {
    worker_.buffers.release(cbuf_);
    cbuf_ = nullptr;
    release_exchange();
    arm(Timer::idle);
  }
  c_len_ = left;
  c_parsed_ = head_end_ = msg_end_ = 0;
  keep_client_ = true;
  if (!left && !ssl_) {
    // The response has just gone out, so a read now would almost always find
    // nothing: wait for the next request instead of trying first. (A TLS
    // connection may hold decrypted bytes the socket no longer signals.)
    return wait_then<&Session::read_request_head>(client_, asio::socket_base::wait_read,
                                                  client_read_slot_);
  }
  if (++serve_chain_ % 8 == 0) {
    // The next request is here already (pipelined, or TLS bytes): requests lb
    // answers itself would otherwise run one inside the other, with no bound
    // on the stack. Every few, continue from the event loop.
    asio::post(worker_.io,
               in_slot(client_read_slot_, [self = Ref(this)] { self->do_read_request(); }));
    return;
  }
  do_read_request();
}

// ---- Timeouts -------------------------------------------------------------------

void Session::arm(Timer t) {
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
  worker_.timeouts.arm(timer(), d);
}

void Session::on_timeout(io::Timeouts::Entry* e) {
  Session* s = static_cast<Session*>(e);
  Ref self(s);
  s->timed_out();
}

void Session::timed_out() {
  if (closed_)
    return;
  Timer kind = timer_kind_;
  timer_kind_ = Timer::none;
  switch (kind) {
  case Timer::none:
  case Timer::idle:
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
                  x_->conn_ && x_->conn_->ssl ? "TLS handshake with %s timed out"
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
    keep_client_ = false;
    if (!x_->req_done_)
      return respond_error(408, "request body not received in time", true);
    return respond_error(504, "backend did not respond within timeouts.response", true);
  }
}

// "Keep-Alive: timeout=5, max=100": retire the connection a little before the
// backend closes it, so a request is never sent into that close.
void Session::learn_keep_alive(std::string_view v) {
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
  x_->conn_->retire_at = io::Clock::now() + budget - margin;
}

void Session::assign_request_id() {
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

std::string_view Session::request_id() const {
  if (x_->request_id_len_)
    return {x_->request_id_, x_->request_id_len_};
  if (const http::Header* h = x_->req_.head().find(http::Field::request_id))
    return h->value.view();
  return "-";
}

} // namespace lb::proxy
