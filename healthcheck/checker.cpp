// A check is a small state machine per target, written as do_x / on_x pairs in file order:
// schedule -> do_connect -> on_connect -> on_write -> do_read -> on_read -> finish -> schedule.
// The target's one timer waits for the next check, then serves as the deadline of the check
// in flight. Every completion handler carries the generation it was started for: whatever
// finishes a check (the answer, an error, the deadline) bumps it, so the losers of a race find
// themselves stale and do nothing.
#include "healthcheck/checker.hpp"

#include "healthcheck/h2_check.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <string_view>
#include <tuple>

namespace lb::healthcheck {

namespace {

using boost::asio::ip::tcp;
using boost::system::error_code;

std::string describe(const error_code& ec) {
  if (ec == boost::asio::error::eof)
    return "connection closed";
  std::string text = ec.message();
  if (!text.empty())
    text[0] = char(std::tolower(static_cast<unsigned char>(text[0])));
  return text;
}

// The status code of a response beginning with `head`: > 0 the code, -1 when it cannot be an
// HTTP/1.x status line, 0 when it may be one but is too short. `complete`: no more bytes come.
int status_code(std::string_view head, bool complete) {
  static constexpr std::string_view prefix = "HTTP/1.";
  size_t n = std::min(head.size(), prefix.size());
  if (head.substr(0, n) != prefix.substr(0, n))
    return -1;
  // "HTTP/1.1 200" and then SP (the reason phrase), or the end of the line.
  if (head.size() < 13 && !(complete && head.size() == 12))
    return 0;
  auto digit = [&](size_t i) { return std::isdigit(static_cast<unsigned char>(head[i])) != 0; };
  bool ends = head.size() == 12 || head[12] == ' ' || head[12] == '\r' || head[12] == '\n';
  if (!digit(7) || head[8] != ' ' || !digit(9) || !digit(10) || !digit(11) || !ends)
    return -1;
  int code = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
  return code >= 100 ? code : -1;
}

bool expected(const config::HealthCheck& check, int code) {
  return std::any_of(
      check.expect_status.begin(), check.expect_status.end(),
      [code](const auto& range) { return range.first <= code && code <= range.second; });
}

std::string in_a_row(uint32_t n, const char* one, const char* many) {
  return n == 1 ? std::string("1 ") + one : std::to_string(n) + " consecutive " + many;
}

} // namespace

struct Checker::State {
  State(boost::asio::io_context& io, const Target& t)
      : target(t), socket(io), timer(io), ever_passed(t.start_healthy || t.start_ever_passed),
        healthy(t.start_healthy) {
    stats.healthy = t.start_healthy;
    if (target.check.type == config::HealthCheck::Type::http) {
      what = "GET " + target.check.path;
      request = what + " HTTP/1.1\r\nHost: " +
                (target.check.host.empty() ? target.label : target.check.host) +
                "\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n";
    } else if (target.check.type == config::HealthCheck::Type::grpc) {
      what = "gRPC Health/Check";
      if (!target.check.service.empty())
        what += " of " + target.check.service;
    } else {
      what = "connect";
    }
  }

  ~State() {
    if (ssl)
      SSL_free(ssl);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  Target target;
  std::string what;    // names the step after connecting in results: "GET /healthz"
  std::string request; // HTTP/1.1: built once; HTTP/2: this connection's next bytes to send
  tcp::socket socket;
  boost::asio::steady_timer timer; // the next check, then the deadline of the one in flight
  // The start of the response (13 bytes decide its status code), and room to
  // read past interim responses in few reads.
  std::array<char, 512> head{};
  size_t head_size = 0;
  // In an interim (1xx) response, looking for its end: the final response follows.
  bool in_interim = false;
  uint16_t line_length = 0; // of the interim head's line being read (CRs not counted)
  size_t interim_bytes = 0; // of interim responses so far, in this check
  uint64_t generation = 0;
  bool connected = false;
  SSL* ssl = nullptr;          // HTTPS checks: this check's TLS connection
  std::unique_ptr<H2Check> h2; // checks of a pool that speaks HTTP/2: this check's request
  size_t sent = 0;             // of `request`, over TLS
  uint32_t passes_in_row = 0;
  uint32_t failures_in_row = 0;
  bool ever_passed = false;
  bool healthy = false;
  TargetStats stats; // under stats_mutex_
};

Checker::Checker(std::vector<Target> targets, Report report)
    : report_(std::move(report)), work_(io_.get_executor()), random_(std::random_device{}()) {
  states_.reserve(targets.size());
  for (const auto& t : targets)
    states_.push_back(std::make_unique<State>(io_, t));
  rebuild_index();
}

void Checker::rebuild_index() {
  index_.clear();
  for (size_t i = 0; i < states_.size(); ++i)
    index_.push_back({{states_[i]->target.pool, states_[i]->target.backend}, i});
  std::sort(index_.begin(), index_.end());
}

void Checker::update(std::vector<Target> targets) {
  boost::asio::post(io_,
                    [this, targets = std::move(targets)]() mutable { apply(std::move(targets)); });
}

void Checker::apply(std::vector<Target> targets) {
  const auto now = Clock::now();
  std::lock_guard lock(stats_mutex_);
  std::vector<std::unique_ptr<State>> next;
  next.reserve(targets.size());
  for (auto& t : targets) {
    // The state of the same backend now, if any (index_ still maps states_).
    std::unique_ptr<State>* old = nullptr;
    auto it = std::lower_bound(index_.begin(), index_.end(),
                               std::pair{std::pair{t.pool, t.backend}, size_t(0)});
    if (it != index_.end() && it->first == std::pair{t.pool, t.backend} && states_[it->second])
      old = &states_[it->second];
    if (old) {
      const Target& o = (*old)->target;
      if (o.endpoint == t.endpoint && o.check == t.check && o.label == t.label &&
          o.tls_config == t.tls_config && bool(o.tls) == bool(t.tls) &&
          o.host_name == t.host_name && o.http2 == t.http2) {
        next.push_back(std::move(*old));
        continue;
      }
    }
    // Transitions of the targets replaced here have all been reported by now
    // (on this thread): the proxy's view of the backend is current.
    if (t.current)
      std::tie(t.start_healthy, t.start_ever_passed) = t.current();
    auto& fresh = next.emplace_back(std::make_unique<State>(io_, t));
    // The same backend with another check (a reload changed it): its counts go
    // on, as counters must.
    if (old) {
      fresh->stats.passes = (*old)->stats.passes;
      fresh->stats.failures = (*old)->stats.failures;
    }
    // A backend a reload or DNS change adds takes no traffic before its first
    // check passes: check it at once (spread over a few ms only).
    schedule_first(*next.back(), now, std::chrono::milliseconds(20));
  }
  for (auto& s : states_) {
    if (!s)
      continue;
    ++s->generation; // whatever is in flight ends stale
    error_code ignored;
    s->socket.close(ignored);
    s->timer.cancel();
    retired_.emplace_back(now, std::move(s));
  }
  std::erase_if(retired_,
                [now](const auto& r) { return now - r.first > std::chrono::seconds(10); });
  states_ = std::move(next);
  rebuild_index();
}

void Checker::schedule_first(State& s, Clock::time_point now, std::chrono::milliseconds cap) {
  // Spread over interval/10 (at most `cap`), so that a thousand targets do not
  // all connect at once.
  auto window = std::min(std::chrono::duration<double>(s.target.check.interval) / 10,
                         std::chrono::duration<double>(cap));
  auto spread = window * std::uniform_real_distribution<double>(0, 1)(random_);
  schedule(s, now + std::chrono::duration_cast<Clock::duration>(spread));
}

Checker::~Checker() { stop(); }

void Checker::start() {
  std::lock_guard lock(thread_mutex_);
  if (started_ || stopped_)
    return;
  started_ = true;
  // The thread does not run yet: touching the timers here is safe.
  const auto now = Clock::now();
  // Backends take no traffic before their first check passes (unless
  // fail_open): even with a long interval, every first check comes within 1 s.
  for (auto& s : states_)
    schedule_first(*s, now, std::chrono::seconds(1));
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "lb-health");
    io_.run();
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    final_cpu_ns_.store(int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec);
  });
  native_ = thread_.native_handle();
}

void Checker::stop() {
  std::lock_guard lock(thread_mutex_);
  if (stopped_)
    return;
  stopped_ = true;
  io_.stop();
  if (thread_.joinable())
    thread_.join();
}

std::vector<TargetStats> Checker::stats() const {
  std::lock_guard lock(stats_mutex_);
  std::vector<TargetStats> all;
  all.reserve(states_.size());
  for (const auto& s : states_) {
    all.push_back(s->stats);
    all.back().pool = s->target.pool;
    all.back().backend = s->target.backend;
  }
  return all;
}

std::chrono::nanoseconds Checker::cpu_time() const {
  std::lock_guard lock(thread_mutex_);
  clockid_t clock{};
  timespec ts{};
  if (started_ && !stopped_ && pthread_getcpuclockid(native_, &clock) == 0 &&
      clock_gettime(clock, &ts) == 0)
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  return std::chrono::nanoseconds(final_cpu_ns_.load());
}

// ---- one check, on the checker thread ---------------------------------------------------------

void Checker::schedule(State& s, Clock::time_point when) {
  const uint64_t g = ++s.generation;
  s.timer.expires_at(when);
  s.timer.async_wait([this, &s, g](const error_code& ec) {
    if (!ec && g == s.generation)
      do_connect(s);
  });
}

void Checker::do_connect(State& s) {
  const uint64_t g = ++s.generation;
  s.connected = false;
  s.head_size = 0;
  s.in_interim = false;
  s.interim_bytes = 0;
  error_code ec;
  s.socket.open(s.target.endpoint.protocol(), ec);
  if (ec)
    return finish(s, false, "socket: " + describe(ec));
  s.timer.expires_after(s.target.check.timeout);
  s.timer.async_wait([this, &s, g](const error_code& ec) {
    if (!ec && g == s.generation)
      on_timeout(s);
  });
  s.socket.async_connect(s.target.endpoint, [this, &s, g](const error_code& ec) {
    if (g == s.generation)
      on_connect(s, ec);
  });
}

void Checker::on_connect(State& s, const error_code& ec) {
  if (ec)
    return finish(s, false, "connect: " + describe(ec));
  s.connected = true;
  const auto& check = s.target.check;
  if (check.type == config::HealthCheck::Type::grpc)
    s.h2 = std::make_unique<H2Check>(H2Check::Kind::grpc, check.service, s.target.label,
                                     s.target.tls != nullptr);
  else if (check.type == config::HealthCheck::Type::http && s.target.http2)
    s.h2 = std::make_unique<H2Check>(H2Check::Kind::get, check.path,
                                     check.host.empty() ? s.target.label : check.host,
                                     s.target.tls != nullptr);
  if (s.h2)
    s.request = s.h2->request();
  // Close with a reset, as HAProxy's checks do: no TIME_WAIT left behind per check.
  error_code ignored;
  s.socket.set_option(tcp::socket::linger(true, 0), ignored);
  if (s.target.tls) {
    s.socket.non_blocking(true, ignored);
    s.ssl = s.target.tls->connect(s.socket.native_handle(), s.target.host_name,
                                  s.target.endpoint.address().to_string());
    if (!s.ssl)
      return finish(s, false, "TLS: cannot set up a connection");
    s.sent = 0;
    return tls_handshake(s);
  }
  if (s.target.check.type == config::HealthCheck::Type::tcp)
    return finish(s, true, "connect: ok");
  do_write(s);
}

void Checker::do_write(State& s) {
  s.sent = 0;
  if (s.ssl)
    return tls_write(s);
  const uint64_t g = s.generation;
  boost::asio::async_write(s.socket, boost::asio::buffer(s.request),
                           [this, &s, g](const error_code& ec, size_t) {
                             if (g == s.generation)
                               on_write(s, ec);
                           });
}

void Checker::on_write(State& s, const error_code& ec) {
  if (ec)
    return finish(s, false, s.what + ": " + describe(ec));
  do_read(s);
}

// HTTPS checks: the same steps over OpenSSL on the non-blocking socket, each
// waiting for the socket when OpenSSL asks to.
void Checker::tls_wait(State& s, int ssl_error, void (Checker::*next)(State&)) {
  const uint64_t g = s.generation;
  s.socket.async_wait(ssl_error == SSL_ERROR_WANT_WRITE ? tcp::socket::wait_write
                                                        : tcp::socket::wait_read,
                      [this, &s, g, next](const error_code& ec) {
                        if (g != s.generation)
                          return;
                        if (ec)
                          return finish(s, false, s.what + ": " + describe(ec));
                        (this->*next)(s);
                      });
}

void Checker::tls_handshake(State& s) {
  ERR_clear_error();
  int r = SSL_do_handshake(s.ssl);
  if (r == 1) {
    if (s.target.check.type == config::HealthCheck::Type::tcp)
      return finish(s, true, "TLS handshake: ok");
    return tls_write(s);
  }
  int e = SSL_get_error(s.ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
    return tls_wait(s, e, &Checker::tls_handshake);
  finish(s, false, "TLS handshake: " + io::TlsClient::failure(s.ssl));
}

void Checker::tls_write(State& s) {
  while (s.sent < s.request.size()) {
    ERR_clear_error();
    int r = SSL_write(s.ssl, s.request.data() + s.sent, int(s.request.size() - s.sent));
    if (r > 0) {
      s.sent += size_t(r);
      continue;
    }
    int e = SSL_get_error(s.ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      return tls_wait(s, e, &Checker::tls_write);
    return finish(s, false, s.what + ": TLS write failed");
  }
  tls_read(s);
}

void Checker::tls_read(State& s) {
  // A loop, not recursion: OpenSSL may hold many records already read.
  for (;;) {
    ERR_clear_error();
    int r = SSL_read(s.ssl, s.head.data() + s.head_size, int(s.head.size() - s.head_size));
    if (r > 0) {
      if (on_read(s, {}, size_t(r)))
        continue;
      return;
    }
    int e = SSL_get_error(s.ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      return tls_wait(s, e, &Checker::tls_read);
    bool eof = e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0);
    on_read(s,
            eof ? error_code(boost::asio::error::eof)
                : error_code(boost::asio::error::connection_reset),
            0);
    return;
  }
}

void Checker::do_read(State& s) {
  if (s.ssl)
    return tls_read(s);
  const uint64_t g = s.generation;
  s.socket.async_read_some(
      boost::asio::buffer(s.head.data() + s.head_size, s.head.size() - s.head_size),
      [this, &s, g](const error_code& ec, size_t n) {
        if (g == s.generation && on_read(s, ec, n))
          do_read(s);
      });
}

// Consumes the bytes of `head` that belong to the interim response being
// skipped. True when it ended: the bytes after it (the start of the next
// response) are moved to the front.
bool Checker::skip_interim(State& s) {
  for (size_t i = 0; i < s.head_size; ++i) {
    const char c = s.head[i];
    if (c == '\r')
      continue;
    if (c != '\n') {
      s.line_length = uint16_t(std::min(s.line_length + 1, 1000));
      continue;
    }
    if (s.line_length > 0) {
      s.line_length = 0;
      continue;
    }
    // The empty line that ends the interim head.
    s.interim_bytes += i + 1;
    std::copy(s.head.begin() + i + 1, s.head.begin() + s.head_size, s.head.begin());
    s.head_size -= i + 1;
    s.in_interim = false;
    return true;
  }
  s.interim_bytes += s.head_size;
  s.head_size = 0;
  return false;
}

bool Checker::on_read(State& s, const error_code& ec, size_t n) {
  // Interim responses (100 Continue, 103 Early Hints) come before the final one, which decides
  // (RFC 9110 §15.2): they are skipped, within a bound, as the proxy bounds a response head.
  static constexpr size_t max_interim_bytes = 64 * 1024;
  auto end = [&](bool passed, std::string result) {
    finish(s, passed, std::move(result));
    return false;
  };
  if (s.h2) {
    // HTTP/2: every byte goes to the request, which says when the answer is known.
    if (n && s.h2->feed(s.head.data(), n)) {
      if (s.target.check.type == config::HealthCheck::Type::grpc)
        return end(s.h2->passed(), s.what + ": " + s.h2->result());
      int code = s.h2->http_status();
      return end(code > 0 && expected(s.target.check, code), s.what + ": " + s.h2->result());
    }
    s.head_size = 0;
    if (ec == boost::asio::error::eof)
      return end(false, s.what + ": connection closed without an answer");
    if (ec)
      return end(false, s.what + ": " + describe(ec));
    // What the backend's frames ask back (the acknowledgement of its
    // SETTINGS, which it may wait for: RFC 9113 §6.5.3) goes out before
    // reading on.
    if (s.h2->take_output(s.request)) {
      do_write(s);
      return false;
    }
    return true;
  }
  s.head_size += n;
  for (;;) {
    const bool whole = !s.in_interim || skip_interim(s);
    if (s.interim_bytes > max_interim_bytes)
      return end(false, s.what + ": interim responses longer than 64 KiB");
    if (!whole) {
      if (ec == boost::asio::error::eof)
        return end(false, s.what + ": connection closed after an interim response");
      if (ec)
        return end(false, s.what + ": " + describe(ec));
      return true;
    }
    int code = status_code({s.head.data(), s.head_size}, bool(ec));
    if (code == 0 && s.head_size == s.head.size()) // cannot happen: 13 bytes decide
      code = -1;
    if (code >= 100 && code < 200 && code != 101) {
      s.in_interim = true;
      s.line_length = 0;
      continue;
    }
    if (code > 0)
      return end(expected(s.target.check, code), s.what + ": status " + std::to_string(code));
    if (code < 0)
      return end(false, s.what + ": not an HTTP/1.x response");
    if (ec == boost::asio::error::eof)
      return end(false,
                 s.what + (s.head_size > 0       ? ": connection closed in the status line"
                           : s.interim_bytes > 0 ? ": connection closed after an interim response"
                                                 : ": connection closed without a response"));
    if (ec)
      return end(false, s.what + ": " + describe(ec));
    return true;
  }
}

void Checker::on_timeout(State& s) {
  finish(s, false,
         std::string(s.connected ? s.what : "connect") + ": timeout after " +
             std::to_string(s.target.check.timeout.count()) + "ms");
}

void Checker::finish(State& s, bool passed, std::string result) {
  if (s.ssl) {
    SSL_free(s.ssl);
    s.ssl = nullptr;
  }
  s.h2.reset();
  error_code ignored;
  s.socket.close(ignored); // its pending operations end stale: schedule() bumps the generation
  schedule(s, Clock::now() + jittered(s.target.check.interval));

  const auto& check = s.target.check;
  const bool was_healthy = s.healthy;
  std::string why;
  if (passed) {
    s.failures_in_row = 0;
    ++s.passes_in_row;
    if (!was_healthy && !s.ever_passed)
      why = " (first check passed)";
    else if (!was_healthy && s.passes_in_row >= check.healthy_threshold)
      why = " (" + in_a_row(s.passes_in_row, "pass", "passes") + ")";
    s.ever_passed = true;
  } else {
    s.passes_in_row = 0;
    ++s.failures_in_row;
    if (was_healthy && s.failures_in_row >= check.unhealthy_threshold)
      why = " (" + in_a_row(s.failures_in_row, "failure", "failures") + ")";
  }
  const bool flips = !why.empty();
  if (flips)
    s.healthy = !was_healthy;

  Transition transition{s.target.pool, s.target.backend, !was_healthy, flips ? result + why : ""};
  {
    std::lock_guard lock(stats_mutex_);
    ++(passed ? s.stats.passes : s.stats.failures);
    s.stats.healthy = s.healthy;
    s.stats.last_result = std::move(result);
  }
  if (flips && report_)
    report_(transition);
}

Checker::Clock::duration Checker::jittered(Clock::duration interval) {
  double factor = std::uniform_real_distribution<double>(0.9, 1.1)(random_);
  return std::chrono::duration_cast<Clock::duration>(interval * factor);
}

} // namespace lb::healthcheck
