#pragma once
// A health check over HTTP/2 (a pool with protocol h2 or h2c) as bytes: the
// connection preface, SETTINGS and one request to send (built once with
// libnghttp2), then the answer read from the bytes that come back, and what
// those ask back (the acknowledgement of the backend's SETTINGS, PING replies,
// WINDOW_UPDATE) to send while the answer is awaited.
//
// gRPC (grpc.health.v1.Health/Check): SERVING passes; NOT_SERVING,
// SERVICE_UNKNOWN, a grpc-status other than OK, an HTTP status other than
// 200 or a reset stream fail, each named in the result. HTTP (GET path): the
// response's status, for the check's expect_status to judge.

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace lb::healthcheck {

class H2Check {
public:
  enum class Kind { grpc, get };
  // grpc: `what` is the service asked about; get: the path. `authority`:
  // the :authority sent (the check's host, or the backend's host:port);
  // `tls`: https.
  H2Check(Kind kind, std::string_view what, std::string_view authority, bool tls);
  ~H2Check();
  H2Check(const H2Check&) = delete;
  H2Check& operator=(const H2Check&) = delete;

  const std::string& request() const { return request_; }
  // The response's bytes as they come. True once the answer is known.
  bool feed(const char* p, size_t n);
  // Frames to send now (after feed): replaces `out`; false when there are none.
  bool take_output(std::string& out);
  // gRPC: whether it passed, and "SERVING", "NOT_SERVING", "grpc-status 12:
  // unknown service", "HTTP status 404", ...; get: "status 200" (or why none).
  bool passed() const { return passed_; }
  const std::string& result() const { return result_; }
  int http_status() const { return http_status_; } // 0: none came

private:
  static int on_header(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                       const uint8_t*, size_t, uint8_t, void*);
  static int on_data_chunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*);
  static int on_stream_close(nghttp2_session*, int32_t, uint32_t, void*);
  static ssize_t read_body(nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t*,
                           nghttp2_data_source*, void*);
  void decide();
  Kind kind_;

  nghttp2_session* session_ = nullptr;
  std::string request_;
  std::string message_; // the request's gRPC message, then the response's bytes
  size_t message_sent_ = 0;
  std::string answer_; // the response's DATA
  int http_status_ = 0;
  int grpc_status_ = -1;
  std::string grpc_message_;
  uint32_t reset_code_ = 0;
  bool closed_ = false;
  bool done_ = false;
  bool passed_ = false;
  std::string result_;
};

} // namespace lb::healthcheck
