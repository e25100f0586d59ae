// grpc_origin: a minimal, fast gRPC server for the benchmarks (HTTP/2 with
// prior knowledge, libnghttp2).
//
//   grpc_origin --listen 127.0.0.1:PORT
//
// PORT may be 0: "listening on HOST:PORT" is printed on stdout once the
// socket listens. Every call, whatever its method, is answered as a unary
// call: HEADERS (:status 200, content-type application/grpc), one message of
// 16 bytes, trailers grpc-status 0. The request's messages are read and
// dropped. One thread per connection, blocking I/O: the proxies in front
// keep few connections (lb and HAProxy multiplex; nginx's grpc_pass reuses
// them with `keepalive`).

#include <nghttp2/nghttp2.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

namespace {

// A gRPC message: not compressed, 16 bytes long.
constexpr char kAnswer[] = "\0\0\0\0\x10"
                           "0123456789abcdef";
constexpr size_t kAnswerSize = 5 + 16;

nghttp2_nv nv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

ssize_t answer_body(nghttp2_session* s, int32_t id, uint8_t* buf, size_t length, uint32_t* flags,
                    nghttp2_data_source*, void*) {
  size_t n = std::min(length, kAnswerSize);
  std::memcpy(buf, kAnswer, n);
  *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
  static const nghttp2_nv trailers[] = {nv("grpc-status", "0")};
  nghttp2_submit_trailer(s, id, trailers, 1);
  return static_cast<ssize_t>(n);
}

int on_frame_recv(nghttp2_session* s, const nghttp2_frame* frame, void*) {
  // The request ended: answer it.
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    static const nghttp2_nv head[] = {nv(":status", "200"), nv("content-type", "application/grpc")};
    nghttp2_data_provider body{};
    body.read_callback = answer_body;
    nghttp2_submit_response(s, frame->hd.stream_id, head, 2, &body);
  }
  return 0;
}

void serve(int fd) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session* s = nullptr;
  nghttp2_session_server_new(&s, cb, nullptr);
  nghttp2_session_callbacks_del(cb);
  nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000},
                                       {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
  nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, settings, 2);
  nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, 16 << 20);
  std::string out;
  char buf[65536];
  for (;;) {
    out.clear();
    for (;;) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(s, &data);
      if (n <= 0)
        break;
      out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    size_t off = 0;
    while (off < out.size()) {
      ssize_t w = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (w <= 0)
        goto done;
      off += static_cast<size_t>(w);
    }
    if (!nghttp2_session_want_read(s) && !nghttp2_session_want_write(s))
      break;
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r <= 0)
      break;
    if (nghttp2_session_mem_recv(s, reinterpret_cast<uint8_t*>(buf), static_cast<size_t>(r)) < 0)
      break;
  }
done:
  nghttp2_session_del(s);
  ::close(fd);
}

} // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::string_view(argv[i]) == "--listen")
      listen = argv[i + 1];
  ::signal(SIGPIPE, SIG_IGN);
  size_t colon = listen.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(listen.c_str() + colon + 1)));
  if (::inet_pton(AF_INET, listen.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    std::fprintf(stderr, "grpc_origin: bad --listen %s\n", listen.c_str());
    return 2;
  }
  int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(ls, 1024) != 0) {
    std::perror("grpc_origin: listen");
    return 1;
  }
  socklen_t len = sizeof addr;
  ::getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &len);
  char ip[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof ip);
  std::printf("listening on %s:%u\n", ip, ntohs(addr.sin_port));
  std::fflush(stdout);
  for (;;) {
    int fd = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::thread(serve, fd).detach();
  }
}
