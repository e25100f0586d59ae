// rate_client: an open-loop HTTP/1.1 load generator for latency at a fixed rate.
//
//   rate_client --target HOST:PORT [--path /] [--connections 64] [--rate 20000]
//               [--duration 5] [--warmup 1]
//
// wrk is closed-loop: each connection sends its next request when the last
// response arrives, so the proxy under test sets the pace and a stall delays
// the requests that would have been sent meanwhile instead of showing up in
// the latency ("coordinated omission"). Here requests are due on a fixed
// schedule, `rate` per second spread evenly, taken in turn by the
// connections; each connection has one request in flight at most (no
// pipelining) and a request that finds its connection busy waits for it.
// Latency is measured from the time the request was due, so time spent
// waiting behind a slow response counts.
//
// Responses must carry Content-Length (what fast_origin sends). A failed
// connection counts its requests as errors and is opened again.
//
// Prints one line per run, for scripts:
//   RESULT due=N done=N errors=N rate=R all_done=N elapsed_s=S
//          p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..
// where due, done, errors, rate and the latencies are of the measured window
// (the warm-up is neither timed nor counted), and all_done and elapsed_s
// cover the whole run, warm-up included.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using ns = std::chrono::nanoseconds;

constexpr size_t kReadSize = 64 * 1024;
constexpr uint64_t kMaxBucketUs = 2'000'000; // latencies above 2 s share the last bucket

struct Options {
  sockaddr_in target{};
  std::string host;
  std::string path = "/";
  unsigned connections = 64;
  double rate = 20000;
  double duration = 5;
  double warmup = 1;
};

struct Histogram {
  std::vector<uint64_t> counts = std::vector<uint64_t>(kMaxBucketUs + 1);
  uint64_t total = 0;
  uint64_t max_us = 0;
  void add(uint64_t us) {
    max_us = std::max(max_us, us);
    ++counts[std::min(us, kMaxBucketUs)];
    ++total;
  }
  uint64_t percentile(double p) const {
    if (total == 0)
      return 0;
    auto want = static_cast<uint64_t>(p / 100.0 * static_cast<double>(total) + 0.5);
    want = std::clamp<uint64_t>(want, 1, total);
    uint64_t seen = 0;
    for (uint64_t us = 0; us <= kMaxBucketUs; ++us) {
      seen += counts[us];
      if (seen >= want)
        return us;
    }
    return kMaxBucketUs;
  }
};

struct Connection {
  int fd = -1;
  bool connected = false;
  bool in_flight = false;
  std::deque<Clock::time_point> due; // front: the request in flight or next to send
  std::string in;                    // response bytes not consumed yet
  size_t sent = 0;                   // of the request in flight
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "rate_client: %s\nusage: rate_client --target HOST:PORT [--path /] "
               "[--connections N] [--rate R] [--duration S] [--warmup S]\n",
               why);
  std::exit(2);
}

Options parse_options(int argc, char** argv) {
  Options o;
  bool have_target = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (i + 1 >= argc)
      usage("missing value after an option");
    const char* v = argv[++i];
    if (a == "--target") {
      std::string t = v;
      auto colon = t.rfind(':');
      if (colon == std::string::npos)
        usage("--target wants HOST:PORT");
      o.host = t;
      o.target.sin_family = AF_INET;
      o.target.sin_port = htons(static_cast<uint16_t>(std::atoi(t.c_str() + colon + 1)));
      if (inet_pton(AF_INET, t.substr(0, colon).c_str(), &o.target.sin_addr) != 1)
        usage("--target wants a numeric IPv4 address");
      have_target = true;
    } else if (a == "--path") {
      o.path = v;
    } else if (a == "--connections") {
      o.connections = static_cast<unsigned>(std::atoi(v));
    } else if (a == "--rate") {
      o.rate = std::atof(v);
    } else if (a == "--duration") {
      o.duration = std::atof(v);
    } else if (a == "--warmup") {
      o.warmup = std::atof(v);
    } else {
      usage("unknown option");
    }
  }
  if (!have_target)
    usage("--target is required");
  if (o.connections == 0 || o.rate <= 0 || o.duration <= 0 || o.warmup < 0)
    usage("connections, rate and duration must be positive");
  return o;
}

class Client {
public:
  explicit Client(const Options& o) : o_(o), conns_(o.connections) {
    request_ =
        "GET " + o.path + " HTTP/1.1\r\nHost: " + o.host + "\r\nUser-Agent: rate_client\r\n\r\n";
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0)
      fail("epoll_create1");
    for (auto& c : conns_)
      open(c);
  }

  int run() {
    const auto start = Clock::now();
    const auto period = ns(static_cast<int64_t>(1e9 / o_.rate));
    measure_from_ = start + ns(static_cast<int64_t>(o_.warmup * 1e9));
    const auto end = measure_from_ + ns(static_cast<int64_t>(o_.duration * 1e9));
    int64_t next = 0; // index of the next request due
    epoll_event events[256];
    for (;;) {
      auto now = Clock::now();
      // Every request due by now joins its connection's queue.
      for (auto when = start + period * next; when <= now && when < end;
           when = start + period * ++next) {
        Connection& c = conns_[static_cast<size_t>(next) % conns_.size()];
        if (when >= measure_from_)
          ++due_;
        c.due.push_back(when);
        if (!c.in_flight && c.connected)
          send(c);
      }
      auto next_due = start + period * next;
      if (next_due >= end && idle())
        break;
      if (now > end + std::chrono::seconds(2))
        break; // what is still out counts as errors
      auto wait = std::min(next_due, end + std::chrono::seconds(2)) - now;
      timespec ts{};
      auto wait_ns = std::max<int64_t>(0, std::chrono::duration_cast<ns>(wait).count());
      ts.tv_sec = wait_ns / 1'000'000'000;
      ts.tv_nsec = wait_ns % 1'000'000'000;
      int n = epoll_pwait2(epoll_, events, 256, &ts, nullptr);
      if (n < 0 && errno != EINTR)
        fail("epoll_pwait2");
      for (int i = 0; i < n; ++i) {
        auto& c = conns_[events[i].data.u32];
        if (events[i].events & (EPOLLERR | EPOLLHUP)) {
          broken(c);
          continue;
        }
        if (events[i].events & EPOLLOUT)
          writable(c);
        if (events[i].events & EPOLLIN)
          readable(c);
      }
    }
    for (auto& c : conns_)
      for (auto when : c.due)
        if (when >= measure_from_)
          ++errors_;
    double seconds = o_.duration;
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("RESULT due=%llu done=%llu errors=%llu rate=%.0f all_done=%llu elapsed_s=%.3f "
                "p50_us=%llu p90_us=%llu p99_us=%llu p999_us=%llu max_us=%llu\n",
                (unsigned long long)due_, (unsigned long long)hist_.total,
                (unsigned long long)errors_, double(hist_.total) / seconds,
                (unsigned long long)all_done_, elapsed, (unsigned long long)hist_.percentile(50),
                (unsigned long long)hist_.percentile(90), (unsigned long long)hist_.percentile(99),
                (unsigned long long)hist_.percentile(99.9), (unsigned long long)hist_.max_us);
    return 0;
  }

private:
  [[noreturn]] static void fail(const char* what) {
    std::fprintf(stderr, "rate_client: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
  }

  bool idle() const {
    for (const auto& c : conns_)
      if (!c.due.empty())
        return false;
    return true;
  }

  void open(Connection& c) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0)
      fail("socket");
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.connected = false;
    c.in_flight = false;
    c.in.clear();
    int r = connect(c.fd, reinterpret_cast<const sockaddr*>(&o_.target), sizeof o_.target);
    if (r < 0 && errno != EINPROGRESS)
      fail("connect");
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.u32 = static_cast<uint32_t>(&c - conns_.data());
    if (epoll_ctl(epoll_, EPOLL_CTL_ADD, c.fd, &ev) < 0)
      fail("epoll_ctl");
  }

  // The connection failed: its request in flight is an error; the queued ones
  // go out on a new connection.
  void broken(Connection& c) {
    if (c.in_flight && !c.due.empty()) {
      if (c.due.front() >= measure_from_)
        ++errors_;
      c.due.pop_front();
    }
    close(c.fd);
    open(c);
  }

  void writable(Connection& c) {
    if (!c.connected) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err)
        return broken(c);
      c.connected = true;
      if (!c.due.empty())
        send(c);
      return;
    }
    if (c.in_flight && c.sent < request_.size())
      send(c);
  }

  void send(Connection& c) {
    if (!c.in_flight) {
      c.in_flight = true;
      c.sent = 0;
    }
    while (c.sent < request_.size()) {
      ssize_t n = ::send(c.fd, request_.data() + c.sent, request_.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return; // EPOLLOUT resumes
      return broken(c);
    }
  }

  void readable(Connection& c) {
    char buf[kReadSize];
    for (;;) {
      ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) {
        c.in.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        break;
      return broken(c); // closed or reset
    }
    while (c.in_flight) {
      size_t head_end = c.in.find("\r\n\r\n");
      if (head_end == std::string::npos)
        return;
      size_t body = content_length(std::string_view(c.in).substr(0, head_end));
      if (body == std::string::npos)
        return broken(c);
      size_t total = head_end + 4 + body;
      if (c.in.size() < total)
        return;
      bool ok = c.in.compare(0, 9, "HTTP/1.1 ") == 0 && c.in[9] == '2';
      c.in.erase(0, total);
      auto when = c.due.front();
      c.due.pop_front();
      c.in_flight = false;
      ++all_done_;
      if (when >= measure_from_) {
        if (ok) {
          auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - when);
          hist_.add(static_cast<uint64_t>(std::max<int64_t>(0, us.count())));
        } else {
          ++errors_;
        }
      }
      if (!c.due.empty())
        send(c);
    }
  }

  static size_t content_length(std::string_view head) {
    size_t pos = 0;
    while ((pos = head.find("\r\n", pos)) != std::string_view::npos) {
      pos += 2;
      static constexpr std::string_view name = "content-length:";
      if (head.size() - pos < name.size())
        break;
      bool match = true;
      for (size_t i = 0; i < name.size() && match; ++i)
        match = std::tolower(static_cast<unsigned char>(head[pos + i])) == name[i];
      if (match)
        return std::strtoull(head.data() + pos + name.size(), nullptr, 10);
    }
    return std::string::npos;
  }

  const Options& o_;
  std::vector<Connection> conns_;
  std::string request_;
  int epoll_ = -1;
  Clock::time_point measure_from_{};
  Histogram hist_;
  uint64_t due_ = 0;
  uint64_t errors_ = 0;
  uint64_t all_done_ = 0; // warm-up included: the proxy's CPU time covers it too
};

} // namespace

int main(int argc, char** argv) {
  Options o = parse_options(argc, argv);
  // Wake up at the due times, not up to 50 us later (the default timer slack).
  prctl(PR_SET_TIMERSLACK, 1UL);
  Client client(o);
  return client.run();
}
