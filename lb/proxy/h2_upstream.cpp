#include "lb/proxy/h2_upstream.hpp"

#include "lb/proxy/client_connection_impl.hpp"
#include "lb/proxy/h2_fields.hpp"
#include "lb/proxy/local_answer.hpp"

#include <openssl/err.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace lb::proxy {

namespace {

// Request body bytes a stream holds for the backend's window.
constexpr size_t max_pending_body = 64 * 1024;
// Each stream's receive window: what lb holds per stream of a response the
// client does not take yet. The connection's is opened as bytes arrive.
constexpr int32_t stream_window = 256 * 1024;
constexpr int32_t connection_window = 16 * 1024 * 1024;
// Streams per connection before the backend's SETTINGS say how many.
constexpr uint32_t assumed_max_streams = 100;

template <class T> void release_memory(T& s) {
  if (s.capacity() > 64 * 1024)
    T().swap(s);
  else
    s.clear();
}

} // namespace

// ---- One connection: a socket (TLS for h2), an nghttp2 client session.

class H2Connection {
public:
  H2Connection(H2Client& client, uint32_t backend, std::shared_ptr<const io::TlsClient> tls,
               std::chrono::milliseconds idle_timeout);
  ~H2Connection();
  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;

  int start(const upstream::Backend& b, std::string& why);
  void failed_to_connect(int error, std::string why);
  bool open() const { return state_ == State::open; }
  const upstream::Backend& target() const { return target_; }
  const std::shared_ptr<const io::TlsClient>& tls() const { return tls_; }
  std::chrono::milliseconds idle_timeout() const { return idle_timeout_; }
  bool usable(const io::TlsClient* tls) const {
    return state_ != State::dead && !goaway_ && tls == tls_.get();
  }
  // How many streams it takes at once (the backend's SETTINGS, or assumed).
  uint32_t limit() const {
    if (!settings_seen_)
      return assumed_max_streams;
    return std::min<uint32_t>(
        nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS),
        1000);
  }
  uint32_t room() const { return limit() > streams_ ? limit() - streams_ : 0; }
  void attach(H2Call* c);
  void detach(H2Call* c);
  // Frames to send: written on the loop's next pass (several streams' at once).
  void want_flush() {
    if (state_ == State::open)
      client_.loop_.schedule(watch_);
  }
  void stop_new_streams() { goaway_ = true; }
  bool idle_for(io::Clock::time_point now) const {
    return streams_ == 0 && now - idle_since_ >= idle_timeout_;
  }
  uint32_t streams() const { return streams_; }
  // Ends the connection: its calls fail; `this` is deleted.
  void close(bool reset);
  nghttp2_session* session() const { return session_; }
  uint32_t backend() const { return backend_; }
  uint64_t served() const { return served_; }
  const std::string& label() const { return label_; }

private:
  // settings: connected (and TLS done), the preface sent, the backend's
  // SETTINGS awaited (how many streams it takes).
  enum class State : uint8_t { connecting, handshake, settings, open, dead };
  static void on_event(void* self, uint32_t events);
  void event();
  void connected();
  void handshake();
  void start_settings();
  void up();
  bool read();
  bool flush();
  ssize_t sock_recv(char* p, size_t n);
  ssize_t sock_send(const char* p, size_t n);

  static ssize_t on_send(nghttp2_session*, const uint8_t*, size_t, int, void*);
  static int on_header(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                       const uint8_t*, size_t, uint8_t, void*);
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame*, void*);
  static int on_data_chunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*);
  static int on_stream_close(nghttp2_session*, int32_t, uint32_t, void*);

  H2Client& client_;
  io::Watch watch_;
  State state_ = State::connecting;
  SSL* ssl_ = nullptr;
  std::shared_ptr<const io::TlsClient> tls_;
  nghttp2_session* session_ = nullptr;
  uint32_t backend_ = 0;
  H2Call* calls_ = nullptr;
  uint32_t streams_ = 0;
  uint64_t served_ = 0;
  bool goaway_ = false;
  std::chrono::milliseconds idle_timeout_;
  io::Clock::time_point idle_since_{};
  bool settings_seen_ = false; // the backend's SETTINGS came
  std::string label_;          // the backend's host:port
  upstream::Backend target_;   // where it connects (for calls moved to another connection)
  std::string out_;            // frames the socket did not take yet
  size_t out_off_ = 0;
};

H2Connection::H2Connection(H2Client& client, uint32_t backend,
                           std::shared_ptr<const io::TlsClient> tls,
                           std::chrono::milliseconds idle_timeout)
    : client_(client), tls_(std::move(tls)), backend_(backend), idle_timeout_(idle_timeout) {
  watch_.handler = &H2Connection::on_event;
  watch_.owner = this;
  idle_since_ = client_.loop_.now();
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_send_callback(cb, &H2Connection::on_send);
  nghttp2_session_callbacks_set_on_header_callback(cb, &H2Connection::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &H2Connection::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &H2Connection::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &H2Connection::on_stream_close);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_session_client_new2(&session_, cb, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                       {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, stream_window}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 2);
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, connection_window);
  client_.counted(backend_, +1);
}

H2Connection::~H2Connection() {
  nghttp2_session_del(session_);
  if (ssl_)
    SSL_free(ssl_);
  client_.loop_.close(watch_);
  client_.counted(backend_, -1);
}

// Starts the connect: 0, or the errno of a connect that failed at once
// (with `why` for TLS).
int H2Connection::start(const upstream::Backend& b, std::string& why) {
  label_ = b.label;
  target_ = b;
  const auto& endpoint = b.endpoint;
  int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return errno;
  watch_.fd = fd;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (tls_) {
    ssl_ = tls_->connect(fd, b.host_name, endpoint.address().to_string());
    if (!ssl_) {
      why = "TLS cannot be set up";
      return ENOMEM;
    }
  }
  // (A connect that completes at once is writable when added: EPOLLOUT comes.)
  if (::connect(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) != 0 &&
      errno != EINPROGRESS)
    return errno;
  if (!client_.loop_.add(watch_))
    return errno;
  return 0;
}

void H2Connection::attach(H2Call* c) {
  c->conn_ = this;
  c->reused_ = served_ > 0;
  c->prev_ = nullptr;
  c->next_ = calls_;
  if (calls_)
    calls_->prev_ = c;
  calls_ = c;
  ++streams_;
  ++served_;
}

void H2Connection::detach(H2Call* c) {
  if (c->prev_)
    c->prev_->next_ = c->next_;
  else
    calls_ = c->next_;
  if (c->next_)
    c->next_->prev_ = c->prev_;
  c->prev_ = c->next_ = nullptr;
  c->conn_ = nullptr;
  if (c->id_ > 0 && state_ != State::dead) {
    nghttp2_session_set_stream_user_data(session_, c->id_, nullptr);
    // A stream still open (its response not whole, or its request not: a
    // backend that answered early) is reset, so that it stops counting
    // against the backend's concurrent streams.
    if (!c->stream_closed_)
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, c->id_, NGHTTP2_CANCEL);
  }
  if (--streams_ == 0) {
    idle_since_ = client_.loop_.now();
    // Nobody waits for a connection that is not up yet, or one that is going.
    if (state_ != State::open || goaway_)
      return close(false);
  }
  want_flush();
}

void H2Connection::close(bool reset) {
  if (state_ == State::settings) {
    // Connected, but no HTTP/2 came back: a connect that failed, for the
    // calls (which sent nothing).
    for (H2Call* c = calls_; c; c = c->next_)
      if (!c->error_) {
        c->error_ = EPROTO;
        c->failure_ = "no HTTP/2 SETTINGS from the backend (not an HTTP/2 server?)";
      }
  }
  state_ = State::dead;
  for (H2Call* c = calls_; c;) {
    H2Call* next = c->next_;
    c->prev_ = c->next_ = nullptr;
    c->conn_ = nullptr;
    // A stream whose HEADERS never went out never reached the backend.
    if (!c->final_head_ && c->status_ == 0 && !c->stream_closed_ &&
        (c->id_ <= 0 || !nghttp2_session_find_stream(session_, c->id_)))
      c->refused_ = true;
    c->fail(reset);
    c = next;
  }
  calls_ = nullptr;
  client_.forget(this);
  delete this;
}

void H2Connection::on_event(void* self, uint32_t) { static_cast<H2Connection*>(self)->event(); }

void H2Connection::event() {
  switch (state_) {
  case State::connecting:
    if (watch_.out_ready || watch_.hangup) {
      int error = 0;
      socklen_t len = sizeof error;
      if (::getsockopt(watch_.fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
        error = errno;
      if (error)
        return failed_to_connect(error, "");
      connected();
    }
    return;
  case State::handshake:
    return handshake();
  case State::dead:
    return;
  case State::settings:
  case State::open:
    break;
  }
  if (!read())
    return; // closed
  if (state_ == State::settings && settings_seen_)
    up();
  if (!flush())
    return;
  if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_) &&
      out_off_ == out_.size())
    close(false);
}

void H2Connection::connected() {
  if (!ssl_)
    return start_settings();
  state_ = State::handshake;
  handshake();
}

// The preface and lb's SETTINGS go out; the streams wait for the backend's
// SETTINGS, which say how many it takes at once.
void H2Connection::start_settings() {
  state_ = State::settings;
  event();
}

void H2Connection::handshake() {
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    const unsigned char* alpn = nullptr;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
    if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0)
      return failed_to_connect(EPROTO, "the backend did not choose h2 by ALPN");
    return start_settings();
  }
  int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ) {
    watch_.drained();
    return;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    watch_.blocked();
    return;
  }
  failed_to_connect(ECONNRESET, "TLS handshake: " + io::TlsClient::failure(ssl_));
}

// The backend's SETTINGS came: as many waiting streams as it takes go on
// this connection, the others to another one (they have sent nothing yet).
void H2Connection::up() {
  state_ = State::open;
  uint32_t keep = std::max<uint32_t>(limit(), 1);
  for (H2Call* c = calls_; c;) {
    H2Call* next = c->next_;
    if (keep) {
      --keep;
      c->wake(false, true);
    } else {
      client_.move(c, *this);
    }
    c = next;
  }
}

void H2Connection::failed_to_connect(int error, std::string why) {
  for (H2Call* c = calls_; c; c = c->next_) {
    c->error_ = error;
    c->failure_ = why;
  }
  close(false);
}

// Reads as the exchange reads its sockets (client_connection_impl.hpp): the
// readiness kept in the watch, a short read means drained.
ssize_t H2Connection::sock_recv(char* p, size_t n) {
  return ssl_ ? tls_recv(watch_, ssl_, p, n) : plain_recv(watch_, p, n);
}

ssize_t H2Connection::sock_send(const char* p, size_t n) {
  if (!watch_.out_ready) {
    errno = EAGAIN;
    return -1;
  }
  if (!ssl_) {
    ssize_t r = ::send(watch_.fd, p, n, MSG_NOSIGNAL);
    if (r < 0 ? errno == EAGAIN || errno == EWOULDBLOCK : static_cast<size_t>(r) < n)
      watch_.blocked();
    return r;
  }
  ERR_clear_error();
  int r = SSL_write(ssl_, p, static_cast<int>(std::min<size_t>(n, 1 << 30)));
  if (r > 0)
    return r;
  switch (SSL_get_error(ssl_, r)) {
  case SSL_ERROR_WANT_WRITE:
    watch_.blocked();
    errno = EAGAIN;
    return -1;
  case SSL_ERROR_WANT_READ:
    watch_.drained();
    errno = EAGAIN;
    return -1;
  default:
    errno = EPIPE;
    return -1;
  }
}

// Reads what the socket has and gives it to nghttp2. False when the
// connection ended (and `this` is gone).
bool H2Connection::read() {
  char buf[16384];
  for (;;) {
    ssize_t n = sock_recv(buf, sizeof buf);
    if (n > 0) {
      ssize_t used = nghttp2_session_mem_recv(session_, reinterpret_cast<uint8_t*>(buf),
                                              static_cast<size_t>(n));
      if (used < 0) {
        close(true);
        return false;
      }
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return true;
    // The backend closed the connection (0) or it failed: streams not answered end.
    close(n < 0);
    return false;
  }
}

// Writes what nghttp2 has to send. False when the connection ended.
bool H2Connection::flush() {
  for (;;) {
    if (out_off_ < out_.size()) {
      ssize_t n = sock_send(out_.data() + out_off_, out_.size() - out_off_);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN)
          return true; // the next EPOLLOUT
        close(true);
        return false;
      }
      out_off_ += static_cast<size_t>(n);
      if (out_off_ < out_.size())
        continue;
      out_.clear();
      out_off_ = 0;
    }
    const uint8_t* data = nullptr;
    ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      close(true);
      return false;
    }
    if (n == 0)
      return true;
    out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    // Several frames gathered into one write, up to 64 KiB.
    while (out_.size() < 64 * 1024) {
      n = nghttp2_session_mem_send(session_, &data);
      if (n <= 0)
        break;
      out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
  }
}

ssize_t H2Connection::on_send(nghttp2_session*, const uint8_t*, size_t, int, void*) {
  return NGHTTP2_ERR_CALLBACK_FAILURE; // (mem_send is used)
}

int H2Connection::on_header(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name,
                            size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void*) {
  if (frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  auto* c = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, frame->hd.stream_id));
  if (!c)
    return 0;
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":status") {
    c->status_ = 0;
    for (char ch : v)
      c->status_ = c->status_ * 10 + (ch - '0');
    return 0;
  }
  if (n.starts_with(":"))
    return 0;
  if (n == "grpc-status") {
    int code = 0;
    for (char ch : v)
      code = ch >= '0' && ch <= '9' && code < 1000 ? code * 10 + (ch - '0') : code;
    c->grpc_status_ = code;
  }
  if (!c->final_head_ && n == "content-length")
    c->has_length_ = true;
  if (c->final_head_ && !c->chunked_)
    return 0; // trailers after a body with a length: HTTP/1.1 cannot carry them
  c->fields_.append(n).append(": ").append(v).append("\r\n");
  return 0;
}

int H2Connection::on_frame_recv(nghttp2_session* s, const nghttp2_frame* frame, void* user) {
  auto* conn = static_cast<H2Connection*>(user);
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    conn->goaway_ = true;
    return 0;
  }
  if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
    conn->settings_seen_ = true;
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
    return 0;
  auto* c = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, frame->hd.stream_id));
  if (!c)
    return 0;
  bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (frame->hd.type == NGHTTP2_HEADERS) {
    if (!c->final_head_)
      c->head_done(end);
    else
      c->trailers_done();
  } else if (end && !c->ended_) {
    if (c->chunked_)
      c->in_.append("0\r\n\r\n");
    c->ended();
  }
  return 0;
}

int H2Connection::on_data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data,
                                size_t len, void*) {
  nghttp2_session_consume_connection(s, len);
  auto* c = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, id));
  if (!c || !len) {
    if (!c)
      nghttp2_session_consume_stream(s, id, len);
    return 0;
  }
  if (c->in_off_ == c->in_.size()) {
    c->in_.clear();
    c->in_off_ = 0;
  }
  if (c->chunked_)
    append_hex(c->in_, len);
  c->in_.append(reinterpret_cast<const char*>(data), len);
  if (c->chunked_)
    c->in_.append("\r\n");
  c->unconsumed_ += len;
  c->wake(true, false);
  return 0;
}

int H2Connection::on_stream_close(nghttp2_session* s, int32_t id, uint32_t error, void*) {
  auto* c = static_cast<H2Call*>(nghttp2_session_get_stream_user_data(s, id));
  if (!c)
    return 0;
  c->stream_closed_ = true;
  if (c->ended_)
    return 0;
  // Ended before the response did: refused (never processed) or reset.
  c->refused_ = error == NGHTTP2_REFUSED_STREAM && !c->final_head_ && c->status_ == 0;
  c->reset_ = true;
  c->wake(true, true);
  return 0;
}

// ---- The call.

bool H2Call::pending() const { return conn_ && !conn_->open(); }

void H2Call::wake(bool in, bool out) {
  if (!watch_)
    return;
  if (in)
    watch_->in_ready = true;
  if (out)
    watch_->out_ready = true;
  loop_->schedule(*watch_);
}

void H2Call::fail(bool reset) {
  if (ended_)
    return;
  if (reset)
    reset_ = true;
  else
    eof_ = true;
  wake(true, true);
}

void H2Call::clear() {
  conn_ = nullptr;
  watch_ = nullptr;
  id_ = -1;
  error_ = 0;
  failure_.clear();
  release_memory(head_);
  release_memory(body_);
  body_off_ = 0;
  req_trailers_.clear();
  chunks_.reset();
  body_left_ = 0;
  body_kind_ = Body::none;
  head_sent_ = body_done_ = deferred_ = send_waits_ = false;
  release_memory(in_);
  in_off_ = 0;
  fields_.clear();
  unconsumed_ = 0;
  status_ = 0;
  grpc_status_ = -1;
  has_length_ = final_head_ = chunked_ = ended_ = reset_ = eof_ = refused_ = reused_ = false;
  stream_closed_ = head_request_ = false;
}

// The head lb wrote (its own, so well-formed): "POST /path HTTP/1.1\r\n" and
// "Name: value\r\n" lines, names lowered in place, submitted as HEADERS.
bool H2Call::submit_head() {
  char* h = head_.data();
  char* end = h + head_.size() - 2; // the fields end before the empty line
  char* line_end = static_cast<char*>(std::memchr(h, '\r', head_.size()));
  char* sp1 = static_cast<char*>(std::memchr(h, ' ', static_cast<size_t>(line_end - h)));
  errno = EPROTO;
  if (!sp1)
    return false;
  char* sp2 =
      static_cast<char*>(std::memchr(sp1 + 1, ' ', static_cast<size_t>(line_end - sp1 - 1)));
  if (!sp2)
    return false;
  std::string_view method(h, static_cast<size_t>(sp1 - h));
  head_request_ = method == "HEAD";
  std::string_view target(sp1 + 1, static_cast<size_t>(sp2 - sp1 - 1));
  constexpr size_t max_fields = 128;
  nghttp2_nv list[max_fields + 6];
  bool chunked = false;
  size_t n = 4 + fields_to_nv(line_end + 2, end, list + 4, max_fields + 1, chunked);
  if (n > 4 + max_fields) {
    errno = E2BIG;
    return false;
  }
  // Host becomes :authority; Content-Length or chunked says how the body ends.
  std::string_view authority;
  body_kind_ = chunked ? Body::chunked : Body::none;
  for (size_t i = 4; i < n;) {
    std::string_view name = name_of(list[i]);
    if (name == "host") {
      authority = value_of(list[i]);
      std::memmove(list + i, list + i + 1, (n - i - 1) * sizeof list[0]);
      --n;
      continue;
    }
    if (name == "content-length" && !chunked) {
      body_kind_ = Body::length;
      body_left_ = 0;
      for (char ch : value_of(list[i]))
        if (ch >= '0' && ch <= '9')
          body_left_ = body_left_ * 10 + static_cast<uint64_t>(ch - '0');
    }
    ++i;
  }
  if (body_kind_ == Body::length && body_left_ == 0)
    body_kind_ = Body::none;
  list[0] = nv(":method", method);
  list[1] = nv(":scheme", tls_scheme_ ? "https" : "http");
  // (RFC 9113 §8.3.1: never empty; a request without Host names the backend.)
  list[2] = nv(":authority", authority.empty() ? std::string_view(conn_->label()) : authority);
  list[3] = nv(":path", target);
  // lb takes trailers (and gRPC servers ask for this).
  list[n++] = nv("te", "trailers");
  nghttp2_data_provider provider{};
  provider.source.ptr = this;
  provider.read_callback = &read_body;
  int32_t id = nghttp2_submit_request(conn_->session(), nullptr, list, n,
                                      body_kind_ == Body::none ? nullptr : &provider, this);
  if (id < 0) {
    conn_->stop_new_streams(); // (stream ids used up)
    errno = ECONNRESET;
    return false;
  }
  id_ = id;
  head_sent_ = true;
  body_done_ = body_kind_ == Body::none;
  conn_->want_flush();
  return true;
}

void H2Call::take_body(const char* p, size_t n) {
  if (body_off_ == body_.size()) {
    body_.clear();
    body_off_ = 0;
  }
  if (body_kind_ == Body::length) {
    size_t take = static_cast<size_t>(std::min<uint64_t>(body_left_, n));
    body_.append(p, take);
    body_left_ -= take;
    body_done_ = body_left_ == 0;
  } else if (body_kind_ == Body::chunked) {
    chunks_.feed(p, n, body_, req_trailers_);
    body_done_ = chunks_.done();
  }
  if (deferred_ && (body_off_ < body_.size() || body_done_)) {
    deferred_ = false;
    nghttp2_session_resume_data(conn_->session(), id_);
  }
  conn_->want_flush();
}

ssize_t H2Call::send(const char* p, size_t n) {
  if (!conn_ || reset_ || eof_) {
    errno = reset_ || eof_ ? ECONNRESET : EPIPE;
    return -1;
  }
  size_t taken = 0;
  if (!head_sent_) {
    size_t before = head_.size();
    head_.append(p, n);
    size_t at = head_.find("\r\n\r\n", before >= 3 ? before - 3 : 0);
    if (at == std::string::npos)
      return static_cast<ssize_t>(n);
    head_.resize(at + 4);
    taken = at + 4 - before;
    if (!submit_head())
      return -1; // (errno set)
    p += taken;
    n -= taken;
  }
  if (n == 0 || body_done_)
    return static_cast<ssize_t>(taken + n); // (nothing follows a complete body)
  size_t pending = body_.size() - body_off_;
  if (pending >= max_pending_body) {
    if (taken)
      return static_cast<ssize_t>(taken);
    send_waits_ = true;
    watch_->out_ready = false;
    errno = EAGAIN;
    return -1;
  }
  size_t take = std::min(n, max_pending_body - pending);
  take_body(p, take);
  return static_cast<ssize_t>(taken + take);
}

ssize_t H2Call::recv(char* p, size_t n) {
  size_t have = in_.size() - in_off_;
  if (have) {
    size_t take = std::min(have, n);
    std::memcpy(p, in_.data() + in_off_, take);
    in_off_ += take;
    if (in_off_ == in_.size()) {
      in_.clear();
      in_off_ = 0;
    }
    uint64_t body = std::min<uint64_t>(unconsumed_, take);
    if (body && conn_ && id_ > 0) {
      unconsumed_ -= body;
      nghttp2_session_consume_stream(conn_->session(), id_, body);
      conn_->want_flush();
    }
    return static_cast<ssize_t>(take);
  }
  if (ended_ || eof_)
    return 0;
  if (reset_ || !conn_) {
    errno = ECONNRESET;
    return -1;
  }
  watch_->in_ready = false;
  errno = EAGAIN;
  return -1;
}

void H2Call::head_done(bool end_stream) {
  char line[64];
  std::string_view phrase = reason_phrase(status_);
  int len = std::snprintf(line, sizeof line, "HTTP/1.1 %d %.*s\r\n", status_,
                          static_cast<int>(phrase.size()), phrase.data());
  if (in_off_ == in_.size()) {
    in_.clear();
    in_off_ = 0;
  }
  in_.append(line, static_cast<size_t>(len));
  in_.append(fields_);
  fields_.clear();
  if (status_ >= 100 && status_ < 200) {
    // An interim response: the final one follows.
    in_.append("\r\n");
    has_length_ = false;
    wake(true, false);
    return;
  }
  final_head_ = true;
  if (end_stream) {
    if (!has_length_ && status_ != 204 && status_ != 304 && !head_request_)
      in_.append("content-length: 0\r\n");
    in_.append("\r\n");
    return ended();
  }
  if (!has_length_) {
    chunked_ = true;
    in_.append("transfer-encoding: chunked\r\n");
  }
  in_.append("\r\n");
  wake(true, false);
}

void H2Call::trailers_done() {
  if (chunked_) {
    in_.append("0\r\n");
    in_.append(fields_);
    in_.append("\r\n");
  }
  fields_.clear();
  ended();
}

void H2Call::ended() {
  ended_ = true;
  wake(true, false);
}

// The request body for DATA frames, as the backend's window lets it go.
ssize_t H2Call::read_body(nghttp2_session* s, int32_t id, uint8_t* buf, size_t length,
                          uint32_t* flags, nghttp2_data_source* source, void*) {
  auto* c = static_cast<H2Call*>(source->ptr);
  if (nghttp2_session_get_stream_user_data(s, id) != c)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; // (the exchange let the stream go)
  size_t have = c->body_.size() - c->body_off_;
  if (!have) {
    if (c->body_done_) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    c->deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  size_t n = std::min(have, length);
  std::memcpy(buf, c->body_.data() + c->body_off_, n);
  c->body_off_ += n;
  if (c->body_off_ == c->body_.size()) {
    c->body_.clear();
    c->body_off_ = 0;
    if (c->body_done_)
      *flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  if (c->send_waits_) {
    c->send_waits_ = false;
    c->wake(false, true);
  }
  return static_cast<ssize_t>(n);
}

// ---- The worker's connections.

H2Client::~H2Client() { close_all(); }

H2Call* H2Client::open(const upstream::Backend& backend,
                       const std::shared_ptr<const io::TlsClient>& tls,
                       std::chrono::milliseconds idle_timeout, io::Watch& watch) {
  H2Call* c;
  if (free_calls_.empty()) {
    c = new H2Call;
  } else {
    c = free_calls_.back();
    free_calls_.pop_back();
  }
  c->watch_ = &watch;
  c->loop_ = &loop_;
  c->tls_scheme_ = tls != nullptr;
  place(c, backend, tls, idle_timeout);
  return c;
}

// Puts `c` on a connection to `backend` with room, or on a new one.
void H2Client::place(H2Call* c, const upstream::Backend& backend,
                     const std::shared_ptr<const io::TlsClient>& tls,
                     std::chrono::milliseconds idle_timeout) {
  if (backend.id >= by_backend_.size())
    by_backend_.resize(backend.id + 1);
  auto& list = by_backend_[backend.id];
  for (H2Connection* conn : list)
    if (conn->usable(tls.get()) && conn->room() > 0) {
      conn->attach(c);
      if (conn->open())
        c->wake(false, true);
      return;
    }
  // Connections that cannot take this stream (another pool's TLS settings
  // after a reload) take no new ones.
  for (H2Connection* conn : list)
    if (!conn->usable(tls.get()))
      conn->stop_new_streams();
  auto* conn = new H2Connection(*this, backend.id, tls, idle_timeout);
  list.push_back(conn);
  conn->attach(c);
  c->reused_ = false;
  std::string why;
  if (int error = conn->start(backend, why))
    conn->failed_to_connect(error, why); // (gone; the call says why)
}

void H2Client::move(H2Call* c, H2Connection& from) {
  from.detach(c);
  place(c, from.target(), from.tls(), from.idle_timeout());
}

void H2Client::release(H2Call* c) {
  if (!c)
    return;
  if (c->conn_)
    c->conn_->detach(c);
  c->clear();
  if (free_calls_.size() < 64)
    free_calls_.push_back(c);
  else
    delete c;
}

void H2Client::forget(H2Connection* c) {
  auto& list = by_backend_[c->backend()];
  list.erase(std::remove(list.begin(), list.end(), c), list.end());
}

void H2Client::sweep(io::Clock::time_point now) {
  std::vector<H2Connection*> idle;
  for (auto& list : by_backend_)
    for (H2Connection* c : list)
      if (c->idle_for(now))
        idle.push_back(c);
  for (H2Connection* c : idle)
    c->close(false);
}

void H2Client::retain(const std::vector<bool>& live) {
  std::vector<H2Connection*> gone;
  for (size_t id = 0; id < by_backend_.size(); ++id) {
    if (id < live.size() && live[id])
      continue;
    for (H2Connection* c : by_backend_[id]) {
      c->stop_new_streams();
      if (c->streams() == 0)
        gone.push_back(c);
    }
  }
  for (H2Connection* c : gone)
    c->close(false);
}

void H2Client::close_all() {
  std::vector<H2Connection*> all;
  for (auto& list : by_backend_)
    all.insert(all.end(), list.begin(), list.end());
  for (H2Connection* c : all)
    c->close(true);
  for (H2Call* c : free_calls_)
    delete c;
  free_calls_.clear();
}

size_t H2Client::connection_count() const {
  size_t n = 0;
  for (const auto& list : by_backend_)
    n += list.size();
  return n;
}

} // namespace lb::proxy
