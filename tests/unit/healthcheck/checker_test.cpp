#include "healthcheck/checker.hpp"

#include <gtest/gtest.h>

#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using asio::ip::tcp;
using lb::config::HealthCheck;
using lb::healthcheck::Checker;
using lb::healthcheck::Target;
using lb::healthcheck::TargetStats;
using lb::healthcheck::Transition;
using Clock = std::chrono::steady_clock;

namespace {

// A tiny HTTP origin on 127.0.0.1 and its own thread: reads a request head, answers it with
// the current status and an empty body, closes. Status 0: reads the head and never answers;
// status -1: answers with the bytes given to set_raw().
class Origin {
public:
  explicit Origin(int status) : status_(status) {
    do_accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Origin() {
    io_.stop();
    thread_.join();
  }

  uint16_t port() const { return port_; }
  void set_status(int status) { status_ = status; }
  void set_raw(std::string bytes) {
    std::lock_guard lock(mutex_);
    raw_ = std::move(bytes);
    status_ = -1;
  }

  int requests() const {
    std::lock_guard lock(mutex_);
    return int(requests_.size());
  }
  std::string request(size_t i) const {
    std::lock_guard lock(mutex_);
    return i < requests_.size() ? requests_[i].first : "";
  }
  Clock::time_point request_time(size_t i) const {
    std::lock_guard lock(mutex_);
    return i < requests_.size() ? requests_[i].second : Clock::time_point{};
  }
  int answered(int status) const {
    std::lock_guard lock(mutex_);
    auto it = answered_.find(status);
    return it == answered_.end() ? 0 : it->second;
  }

private:
  void do_accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec)
        return;
      serve(std::make_shared<tcp::socket>(std::move(socket)));
      do_accept();
    });
  }

  void serve(std::shared_ptr<tcp::socket> socket) {
    auto head = std::make_shared<std::string>();
    asio::async_read_until(*socket, asio::dynamic_buffer(*head), "\r\n\r\n",
                           [this, socket, head](boost::system::error_code ec, size_t n) {
                             if (ec)
                               return;
                             int status = status_;
                             auto response = std::make_shared<std::string>(
                                 "HTTP/1.1 " + std::to_string(status) +
                                 " Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                             {
                               std::lock_guard lock(mutex_);
                               requests_.emplace_back(head->substr(0, n), Clock::now());
                               if (status != 0)
                                 ++answered_[status];
                               if (status == -1)
                                 *response = raw_;
                             }
                             if (status == 0) {
                               silent_.push_back(socket);
                               return;
                             }
                             asio::async_write(
                                 *socket, asio::buffer(*response),
                                 [socket, response](boost::system::error_code, size_t) {
                                   boost::system::error_code ignored;
                                   socket->shutdown(tcp::socket::shutdown_send, ignored);
                                 });
                           });
  }

  asio::io_context io_;
  tcp::acceptor acceptor_{io_, {asio::ip::make_address("127.0.0.1"), 0}};
  uint16_t port_ = acceptor_.local_endpoint().port();
  std::atomic<int> status_;
  mutable std::mutex mutex_;
  std::vector<std::pair<std::string, Clock::time_point>> requests_;
  std::map<int, int> answered_;
  std::string raw_;
  std::vector<std::shared_ptr<tcp::socket>> silent_; // io thread only
  std::thread thread_;
};

// A port on 127.0.0.1 where nothing listens.
uint16_t free_port() {
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  return acceptor.local_endpoint().port();
}

HealthCheck http_check(std::chrono::milliseconds interval, std::chrono::milliseconds timeout) {
  HealthCheck check;
  check.enabled = true;
  check.interval = interval;
  check.timeout = timeout;
  return check;
}

Target target(uint16_t port, const HealthCheck& check, size_t backend = 0) {
  Target t;
  t.pool = 0;
  t.backend = backend;
  t.endpoint = {asio::ip::make_address("127.0.0.1"), port};
  t.label = "127.0.0.1:" + std::to_string(port);
  t.check = check;
  return t;
}

// Polls `condition` until it holds or `timeout` passes; returns whether it held.
template <class Condition> bool eventually(Condition condition, Clock::duration timeout) {
  auto end = Clock::now() + timeout;
  while (!condition()) {
    if (Clock::now() > end)
      return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Collects the transitions a Checker reports, with what `probe` said at that moment.
class Recorder {
public:
  explicit Recorder(std::function<int()> probe = {}) : probe_(std::move(probe)) {}

  Checker::Report report() {
    return [this](const Transition& t) {
      int seen = probe_ ? probe_() : 0;
      std::lock_guard lock(mutex_);
      transitions_.push_back({t, seen});
      changed_.notify_all();
    };
  }

  // Waits until `n` transitions were reported or `timeout` passed; returns them all.
  std::vector<std::pair<Transition, int>> wait(size_t n, Clock::duration timeout) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return transitions_.size() >= n; });
    return transitions_;
  }

private:
  std::function<int()> probe_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<Transition, int>> transitions_;
};

} // namespace

TEST(Checker, TargetAnswering200BecomesHealthyAtItsFirstCheck) {
  Origin origin(200);
  Recorder recorder;
  Checker checker({target(origin.port(), http_check(100ms, 100ms), 7)}, recorder.report());
  EXPECT_FALSE(checker.stats().at(0).healthy); // every target starts unhealthy
  checker.start();
  auto transitions = recorder.wait(1, 3s);
  ASSERT_EQ(transitions.size(), 1u);
  const Transition& t = transitions[0].first;
  EXPECT_EQ(t.pool, 0u);
  EXPECT_EQ(t.backend, 7u);
  EXPECT_TRUE(t.healthy);
  EXPECT_EQ(t.reason, "GET /healthz: status 200 (first check passed)");
  EXPECT_EQ(origin.request(0),
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(origin.port()) +
                "\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n");
  TargetStats stats = checker.stats().at(0);
  EXPECT_TRUE(stats.healthy);
  EXPECT_GE(stats.passes, 1u);
  EXPECT_EQ(stats.failures, 0u);
  EXPECT_EQ(stats.last_result, "GET /healthz: status 200");
  // It keeps checking every interval.
  EXPECT_TRUE(eventually([&] { return origin.requests() >= 4; }, 3s));
  EXPECT_EQ(recorder.wait(2, 0s).size(), 1u);
}

TEST(Checker, PathAndHostHeaderComeFromTheCheck) {
  Origin origin(200);
  HealthCheck check = http_check(100ms, 100ms);
  check.path = "/ready?deep=1";
  check.host = "app.internal";
  Recorder recorder;
  Checker checker({target(origin.port(), check)}, recorder.report());
  checker.start();
  ASSERT_EQ(recorder.wait(1, 3s).size(), 1u);
  EXPECT_EQ(origin.request(0), "GET /ready?deep=1 HTTP/1.1\r\nHost: app.internal\r\n"
                               "User-Agent: lb-health-check\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(checker.stats().at(0).last_result, "GET /ready?deep=1: status 200");
}

TEST(Checker, TargetAnswering503StaysUnhealthy) {
  Origin origin(503);
  Recorder recorder;
  Checker checker({target(origin.port(), http_check(50ms, 50ms))}, recorder.report());
  checker.start();
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= 4; }, 3s));
  TargetStats stats = checker.stats().at(0);
  EXPECT_FALSE(stats.healthy);
  EXPECT_EQ(stats.passes, 0u);
  EXPECT_EQ(stats.last_result, "GET /healthz: status 503");
  EXPECT_TRUE(recorder.wait(1, 0s).empty());
}

TEST(Checker, FallsAfterUnhealthyThresholdAndRisesAfterHealthyThreshold) {
  Origin origin(200);
  HealthCheck check = http_check(50ms, 50ms);
  check.unhealthy_threshold = 3;
  check.healthy_threshold = 2;
  std::atomic<int> counted_status{503};
  Recorder recorder([&] { return origin.answered(counted_status); });
  Checker checker({target(origin.port(), check)}, recorder.report());
  checker.start();
  ASSERT_EQ(recorder.wait(1, 3s).size(), 1u);

  origin.set_status(503);
  auto transitions = recorder.wait(2, 3s);
  ASSERT_EQ(transitions.size(), 2u);
  EXPECT_FALSE(transitions[1].first.healthy);
  EXPECT_EQ(transitions[1].first.reason, "GET /healthz: status 503 (3 consecutive failures)");
  EXPECT_EQ(transitions[1].second, 3) << "503s answered when it became unhealthy";

  // From here on the probe counts the 200s answered after the switch back.
  int before = origin.answered(200);
  counted_status = 200;
  origin.set_status(200);
  transitions = recorder.wait(3, 3s);
  ASSERT_EQ(transitions.size(), 3u);
  EXPECT_TRUE(transitions[2].first.healthy);
  EXPECT_EQ(transitions[2].first.reason, "GET /healthz: status 200 (2 consecutive passes)");
  EXPECT_EQ(transitions[2].second - before, 2) << "200s answered when it became healthy again";
  EXPECT_TRUE(checker.stats().at(0).healthy);
}

TEST(Checker, ThresholdsOfOneSayOneFailureAndOnePass) {
  Origin origin(200);
  HealthCheck check = http_check(50ms, 50ms);
  check.unhealthy_threshold = 1;
  check.healthy_threshold = 1;
  Recorder recorder;
  Checker checker({target(origin.port(), check)}, recorder.report());
  checker.start();
  ASSERT_EQ(recorder.wait(1, 3s).size(), 1u);
  origin.set_status(500);
  ASSERT_EQ(recorder.wait(2, 3s).size(), 2u);
  origin.set_status(200);
  auto transitions = recorder.wait(3, 3s);
  ASSERT_EQ(transitions.size(), 3u);
  EXPECT_EQ(transitions[1].first.reason, "GET /healthz: status 500 (1 failure)");
  EXPECT_EQ(transitions[2].first.reason, "GET /healthz: status 200 (1 pass)");
}

TEST(Checker, RefusedConnectionIsAFailureNamingConnect) {
  Recorder recorder;
  Checker checker({target(free_port(), http_check(50ms, 50ms))}, recorder.report());
  checker.start();
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= 2; }, 3s));
  EXPECT_EQ(checker.stats().at(0).last_result, "connect: connection refused");
  EXPECT_FALSE(checker.stats().at(0).healthy);
  EXPECT_TRUE(recorder.wait(1, 0s).empty()); // it never was healthy: nothing to report
}

TEST(Checker, BackendThatGoesAwayBecomesUnhealthy) {
  auto origin = std::make_unique<Origin>(200);
  Recorder recorder;
  Checker checker({target(origin->port(), http_check(50ms, 50ms))}, recorder.report());
  checker.start();
  ASSERT_EQ(recorder.wait(1, 3s).size(), 1u);
  origin.reset();
  auto transitions = recorder.wait(2, 3s);
  ASSERT_EQ(transitions.size(), 2u);
  EXPECT_FALSE(transitions[1].first.healthy);
  EXPECT_EQ(transitions[1].first.reason, "connect: connection refused (3 consecutive failures)");
}

TEST(Checker, ServerThatNeverAnswersFailsAfterTheTimeout) {
  Origin origin(0);
  Recorder recorder;
  Checker checker({target(origin.port(), http_check(300ms, 100ms))}, recorder.report());
  checker.start();
  ASSERT_TRUE(eventually([&] { return origin.requests() >= 1; }, 3s));
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= 1; }, 3s));
  auto failed_after = Clock::now() - origin.request_time(0);
  EXPECT_GE(failed_after, 80ms); // the request arrived a little after the check started
  EXPECT_LT(failed_after, 1s);
  EXPECT_EQ(checker.stats().at(0).last_result, "GET /healthz: timeout after 100ms");
  EXPECT_TRUE(recorder.wait(1, 0s).empty());
}

TEST(Checker, TcpCheckPassesOnAListeningPort) {
  Origin origin(200);
  HealthCheck check = http_check(50ms, 50ms);
  check.type = HealthCheck::Type::tcp;
  Recorder recorder;
  Checker checker({target(origin.port(), check, 0), target(free_port(), check, 1)},
                  recorder.report());
  checker.start();
  auto transitions = recorder.wait(1, 3s);
  ASSERT_EQ(transitions.size(), 1u);
  EXPECT_EQ(transitions[0].first.backend, 0u);
  EXPECT_EQ(transitions[0].first.reason, "connect: ok (first check passed)");
  ASSERT_TRUE(eventually([&] { return checker.stats().at(1).failures >= 2; }, 3s));
  EXPECT_EQ(checker.stats().at(1).last_result, "connect: connection refused");
  EXPECT_FALSE(checker.stats().at(1).healthy);
  EXPECT_EQ(origin.requests(), 0); // a tcp check sends nothing
  EXPECT_EQ(recorder.wait(2, 0s).size(), 1u);
}

TEST(Checker, ExpectStatusRanges) {
  Origin no_content(204);
  Origin redirect(302);
  Origin not_found(404);
  auto check = [](std::vector<std::pair<int, int>> ranges) {
    HealthCheck c = http_check(50ms, 50ms);
    c.expect_status = std::move(ranges);
    return c;
  };
  Recorder recorder;
  Checker checker(
      {
          target(no_content.port(), check({{200, 200}, {204, 204}}), 0),
          target(redirect.port(), check({{200, 399}}), 1),
          target(not_found.port(), check({{200, 299}, {400, 404}}), 2),
          target(redirect.port(), check({{200, 299}}), 3),
          target(no_content.port(), check({{200, 200}}), 4),
      },
      recorder.report());
  checker.start();
  auto transitions = recorder.wait(3, 3s);
  ASSERT_EQ(transitions.size(), 3u);
  std::set<size_t> healthy;
  for (const auto& [t, _] : transitions)
    healthy.insert(t.backend);
  EXPECT_EQ(healthy, (std::set<size_t>{0, 1, 2}));
  ASSERT_TRUE(eventually(
      [&] { return checker.stats().at(3).failures >= 2 && checker.stats().at(4).failures >= 2; },
      3s));
  EXPECT_EQ(checker.stats().at(3).last_result, "GET /healthz: status 302");
  EXPECT_EQ(checker.stats().at(4).last_result, "GET /healthz: status 204");
  EXPECT_EQ(recorder.wait(4, 100ms).size(), 3u);
}

TEST(Checker, NotAnHttpResponseIsAFailure) {
  Origin origin(0);
  origin.set_raw("SSH-2.0-OpenSSH_9.2\r\n");
  Checker checker({target(origin.port(), http_check(50ms, 50ms))}, {});
  checker.start();
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= 1; }, 3s));
  EXPECT_EQ(checker.stats().at(0).last_result, "GET /healthz: not an HTTP/1.x response");

  auto failures = checker.stats().at(0).failures;
  origin.set_raw("HTTP/1.1 2");
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= failures + 2; }, 3s));
  EXPECT_EQ(checker.stats().at(0).last_result,
            "GET /healthz: connection closed in the status line");

  // The shortest status line there is, and then the end of the connection.
  origin.set_raw("HTTP/1.0 200");
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).healthy; }, 3s));
  EXPECT_EQ(checker.stats().at(0).last_result, "GET /healthz: status 200");
}

TEST(Checker, InterimResponsesBeforeTheFinalOneAreSkipped) {
  Origin origin(0);
  // 103 Early Hints, then the final answer (RFC 9110 §15.2): the 200 decides.
  origin.set_raw("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
                 "Link: </app.js>; rel=preload; as=script\r\n\r\n"
                 "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  Checker checker({target(origin.port(), http_check(50ms, 200ms))}, {});
  checker.start();
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).healthy; }, 3s))
      << checker.stats().at(0).last_result;
  EXPECT_EQ(checker.stats().at(0).last_result, "GET /healthz: status 200");
  EXPECT_EQ(checker.stats().at(0).failures, 0u);

  // Two of them, bare LFs, and a final 503: the 503 decides.
  auto passes = checker.stats().at(0).passes;
  origin.set_raw("HTTP/1.1 100 Continue\n\nHTTP/1.1 103 Early Hints\nLink: </a>\n\n"
                 "HTTP/1.1 503 Service Unavailable\nContent-Length: 0\n\n");
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= 1; }, 3s));
  EXPECT_EQ(checker.stats().at(0).last_result, "GET /healthz: status 503");
  EXPECT_LE(checker.stats().at(0).passes, passes + 1);

  // An interim response and then nothing.
  origin.set_raw("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
  ASSERT_TRUE(eventually(
      [&] {
        return checker.stats().at(0).last_result ==
               "GET /healthz: connection closed after an interim response";
      },
      3s))
      << checker.stats().at(0).last_result;

  // 101 is not interim: it is not what a GET without Upgrade can get.
  origin.set_raw("HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
  ASSERT_TRUE(eventually(
      [&] { return checker.stats().at(0).last_result == "GET /healthz: status 101"; }, 3s))
      << checker.stats().at(0).last_result;
}

TEST(Checker, EndlessInterimResponsesFail) {
  Origin origin(0);
  std::string hints = "HTTP/1.1 103 Early Hints\r\n";
  while (hints.size() < 70 * 1024)
    hints += "Link: </asset-" + std::to_string(hints.size()) + ".js>; rel=preload\r\n";
  origin.set_raw(hints + "\r\nHTTP/1.1 200 OK\r\n\r\n");
  Checker checker({target(origin.port(), http_check(50ms, 1s))}, {});
  checker.start();
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).failures >= 1; }, 3s));
  EXPECT_EQ(checker.stats().at(0).last_result,
            "GET /healthz: interim responses longer than 64 KiB");
  EXPECT_FALSE(checker.stats().at(0).healthy);
}

TEST(Checker, UpdateKeepsTheCountsOfABackendWhoseCheckChanged) {
  Origin origin(200);
  HealthCheck check = http_check(30ms, 200ms);
  Checker checker({target(origin.port(), check)}, {});
  checker.start();
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).passes >= 3; }, 3s));

  // The same target: it keeps its state and counts.
  auto passes = checker.stats().at(0).passes;
  checker.update({target(origin.port(), check)});
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).passes >= passes + 2; }, 3s));

  // Another path for the same backend: a new check, the counts go on from
  // where they were (lb_health_checks_total is a counter).
  passes = checker.stats().at(0).passes;
  check.path = "/ready";
  checker.update({target(origin.port(), check)});
  ASSERT_TRUE(eventually(
      [&] {
        int n = origin.requests();
        return n > 0 && origin.request(size_t(n - 1)).starts_with("GET /ready ");
      },
      3s));
  EXPECT_GE(checker.stats().at(0).passes, passes);
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).passes >= passes + 2; }, 3s));

  // Another backend id: its own counts.
  checker.update({target(origin.port(), check, 1)});
  ASSERT_TRUE(eventually([&] { return checker.stats().at(0).backend == 1; }, 3s));
  EXPECT_LT(checker.stats().at(0).passes, passes);
}

TEST(Checker, StopsPromptlyWithChecksInFlight) {
  Origin origin(0);
  std::vector<Target> targets;
  for (size_t i = 0; i < 50; ++i)
    targets.push_back(target(origin.port(), http_check(5s, 5s), i));
  auto checker = std::make_unique<Checker>(std::move(targets), Checker::Report{});
  checker->start();
  ASSERT_TRUE(eventually([&] { return origin.requests() >= 50; }, 3s));
  auto begin = Clock::now();
  checker.reset();
  EXPECT_LT(Clock::now() - begin, 500ms);
}

TEST(Checker, StopBeforeStartAndTwice) {
  Checker never({target(free_port(), http_check(50ms, 50ms))}, {});
  never.stop();
  never.start(); // stopped for good: does nothing
  EXPECT_EQ(never.stats().at(0).failures, 0u);
  Checker empty({}, {});
  empty.start();
  empty.stop();
  empty.stop();
}

// Not a benchmark, a budget: checking costs the checker thread little CPU.
TEST(Checker, TwoHundredTargetsCostLittleCpu) {
  Origin origin(200);
  std::vector<Target> targets;
  for (size_t i = 0; i < 200; ++i)
    targets.push_back(target(origin.port(), http_check(1s, 1s), i));
  Recorder recorder;
  Checker checker(std::move(targets), recorder.report());
  checker.start();
  auto begin = Clock::now();
  auto cpu_begin = checker.cpu_time();
  std::this_thread::sleep_for(5s); // the measurement window
  auto cpu = checker.cpu_time() - cpu_begin;
  auto wall = Clock::now() - begin;
  uint64_t checks = 0;
  for (const auto& stats : checker.stats())
    checks += stats.passes + stats.failures;
  double percent = 100.0 * std::chrono::duration<double>(cpu).count() /
                   std::chrono::duration<double>(wall).count();
  std::printf("200 targets, interval 1s, %.1fs: %llu checks, checker thread CPU %.1fms = %.2f%% "
              "of one core\n",
              std::chrono::duration<double>(wall).count(), (unsigned long long)checks,
              std::chrono::duration<double, std::milli>(cpu).count(), percent);
  EXPECT_EQ(recorder.wait(200, 0s).size(), 200u);
  EXPECT_GE(checks, 800u);
  EXPECT_LE(checks, 1200u);
  EXPECT_LT(percent, 5.0);
}
