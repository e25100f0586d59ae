#include "lb/proxy/h2_session.hpp"

#include "lb/proxy/client_connection.hpp"
#include "lb/proxy/client_connection_impl.hpp"
#include "lb/proxy/h2_fields.hpp"

#include <openssl/err.h>

#include <algorithm>
#include <cstring>

namespace lb::proxy {

namespace {

// A stream's response waits in lb up to this much for the client to take it.
constexpr size_t max_pending_data = 64 * 1024;
// The connection's receive window: each stream's (64 KiB) bounds what lb
// holds per stream; this one only has to let several streams send at once.
constexpr int32_t connection_window = 1 << 20;
// Flood budgets: frames that carry no request, and streams the client resets
// before their answer. Spent per frame, refilled per second and by work done.
constexpr double control_burst = 1000, control_per_second = 100;
constexpr double reset_burst = 200, reset_per_second = 20;
// WINDOW_UPDATEs are free up to this many per DATA frame lb sent (as
// Envoy's max_inbound_window_update_frames_per_data_frame_sent), the
// credit held at most; beyond it they pay from the control budget.
constexpr double window_credit_per_data = 10, window_credit_max = 10000;

} // namespace

// ---- The stream, as its ClientConnection sees it.

ssize_t H2Stream::recv(char* p, size_t n) {
  size_t have = req_.size() - req_off_;
  if (have == 0) {
    errno = EAGAIN;
    return -1;
  }
  size_t take = std::min(have, n);
  std::memcpy(p, req_.data() + req_off_, take);
  req_off_ += take;
  if (req_off_ == req_.size()) {
    req_.clear();
    req_off_ = 0;
  }
  // The stream's window opens as the body is taken (by its backend).
  uint64_t body = std::min<uint64_t>(unconsumed_, take);
  if (body && !reset_) {
    unconsumed_ -= body;
    nghttp2_session_consume_stream(session_.session_, id_, body);
    session_.schedule();
  }
  return static_cast<ssize_t>(take);
}

int H2Stream::write(Outbox& out, uint64_t& written) {
  if (reset_) {
    errno = EPIPE;
    return -1;
  }
  while (!out.empty()) {
    size_t pending = data_.size() - data_off_;
    if (resp_head_sent_ && pending >= max_pending_data) {
      conn_waits_ = true;
      session_.schedule();
      return 0;
    }
    iovec& v = out.v[out.first];
    size_t n = v.iov_len;
    if (resp_head_sent_)
      n = std::min(n, max_pending_data - pending);
    take_response_bytes(static_cast<const char*>(v.iov_base), n);
    if (reset_) {
      errno = EPIPE;
      return -1;
    }
    written += n;
    out.advance(n);
  }
  session_.schedule();
  return 1;
}

void H2Stream::take_response_bytes(const char* p, size_t n) {
  if (resp_complete_)
    return; // (after lb's own 502 for an unusable head)
  if (resp_head_sent_) {
    if (data_off_ >= max_pending_data / 2) {
      // What the client took goes: the buffer holds at most what waits.
      data_.erase(0, data_off_);
      data_off_ = 0;
    }
    if (chunked_resp_)
      chunks_.feed(p, n, data_, trailers_);
    else
      data_.append(p, n);
    if (deferred_) {
      deferred_ = false;
      nghttp2_session_resume_data(session_.session_, id_);
    }
    return;
  }
  resp_head_.append(p, n);
  while (!resp_head_sent_ && !reset_) {
    size_t end = resp_head_.find("\r\n\r\n");
    if (end == std::string::npos)
      return;
    if (!parse_response_head(end + 2))
      return; // (answered with 502 instead)
    // A final head went out: what follows it is body. An interim one (1xx)
    // is dropped: the final one follows.
    if (resp_head_sent_) {
      std::string rest = resp_head_.substr(end + 4);
      resp_head_.clear();
      if (!rest.empty())
        take_response_bytes(rest.data(), rest.size());
      return;
    }
    resp_head_.erase(0, end + 4);
  }
}

// The head lb wrote (its own, so well-formed), the first `len` bytes of
// resp_head_: "HTTP/1.1 200 OK\r\n" and "Name: value\r\n" lines. The names
// are lowered in place and the fields submitted from where they are (nghttp2
// copies them). False when the head is unusable (answered with 502).
bool H2Stream::parse_response_head(size_t len) {
  char* h = resp_head_.data();
  char* line_end = static_cast<char*>(std::memchr(h, '\n', len));
  const char* sp = static_cast<const char*>(std::memchr(h, ' ', len));
  int status = sp && sp + 4 <= h + len ? std::atoi(sp + 1) : 0;
  if (len < 12 || std::memcmp(h, "HTTP/", 5) != 0 || !line_end || status < 100 || status > 999) {
    session_.answer_locally(*this, 502, "invalid response head");
    return false;
  }
  if (status < 200)
    return true;
  char code[4];
  std::snprintf(code, sizeof code, "%03d", status);
  nghttp2_nv list[http::max_headers + 1];
  size_t n = 0;
  list[n++] = nv(":status", std::string_view(code, 3));
  n += fields_to_nv(line_end + 1, h + len, list + n, std::size(list) - n, chunked_resp_);
  // No body follows (a HEAD, 204, 304, Content-Length: 0): END_STREAM goes
  // with the HEADERS, as a gRPC trailers-only response must.
  bool empty = method_ == "HEAD" || status == 204 || status == 304;
  for (size_t i = 1; i < n && !empty && !chunked_resp_; ++i)
    empty = list[i].namelen == 14 && list[i].valuelen == 1 && list[i].value[0] == '0' &&
            std::memcmp(list[i].name, "content-length", 14) == 0;
  session_.submit_response(*this, list, n, empty);
  return true;
}

// The response's trailer fields as trailing HEADERS (names lowered, the
// connection's own left out). False when there are none.
bool H2Stream::submit_trailers() {
  nghttp2_nv list[64];
  bool chunked = false;
  size_t n = fields_to_nv(trailers_.data(), trailers_.data() + trailers_.size(), list,
                          std::size(list), chunked);
  if (n == 0)
    return false;
  nghttp2_submit_trailer(session_.session_, id_, list, n);
  return true;
}

void H2Stream::response_complete() {
  resp_complete_ = true;
  if (deferred_) {
    deferred_ = false;
    nghttp2_session_resume_data(session_.session_, id_);
  }
  session_.budget_ = std::min(control_burst, session_.budget_ + 4);
  session_.resets_ = std::min(reset_burst, session_.resets_ + 1);
  session_.schedule();
}

void H2Stream::detach() {
  conn_ = nullptr;
  if (resp_complete_ || reset_ || session_.closing_)
    return;
  // The request ended without its whole response (the client side of lb is
  // the stream: there is no other way to say so).
  reset_ = true;
  nghttp2_submit_rst_stream(session_.session_, NGHTTP2_FLAG_NONE, id_, NGHTTP2_INTERNAL_ERROR);
  session_.schedule();
}

bool H2Stream::https() const { return session_.ssl_ != nullptr; }

std::string_view H2Stream::client_cert() const { return session_.parent_.client_cert(); }

// ---- The session.

H2Session::H2Session(ClientConnection& parent, WorkerContext& worker,
                     const ListenerRuntime& listener, io::Watch& socket, SSL* ssl,
                     const char* early, size_t early_len)
    : parent_(parent), worker_(worker), listener_(listener), socket_(socket), ssl_(ssl),
      early_(early, early_len), budget_(control_burst), resets_(reset_burst),
      budget_at_(worker.loop.now()) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_sent);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  nghttp2_option_set_max_settings(opt, 32);
  nghttp2_option_set_max_continuations(opt, 16);
  nghttp2_session_server_new2(&session_, cb, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);

  const auto& limits = listener_.config.limits;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(limits.max_header_bytes)},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, connection_window);
  worker_.metrics->listeners.at(listener_.id).h2_connections.add(1);
}

H2Session::~H2Session() {
  closing_ = true;
  for (H2Stream* s = pending_; s;) {
    H2Stream* next = s->next_pending_;
    if (s->zombie_)
      delete s; // (the others are on streams_)
    s = next;
  }
  // Streams still served end with the connection.
  for (H2Stream* s = streams_; s;) {
    H2Stream* next = s->next_;
    s->reset_ = true;
    if (ClientConnection* c = s->conn_)
      c->close_now(); // (detaches the stream)
    delete s;
    s = next;
  }
  while (H2Stream* s = free_streams_) {
    free_streams_ = s->next_;
    delete s;
  }
  nghttp2_session_del(session_);
  worker_.metrics->listeners.at(listener_.id).h2_connections.add(-1);
}

void H2Session::schedule() {
  if (!closing_)
    worker_.loop.schedule(socket_);
}

bool H2Session::on_event() {
  if (closing_)
    return false;
  if (worker_.runtime.get() != runtime_seen_) {
    // A reload: a listener the new config no longer has ends its connections
    // (as HTTP/1.1 ones do after their request in flight).
    runtime_seen_ = worker_.runtime.get();
    if (!runtime_seen_->listener_by_id(listener_.id))
      drain();
  }
  if (!early_.empty()) {
    std::string early = std::move(early_);
    early_.clear();
    ssize_t rv = scan(early.data(), early.size())
                     ? nghttp2_session_mem_recv(
                           session_, reinterpret_cast<const uint8_t*>(early.data()), early.size())
                     : flood("control frames");
    if (rv < 0)
      fail(rv);
    start_pending();
  }
  char buf[16384];
  size_t budget = 256 * 1024; // then other connections get their turn
  while (!dead_ && nghttp2_session_want_read(session_)) {
    ssize_t n = sock_recv(buf, sizeof buf);
    if (n > 0) {
      ssize_t rv = scan(buf, static_cast<size_t>(n))
                       ? nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf),
                                                  static_cast<size_t>(n))
                       : flood("control frames");
      if (rv < 0) {
        fail(rv);
        break;
      }
      start_pending();
      progress_ = true;
      if (static_cast<size_t>(n) >= budget) {
        schedule();
        break;
      }
      budget -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    return false; // the client closed or reset the connection: its streams end
  }
  if (!flush())
    return false;
  if (dead_)
    return false;
  if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_) &&
      out_off_ == out_.size())
    return false;
  return true;
}

void H2Session::fail(ssize_t rv) {
  dead_ = true;
  if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC)
    return;
  bool calm = flood_ || rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;
  nghttp2_session_terminate_session(session_,
                                    calm ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
}

bool H2Session::take_progress() { return std::exchange(progress_, false); }

void H2Session::drain() {
  if (draining_ || closing_)
    return;
  draining_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
  schedule();
}

void H2Session::idle_timeout() {
  if (closing_)
    return;
  dead_ = true;
  // Streams still open and nothing moved: the client stalls them (a window
  // it never opens, a socket it never reads).
  nghttp2_session_terminate_session(session_,
                                    open_streams_ ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_NO_ERROR);
  flush();
}

// Frames out: nghttp2 serialises them into its buffer; they go to the socket
// in batches (one write for many small frames). While the socket takes
// nothing, nothing more is asked of nghttp2: the streams' responses then
// wait, and so do their backends.
bool H2Session::flush() {
  for (;;) {
    bool more = true;
    while (out_.size() - out_off_ < 32 * 1024) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0)
        return false;
      if (n == 0) {
        more = false;
        break;
      }
      out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    while (out_off_ < out_.size()) {
      ssize_t w = sock_send(out_.data() + out_off_, out_.size() - out_off_);
      if (w < 0)
        return false;
      if (w == 0)
        return true; // the socket's next edge continues
      out_off_ += static_cast<size_t>(w);
      progress_ = true;
    }
    out_.clear();
    out_off_ = 0;
    if (!more)
      return true;
  }
}

ssize_t H2Session::sock_recv(char* p, size_t n) {
  return ssl_ ? tls_recv(socket_, ssl_, p, n) : plain_recv(socket_, p, n);
}

// Bytes written, 0 when the socket takes none now, -1 when it failed.
ssize_t H2Session::sock_send(const char* p, size_t n) {
  if (!socket_.out_ready)
    return 0;
  if (!ssl_) {
    Outbox out;
    out.add(p, n);
    uint64_t written = 0;
    return write_some(socket_, out, written) < 0 ? -1 : static_cast<ssize_t>(written);
  }
  ERR_clear_error();
  int w = SSL_write(ssl_, p, static_cast<int>(std::min<size_t>(n, 1 << 30)));
  if (w > 0)
    return w;
  int e = SSL_get_error(ssl_, w);
  if (e == SSL_ERROR_WANT_WRITE) {
    socket_.blocked();
    return 0;
  }
  if (e == SSL_ERROR_WANT_READ) {
    socket_.drained();
    return 0;
  }
  return -1;
}

// ---- Flood budgets.

bool H2Session::charge(double& budget, double cost) {
  io::Clock::time_point now = worker_.loop.now();
  double elapsed = std::chrono::duration<double>(now - budget_at_).count();
  if (elapsed > 0) {
    budget_ = std::min(control_burst, budget_ + elapsed * control_per_second);
    resets_ = std::min(reset_burst, resets_ + elapsed * reset_per_second);
    budget_at_ = now;
  }
  budget -= cost;
  return budget >= 0;
}

int H2Session::flood(const char* what) {
  flood_ = what;
  return NGHTTP2_ERR_CALLBACK_FAILURE;
}

// Streams are kept for the next ones (with their buffers' room): a busy
// connection allocates little per stream.
H2Stream* H2Session::acquire_stream(int32_t id) {
  H2Stream* s = free_streams_;
  if (!s)
    return new H2Stream(*this, id);
  free_streams_ = s->next_;
  --free_count_;
  s->id_ = id;
  return s;
}

void H2Session::release_stream(H2Stream* s) {
  if (free_count_ >= 8 || closing_) {
    delete s;
    return;
  }
  s->reset();
  s->next_ = free_streams_;
  free_streams_ = s;
  ++free_count_;
}

void H2Stream::reset() {
  auto clear = [](std::string& b) {
    b.clear();
    if (b.capacity() > 16 * 1024)
      b.shrink_to_fit(); // a big body's room is not kept
  };
  conn_ = nullptr;
  prev_ = next_ = next_pending_ = nullptr;
  clear(req_);
  req_off_ = 0;
  method_.clear();
  path_.clear();
  authority_.clear();
  scheme_.clear();
  clear(cookies_);
  clear(fields_);
  head_bytes_ = unconsumed_ = 0;
  head_done_ = too_large_ = has_length_ = chunked_ = req_ended_ = started_ = false;
  in_pending_ = zombie_ = false;
  clear(resp_head_);
  clear(data_);
  data_off_ = 0;
  resp_head_sent_ = resp_complete_ = deferred_ = reset_ = conn_waits_ = false;
  chunked_resp_ = false;
  chunks_.reset();
  clear(trailers_);
}

// ---- nghttp2's callbacks.

// Frame headers as the bytes come, before nghttp2 has them: every frame is
// charged for what it is, also those nghttp2 then ignores (DATA on a stream
// that was closed, frames after the headers of a reset stream). False when
// the control budget is spent.
bool H2Session::scan(const char* p, size_t n) {
  while (n) {
    size_t k;
    if (preface_left_) {
      k = std::min<size_t>(n, preface_left_);
      preface_left_ -= static_cast<uint8_t>(k);
    } else if (payload_left_) {
      k = std::min<size_t>(n, payload_left_);
      payload_left_ -= static_cast<uint32_t>(k);
    } else {
      k = std::min<size_t>(n, sizeof hd_ - hd_have_);
      std::memcpy(hd_ + hd_have_, p, k);
      hd_have_ += static_cast<uint8_t>(k);
      if (hd_have_ == sizeof hd_) {
        hd_have_ = 0;
        payload_left_ = uint32_t{hd_[0]} << 16 | uint32_t{hd_[1]} << 8 | hd_[2];
        uint8_t type = hd_[3], flags = hd_[4];
        bool costs = true;
        if (type == NGHTTP2_DATA || type == NGHTTP2_HEADERS || type == NGHTTP2_CONTINUATION)
          // Frames with content are paid by their work; empty ones do nothing
          // but cost (an empty DATA that ends a stream is fine).
          costs = payload_left_ == 0 && !(flags & NGHTTP2_FLAG_END_STREAM);
        if (type == NGHTTP2_WINDOW_UPDATE && window_credit_ >= 1) {
          window_credit_ -= 1; // earned by DATA lb sent
          costs = false;
        }
        if (costs && !charge(budget_, 1))
          return false;
      }
    }
    p += k;
    n -= k;
  }
  return true;
}

int H2Session::on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* self) {
  auto* h = static_cast<H2Session*>(self);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  H2Stream* s = h->acquire_stream(frame->hd.stream_id);
  s->next_ = h->streams_;
  if (h->streams_)
    h->streams_->prev_ = s;
  h->streams_ = s;
  ++h->open_streams_;
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
  worker_metrics(*h).h2_streams.add();
  return 0;
}

ListenerMetrics& H2Session::worker_metrics(H2Session& h) {
  return h.worker_.metrics->listeners.at(h.listener_.id);
}

int H2Session::on_header(nghttp2_session* session, const nghttp2_frame* frame,
                         const uint8_t* name_p, size_t name_len, const uint8_t* value_p,
                         size_t value_len, uint8_t, void* self) {
  auto* h = static_cast<H2Session*>(self);
  auto* s =
      static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (!s || frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  if (s->head_done_) {
    // Trailers: passed on in the chunked body's trailer section (a body with
    // a content-length has none in HTTP/1.1: then they are dropped).
    std::string_view tn(reinterpret_cast<const char*>(name_p), name_len);
    s->head_bytes_ += name_len + value_len + 32;
    if (!s->chunked_ || s->too_large_ || tn.empty() || tn[0] == ':' ||
        s->head_bytes_ > h->listener_.config.limits.max_header_bytes)
      return 0;
    s->cookies_.append(tn); // (free once the head is built: holds the trailer lines)
    s->cookies_ += ": ";
    s->cookies_.append(reinterpret_cast<const char*>(value_p), value_len);
    s->cookies_ += "\r\n";
    return 0;
  }
  std::string_view name(reinterpret_cast<const char*>(name_p), name_len);
  std::string_view value(reinterpret_cast<const char*>(value_p), value_len);
  // As SETTINGS_MAX_HEADER_LIST_SIZE counts: name, value and 32 per field.
  s->head_bytes_ += name_len + value_len + 32;
  if (s->head_bytes_ > h->listener_.config.limits.max_header_bytes)
    s->too_large_ = true;
  if (s->too_large_)
    return 0;
  if (!name.empty() && name[0] == ':') {
    if (name == ":method")
      s->method_ = value;
    else if (name == ":path")
      s->path_ = value;
    else if (name == ":authority")
      s->authority_ = value;
    else if (name == ":scheme")
      s->scheme_ = value;
    return 0;
  }
  if (name == "cookie") {
    if (!s->cookies_.empty())
      s->cookies_ += "; ";
    s->cookies_ += value;
    return 0;
  }
  if (name == "host" && !s->authority_.empty())
    return 0; // :authority names the target
  if (name == "te")
    return 0; // "trailers" only (checked by nghttp2): hop-by-hop in HTTP/1.1
  if (name == "content-length")
    s->has_length_ = true;
  s->fields_.append(name);
  s->fields_ += ": ";
  s->fields_.append(value);
  s->fields_ += "\r\n";
  return 0;
}

void H2Session::end_request_head(H2Stream& s, bool end_stream) {
  s.head_done_ = true;
  s.req_ended_ = end_stream;
  if (!s.too_large_) {
    std::string& r = s.req_;
    r.reserve(s.method_.size() + s.path_.size() + s.authority_.size() + s.fields_.size() +
              s.cookies_.size() + 64);
    r += s.method_;
    r += ' ';
    r += s.method_ == "CONNECT" ? s.authority_ : s.path_;
    r += " HTTP/1.1\r\n";
    if (!s.authority_.empty()) {
      r += "Host: ";
      r += s.authority_;
      r += "\r\n";
    }
    r += s.fields_;
    if (!s.cookies_.empty()) {
      r += "Cookie: ";
      r += s.cookies_;
      r += "\r\n";
    }
    // A body of unknown length goes chunked (HTTP/1.1's way to frame it).
    if (!end_stream && !s.has_length_) {
      r += "Transfer-Encoding: chunked\r\n";
      s.chunked_ = true;
    }
    r += "\r\n";
  }
  s.fields_.clear();
  s.cookies_.clear();
  s.in_pending_ = true;
  *pending_tail_ = &s;
  pending_tail_ = &s.next_pending_;
}

void H2Session::start_pending() {
  while (H2Stream* s = pending_) {
    pending_ = s->next_pending_;
    if (!pending_)
      pending_tail_ = &pending_;
    s->next_pending_ = nullptr;
    s->in_pending_ = false;
    if (s->zombie_) {
      release_stream(s); // reset by the client before it started
      continue;
    }
    if (s->too_large_) {
      answer_locally(*s, 431, "request head larger than max_header_bytes");
      continue;
    }
    s->started_ = true;
    ClientConnection* c = ClientConnection::new_stream(worker_, listener_, *s, parent_);
    s->conn_ = c;
    c->run_stream();
  }
}

void H2Session::submit_response(H2Stream& s, const nghttp2_nv* list, size_t n, bool empty) {
  s.resp_head_sent_ = true;
  nghttp2_data_provider provider;
  provider.source.ptr = &s;
  provider.read_callback = read_data;
  nghttp2_submit_response(session_, s.id_, list, n, empty ? nullptr : &provider);
  schedule();
}

// lb answers a stream itself (before any ClientConnection could): a short
// text body, as lb's other error answers.
void H2Session::answer_locally(H2Stream& s, int status, const char* reason) {
  char code[4];
  std::snprintf(code, sizeof code, "%03d", status);
  const nghttp2_nv list[] = {nv(":status", std::string_view(code, 3)),
                             nv("content-type", "text/plain; charset=utf-8")};
  s.data_ = std::to_string(status) + " " + reason + "\n";
  s.data_off_ = 0;
  s.resp_complete_ = true;
  submit_response(s, list, std::size(list));
}

void H2Session::wake_conn(H2Stream& s) {
  if (s.conn_)
    s.conn_->stream_ready();
}

ssize_t H2Session::read_data(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                             uint32_t* flags, nghttp2_data_source* source, void* self) {
  auto* h = static_cast<H2Session*>(self);
  auto* s = static_cast<H2Stream*>(source->ptr);
  size_t avail = s->data_.size() - s->data_off_;
  size_t n = std::min(avail, length);
  if (n) {
    std::memcpy(buf, s->data_.data() + s->data_off_, n);
    s->data_off_ += n;
    if (s->data_off_ == s->data_.size()) {
      s->data_.clear();
      s->data_off_ = 0;
    }
  }
  if (s->data_off_ == s->data_.size() && s->resp_complete_) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->submit_trailers())
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM; // the trailers end the stream
    return static_cast<ssize_t>(n);
  }
  if (s->conn_waits_ && s->data_.size() - s->data_off_ < max_pending_data) {
    s->conn_waits_ = false;
    h->wake_conn(*s);
  }
  if (n == 0) {
    s->deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return static_cast<ssize_t>(n);
}

int H2Session::on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* self) {
  auto* h = static_cast<H2Session*>(self);
  auto* s =
      static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    if (!s)
      return 0;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      h->end_request_head(*s, frame->hd.flags & NGHTTP2_FLAG_END_STREAM);
      return 0;
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
      h->end_request_body(*s); // after trailers
    return 0;
  case NGHTTP2_DATA:
    if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
      h->end_request_body(*s);
    return 0;
  case NGHTTP2_RST_STREAM:
    // A stream reset before its answer was complete: Rapid Reset pays here.
    if (s && !s->resp_complete_ && !h->charge(h->resets_, 1))
      return h->flood("streams reset by the client");
    return 0;
  default:
    return 0;
  }
}

void H2Session::end_request_body(H2Stream& s) {
  if (s.req_ended_)
    return;
  s.req_ended_ = true;
  if (s.chunked_ && !s.too_large_) {
    s.req_ += "0\r\n";
    s.req_ += s.cookies_; // the trailers, if any
    s.req_ += "\r\n";
    s.cookies_.clear();
  }
  wake_conn(s);
}

int H2Session::on_data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                             const uint8_t* data, size_t len, void* self) {
  auto* h = static_cast<H2Session*>(self);
  // The connection's window reopens at once: each stream's bounds what waits here.
  nghttp2_session_consume_connection(session, len);
  auto* s = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (!s || s->reset_ || s->too_large_ || !s->head_done_ || (s->started_ && !s->conn_)) {
    // Nobody reads it (the request was answered already, or reset): dropped.
    nghttp2_session_consume_stream(session, stream_id, len);
    return 0;
  }
  if (s->req_off_ >= 32 * 1024) {
    s->req_.erase(0, s->req_off_); // taken by the ClientConnection already
    s->req_off_ = 0;
  }
  if (s->chunked_)
    append_hex(s->req_, len);
  s->req_.append(reinterpret_cast<const char*>(data), len);
  if (s->chunked_)
    s->req_ += "\r\n";
  s->unconsumed_ += len;
  h->wake_conn(*s);
  return 0;
}

int H2Session::on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t, void* self) {
  auto* h = static_cast<H2Session*>(self);
  auto* s = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (!s)
    return 0;
  nghttp2_session_set_stream_user_data(session, stream_id, nullptr);
  --h->open_streams_;
  s->reset_ = s->reset_ || !s->resp_complete_ || s->data_off_ != s->data_.size();
  if (ClientConnection* c = s->conn_)
    c->close_now(); // the client reset it, or the connection ends: so does the request
  if (s->prev_)
    s->prev_->next_ = s->next_;
  else
    h->streams_ = s->next_;
  if (s->next_)
    s->next_->prev_ = s->prev_;
  if (s->in_pending_)
    s->zombie_ = true; // start_pending frees it
  else
    h->release_stream(s);
  return 0;
}

int H2Session::on_invalid_frame(nghttp2_session*, const nghttp2_frame*, int, void* self) {
  // A refused stream, a bad header, a frame in the wrong state: each costs.
  auto* h = static_cast<H2Session*>(self);
  if (!h->charge(h->budget_, 10))
    return h->flood("invalid frames");
  return 0;
}

int H2Session::on_frame_sent(nghttp2_session*, const nghttp2_frame* frame, void* self) {
  auto* h = static_cast<H2Session*>(self);
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    // The response is out whole before the request ended (an early answer:
    // 413, 431, a backend that did not wait): the client may stop sending
    // (RFC 9113 §8.1).
    auto* s = static_cast<H2Stream*>(
        nghttp2_session_get_stream_user_data(h->session_, frame->hd.stream_id));
    if (s && !s->req_ended_)
      nghttp2_submit_rst_stream(h->session_, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                NGHTTP2_NO_ERROR);
  }
  if (frame->hd.type == NGHTTP2_DATA) {
    h->budget_ = std::min(control_burst, h->budget_ + 1);
    // ... and the WINDOW_UPDATEs a client sends for it (gRPC clients send
    // more than one per frame: the stream's and the connection's, by message).
    h->window_credit_ = std::min(window_credit_max, h->window_credit_ + window_credit_per_data);
  } else if (frame->hd.type == NGHTTP2_GOAWAY) {
    // Counted as sent (lb's own, and nghttp2's on a protocol error).
    ListenerMetrics& m = worker_metrics(*h);
    uint32_t code = frame->goaway.error_code;
    (code == NGHTTP2_NO_ERROR            ? m.h2_goaway_graceful
     : code == NGHTTP2_ENHANCE_YOUR_CALM ? m.h2_goaway_calm
                                         : m.h2_goaway_error)
        .add();
  }
  return 0;
}

} // namespace lb::proxy
