// fast_origin: a minimal, very fast HTTP/1.1 origin for the benchmarks.
//
//   fast_origin --listen 127.0.0.1:PORT [--threads N]
//
// PORT may be 0: the kernel picks one and "listening on HOST:PORT" is printed
// on stdout (always printed, then flushed) once every thread's socket listens.
//
// Every thread runs its own epoll loop on its own SO_REUSEPORT listening
// socket, so the kernel spreads connections and threads share nothing.
// Requests are parsed just enough: the head ends at "\r\n\r\n"; the request
// line gives method, path and version; Content-Length bodies are skipped and
// answered once their last byte is in (as an upload endpoint would);
// "Connection: close" (and HTTP/1.0 without keep-alive) closes after the
// answer; pipelined requests are answered in order. Chunked request bodies
// are not supported: the origin answers 501 and closes.
//
// GET /64k... answers a 65536-byte body; anything else answers
// "Hello from fast-origin\n". Responses are prebuilt static byte strings; a
// connection's pending output is a list of slices into them, written with one
// writev, so nothing is copied or allocated per request in steady state.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t kBigBodySize = 65536;
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kMaxHead = 64 * 1024;     // a head larger than this is refused
constexpr std::size_t kMaxIov = 512;            // slices per writev
constexpr std::size_t kMaxPendingSlices = 4096; // stop reading when this much is queued

enum class Body { small, big };
enum class ConnMode { keep_alive_11, keep_alive_10, close };

// All responses the origin ever sends, built once.
struct Responses {
  std::string small_body = "Hello from fast-origin\n";
  std::string big_body;
  // [body][mode] head strings
  std::string head[2][3];
  std::string not_implemented;
  std::string bad_request;

  Responses() {
    big_body.resize(kBigBodySize);
    for (std::size_t i = 0; i < kBigBodySize; ++i) {
      big_body[i] = static_cast<char>('a' + (i % 26));
    }
    for (std::size_t i = 0; i < kBigBodySize / 1024; ++i) {
      big_body[i * 1024 + 1023] = '\n';
    }
    const std::size_t sizes[2] = {small_body.size(), big_body.size()};
    const char* conn[3] = {"", "Connection: keep-alive\r\n", "Connection: close\r\n"};
    for (int b = 0; b < 2; ++b) {
      for (int m = 0; m < 3; ++m) {
        head[b][m] = "HTTP/1.1 200 OK\r\nServer: fast-origin\r\nContent-Type: text/plain\r\n"
                     "Content-Length: " +
                     std::to_string(sizes[b]) + "\r\n" + conn[m] + "\r\n";
      }
    }
    not_implemented =
        "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    bad_request = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  }
};

const Responses* g_resp = nullptr;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z')
      x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z')
      y = static_cast<char>(y - 'A' + 'a');
    if (x != y)
      return false;
  }
  return true;
}

// Does a comma-separated header value contain the token (case-insensitive)?
bool has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    std::size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t'))
      item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t'))
      item.remove_suffix(1);
    if (iequals(item, token))
      return true;
    if (comma == std::string_view::npos)
      break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

struct Conn {
  int fd = -1;
  std::string pending_in;         // an incomplete head carried over between reads
  std::uint64_t body_to_skip = 0; // request body bytes still to discard
  std::vector<iovec> out;         // slices of static responses still to write
  std::size_t out_head = 0;       // first unwritten slice in out
  bool close_after_write = false; // stop reading; close once out is flushed
  bool want_write = false;        // registered for EPOLLOUT instead of EPOLLIN
  // The answer to a request whose body is still being skipped.
  bool answer_pending = false;
  bool answer_big = false;
  bool answer_head_only = false;
  ConnMode answer_mode = ConnMode::keep_alive_11;
};

class Worker {
public:
  explicit Worker(int listen_fd) : listen_fd_(listen_fd), buf_(kReadChunk) {}

  void run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0)
      die("epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr; // nullptr marks the listening socket
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, listen_fd_, &ev) < 0)
      die("epoll_ctl listen");
    epoll_event events[256];
    for (;;) {
      int n = epoll_wait(ep_, events, 256, -1);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        auto* c = static_cast<Conn*>(events[i].data.ptr);
        if (c == nullptr) {
          accept_all();
        } else if (events[i].events & EPOLLOUT) {
          on_writable(c);
        } else {
          on_readable(c);
        }
      }
    }
  }

private:
  [[noreturn]] static void die(const char* what) {
    std::fprintf(stderr, "fast_origin: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
  }

  void accept_all() {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED)
          continue;
        if (errno == EMFILE || errno == ENFILE) {
          std::fprintf(stderr, "fast_origin: accept: %s\n", std::strerror(errno));
        }
        return; // EAGAIN or a transient error: epoll tells us when to retry
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto* c = new Conn;
      c->fd = fd;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = c;
      if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close_conn(c);
      }
    }
  }

  void close_conn(Conn* c) {
    ::close(c->fd); // closing removes it from the epoll set
    delete c;
  }

  void set_want_write(Conn* c, bool want) {
    if (c->want_write == want)
      return;
    c->want_write = want;
    epoll_event ev{};
    ev.events = want ? EPOLLOUT : EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
  }

  void queue(Conn* c, const std::string& s) {
    c->out.push_back(iovec{const_cast<char*>(s.data()), s.size()});
  }

  void queue_response(Conn* c, bool big, bool head_only, ConnMode mode) {
    const int b = big ? 1 : 0;
    queue(c, g_resp->head[b][static_cast<int>(mode)]);
    if (!head_only)
      queue(c, big ? g_resp->big_body : g_resp->small_body);
  }

  // Parses one complete head [p, p+len) (len includes the final CRLFCRLF) and
  // queues its answer. Returns false when the connection must stop reading.
  bool handle_head(Conn* c, const char* p, std::size_t len) {
    std::string_view head(p, len);
    std::size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    std::size_t sp1 = line.find(' ');
    std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) {
      queue(c, g_resp->bad_request);
      c->close_after_write = true;
      return false;
    }
    std::string_view method = line.substr(0, sp1);
    std::string_view path = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    const bool http10 = version == "HTTP/1.0";

    bool conn_close = false, conn_keep_alive = false, chunked = false;
    std::uint64_t content_length = 0;
    std::size_t pos = eol + 2;
    while (pos < head.size()) {
      std::size_t end = head.find("\r\n", pos);
      if (end == std::string_view::npos || end == pos)
        break;
      std::string_view h = head.substr(pos, end - pos);
      pos = end + 2;
      std::size_t colon = h.find(':');
      if (colon == std::string_view::npos)
        continue;
      std::string_view name = h.substr(0, colon);
      std::string_view value = h.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
        value.remove_prefix(1);
      if (name.size() == 10 && iequals(name, "connection")) {
        if (has_token(value, "close"))
          conn_close = true;
        if (has_token(value, "keep-alive"))
          conn_keep_alive = true;
      } else if (name.size() == 14 && iequals(name, "content-length")) {
        content_length = 0;
        for (char ch : value) {
          if (ch < '0' || ch > '9')
            break;
          content_length = content_length * 10 + static_cast<std::uint64_t>(ch - '0');
        }
      } else if (name.size() == 17 && iequals(name, "transfer-encoding")) {
        if (has_token(value, "chunked"))
          chunked = true;
      }
    }
    if (chunked) {
      queue(c, g_resp->not_implemented);
      c->close_after_write = true;
      return false;
    }
    ConnMode mode = ConnMode::keep_alive_11;
    if (conn_close || (http10 && !conn_keep_alive)) {
      mode = ConnMode::close;
    } else if (http10) {
      mode = ConnMode::keep_alive_10;
    }
    const bool big = path.starts_with("/64k");
    c->body_to_skip = content_length;
    if (content_length > 0) {
      c->answer_pending = true;
      c->answer_big = big;
      c->answer_head_only = method == "HEAD";
      c->answer_mode = mode;
      return true;
    }
    return answer(c, big, method == "HEAD", mode);
  }

  // Queues the answer; false when the connection closes after it.
  bool answer(Conn* c, bool big, bool head_only, ConnMode mode) {
    queue_response(c, big, head_only, mode);
    if (mode == ConnMode::close) {
      c->close_after_write = true;
      return false;
    }
    return true;
  }

  // Consumes bytes [p, p+n): skips body bytes, answers complete heads, and
  // keeps an incomplete head in pending_in. Returns false to close now.
  bool consume(Conn* c, const char* p, std::size_t n) {
    while (n > 0 && !c->close_after_write) {
      if (c->body_to_skip > 0) {
        std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(c->body_to_skip, n));
        c->body_to_skip -= k;
        p += k;
        n -= k;
        if (c->body_to_skip == 0 && c->answer_pending) {
          c->answer_pending = false;
          answer(c, c->answer_big, c->answer_head_only, c->answer_mode);
        }
        continue;
      }
      if (!c->pending_in.empty()) {
        // Slow path: the head started in an earlier read.
        std::size_t old = c->pending_in.size();
        std::size_t take = std::min(n, kMaxHead + 4 - old);
        c->pending_in.append(p, take);
        std::size_t from = old >= 3 ? old - 3 : 0;
        std::size_t end = c->pending_in.find("\r\n\r\n", from);
        if (end == std::string::npos) {
          if (c->pending_in.size() > kMaxHead)
            return false;
          return true; // take == n here
        }
        std::size_t head_len = end + 4;
        std::size_t used = head_len - old; // bytes of this read that belong to the head
        std::string head = std::move(c->pending_in);
        c->pending_in.clear();
        handle_head(c, head.data(), head_len);
        p += used;
        n -= used;
        continue;
      }
      std::string_view view(p, n);
      std::size_t end = view.find("\r\n\r\n");
      if (end == std::string_view::npos) {
        if (n > kMaxHead)
          return false;
        c->pending_in.assign(p, n);
        return true;
      }
      handle_head(c, p, end + 4);
      p += end + 4;
      n -= end + 4;
    }
    return true;
  }

  // Writes as much pending output as the socket takes. Returns false on error.
  bool flush(Conn* c) {
    while (c->out_head < c->out.size()) {
      std::size_t cnt = std::min(c->out.size() - c->out_head, kMaxIov);
      msghdr msg{};
      msg.msg_iov = c->out.data() + c->out_head;
      msg.msg_iovlen = cnt;
      ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          break;
        return false;
      }
      auto left = static_cast<std::size_t>(w);
      while (left > 0) {
        iovec& v = c->out[c->out_head];
        if (left >= v.iov_len) {
          left -= v.iov_len;
          ++c->out_head;
        } else {
          v.iov_base = static_cast<char*>(v.iov_base) + left;
          v.iov_len -= left;
          left = 0;
        }
      }
    }
    if (c->out_head == c->out.size()) {
      c->out.clear();
      c->out_head = 0;
    }
    return true;
  }

  // After reading or writing: decide what to wait for next.
  void settle(Conn* c) {
    if (!flush(c)) {
      close_conn(c);
      return;
    }
    const bool pending = !c->out.empty();
    if (!pending && c->close_after_write) {
      close_conn(c);
      return;
    }
    // Backpressure: while output is queued (or we are about to close), wait
    // for writability only and read nothing more.
    set_want_write(c, pending);
  }

  void on_readable(Conn* c) {
    for (;;) {
      ssize_t r = recv(c->fd, buf_.data(), buf_.size(), 0);
      if (r < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          break;
        close_conn(c);
        return;
      }
      if (r == 0) {
        // Peer finished sending: answer what we have, then close.
        c->close_after_write = true;
        break;
      }
      if (!consume(c, buf_.data(), static_cast<std::size_t>(r))) {
        close_conn(c);
        return;
      }
      if (c->close_after_write || static_cast<std::size_t>(r) < buf_.size() ||
          c->out.size() >= kMaxPendingSlices) {
        break;
      }
    }
    settle(c);
  }

  void on_writable(Conn* c) { settle(c); }

  int listen_fd_;
  int ep_ = -1;
  std::vector<char> buf_;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "fast_origin: %s\nusage: fast_origin --listen HOST:PORT [--threads N]\n"
               "  GET /64k* answers 65536 bytes; anything else \"Hello from fast-origin\\n\".\n",
               msg);
  std::exit(2);
}

int make_listener(const sockaddr* addr, socklen_t len) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(fd, addr, len) < 0 || listen(fd, 4096) < 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

} // namespace

int main(int argc, char** argv) {
  std::string listen_arg;
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&](std::string_view name) -> const char* {
      if (a == name) {
        if (i + 1 >= argc)
          usage("missing value");
        return argv[++i];
      }
      if (a.size() > name.size() && a.starts_with(name) && a[name.size()] == '=') {
        return argv[i] + name.size() + 1;
      }
      return nullptr;
    };
    if (const char* v = value("--listen")) {
      listen_arg = v;
    } else if (const char* v2 = value("--threads")) {
      threads = std::atoi(v2);
      if (threads < 1 || threads > 256)
        usage("--threads must be 1..256");
    } else if (a == "-h" || a == "--help") {
      usage("help");
    } else {
      usage("unknown argument");
    }
  }
  if (listen_arg.empty())
    usage("--listen is required");

  std::size_t colon = listen_arg.rfind(':');
  if (colon == std::string::npos)
    usage("--listen wants HOST:PORT");
  std::string host = listen_arg.substr(0, colon);
  std::string port = listen_arg.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* ai = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &ai);
      rc != 0) {
    std::fprintf(stderr, "fast_origin: bad --listen %s: %s\n", listen_arg.c_str(),
                 gai_strerror(rc));
    return 2;
  }

  signal(SIGPIPE, SIG_IGN);
  static const Responses responses;
  g_resp = &responses;

  // The first socket fixes the port (maybe chosen by the kernel); the others
  // join it with SO_REUSEPORT.
  sockaddr_storage addr{};
  std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
  socklen_t addr_len = ai->ai_addrlen;
  freeaddrinfo(ai);

  std::vector<int> fds;
  for (int t = 0; t < threads; ++t) {
    int fd = make_listener(reinterpret_cast<sockaddr*>(&addr), addr_len);
    if (fd < 0) {
      std::fprintf(stderr, "fast_origin: listen on %s: %s\n", listen_arg.c_str(),
                   std::strerror(errno));
      return 1;
    }
    if (t == 0) {
      socklen_t l = sizeof addr;
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &l);
      addr_len = l;
    }
    fds.push_back(fd);
  }

  char ip[INET6_ADDRSTRLEN] = {};
  unsigned bound_port = 0;
  if (addr.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
    bound_port = ntohs(sin->sin_port);
    std::printf("listening on %s:%u\n", ip, bound_port);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
    bound_port = ntohs(sin6->sin6_port);
    std::printf("listening on [%s]:%u\n", ip, bound_port);
  }
  std::fflush(stdout);

  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back([fd = fds[t]] { Worker(fd).run(); });
  }
  Worker(fds[0]).run();
}
