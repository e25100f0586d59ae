#include "healthcheck/h2_check.hpp"

#include <algorithm>
#include <cstring>

namespace lb::healthcheck {

namespace {

nghttp2_nv nv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// A gRPC message: the compressed flag (0), the length (4 bytes, big endian), the bytes.
std::string grpc_frame(const std::string& message) {
  std::string f(5, '\0');
  uint32_t n = static_cast<uint32_t>(message.size());
  f[1] = static_cast<char>(n >> 24);
  f[2] = static_cast<char>(n >> 16);
  f[3] = static_cast<char>(n >> 8);
  f[4] = static_cast<char>(n);
  return f + message;
}

constexpr const char* serving_names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};

} // namespace

H2Check::H2Check(Kind kind, std::string_view what, std::string_view authority, bool tls)
    : kind_(kind) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_header_callback(cb, &H2Check::on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &H2Check::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &H2Check::on_stream_close);
  nghttp2_session_client_new(&session_, cb, this);
  nghttp2_session_callbacks_del(cb);
  nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 1);
  if (kind == Kind::get) {
    const nghttp2_nv head[] = {nv(":method", "GET"), nv(":scheme", tls ? "https" : "http"),
                               nv(":authority", authority), nv(":path", what),
                               nv("user-agent", "lb-health-check")};
    nghttp2_submit_request(session_, nullptr, head, std::size(head), nullptr, this);
  } else {
    // HealthCheckRequest { string service = 1; }
    std::string request;
    if (!what.empty()) {
      request.push_back(0x0a);
      put_varint(request, what.size());
      request.append(what);
    }
    message_ = grpc_frame(request);
    const nghttp2_nv head[] = {nv(":method", "POST"),
                               nv(":scheme", tls ? "https" : "http"),
                               nv(":authority", authority),
                               nv(":path", "/grpc.health.v1.Health/Check"),
                               nv("content-type", "application/grpc"),
                               nv("te", "trailers"),
                               nv("user-agent", "lb-health-check")};
    nghttp2_data_provider body{};
    body.source.ptr = this;
    body.read_callback = &H2Check::read_body;
    nghttp2_submit_request(session_, nullptr, head, std::size(head), &body, this);
  }
  take_output(request_);
}

H2Check::~H2Check() { nghttp2_session_del(session_); }

bool H2Check::take_output(std::string& out) {
  out.clear();
  for (;;) {
    const uint8_t* data = nullptr;
    ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n <= 0)
      break;
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
  return !out.empty();
}

ssize_t H2Check::read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                           nghttp2_data_source* source, void*) {
  auto* self = static_cast<H2Check*>(source->ptr);
  size_t n = std::min(length, self->message_.size() - self->message_sent_);
  std::memcpy(buf, self->message_.data() + self->message_sent_, n);
  self->message_sent_ += n;
  if (self->message_sent_ == self->message_.size())
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

int H2Check::on_header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                       size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* user) {
  auto* self = static_cast<H2Check*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  auto number = [](std::string_view s) {
    int x = 0;
    for (char c : s)
      x = c >= '0' && c <= '9' && x < 100000 ? x * 10 + (c - '0') : x;
    return x;
  };
  if (n == ":status")
    self->http_status_ = number(v);
  else if (n == "grpc-status")
    self->grpc_status_ = number(v);
  else if (n == "grpc-message")
    self->grpc_message_.assign(v.substr(0, 200));
  return 0;
}

int H2Check::on_data_chunk(nghttp2_session*, uint8_t, int32_t, const uint8_t* data, size_t len,
                           void* user) {
  auto* self = static_cast<H2Check*>(user);
  if (self->answer_.size() < 4096)
    self->answer_.append(reinterpret_cast<const char*>(data), std::min<size_t>(len, 4096));
  return 0;
}

int H2Check::on_stream_close(nghttp2_session*, int32_t, uint32_t error, void* user) {
  auto* self = static_cast<H2Check*>(user);
  self->closed_ = true;
  self->reset_code_ = error;
  return 0;
}

bool H2Check::feed(const char* p, size_t n) {
  if (done_)
    return true;
  ssize_t r = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(p), n);
  if (r < 0) {
    done_ = true;
    result_ = std::string("not an HTTP/2 answer (") + nghttp2_strerror(static_cast<int>(r)) + ")";
    return true;
  }
  // A GET's status is known with its head (the body does not matter).
  if (closed_ || (kind_ == Kind::get && http_status_ >= 200))
    decide();
  return done_;
}

void H2Check::decide() {
  done_ = true;
  if (http_status_ == 0) {
    result_ = "stream reset (" + std::string(nghttp2_http2_strerror(reset_code_)) + ")";
    return;
  }
  if (kind_ == Kind::get) {
    result_ = "status " + std::to_string(http_status_);
    return;
  }
  if (http_status_ != 200) {
    result_ = "HTTP status " + std::to_string(http_status_);
    return;
  }
  if (grpc_status_ != 0) {
    result_ = grpc_status_ < 0 ? std::string("no grpc-status")
                               : "grpc-status " + std::to_string(grpc_status_);
    if (!grpc_message_.empty())
      result_ += ": " + grpc_message_;
    return;
  }
  // HealthCheckResponse { ServingStatus status = 1; } after the 5-byte prefix.
  uint64_t status = 0;
  if (answer_.size() >= 5) {
    std::string_view m(answer_.data() + 5, answer_.size() - 5);
    for (size_t i = 0; i + 1 < m.size(); ++i)
      if (m[i] == 0x08) {
        status = static_cast<uint8_t>(m[i + 1]) & 0x7f;
        break;
      }
  }
  passed_ = status == 1;
  result_ = status < 4 ? serving_names[status] : "status " + std::to_string(status);
}

} // namespace lb::healthcheck
