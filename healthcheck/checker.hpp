#pragma once
// Active health checks. One thread runs one io_context; every target has its own timer and
// at most one check in flight (HTTP: connect, GET the path, read the status line of the final
// response, past any 1xx; HTTP/2 pools: the same GET, or a gRPC Health/Check, as HTTP/2 frames
// (h2_check.hpp); TCP: connect). Rise/fall counters turn results into
// healthy/unhealthy transitions, which are reported through a callback: the proxy maps
// (pool, backend) to its own state. The targets can be replaced while it runs (update):
// those that stay keep their state.
//
// Depends on config and io (TLS) only, never on the proxy's modules.

#include "config/config_types.hpp"
#include "lb/io/tls.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace lb::healthcheck {

// One backend to check, named the way the proxy names it.
struct Target {
  size_t pool = 0;
  size_t backend = 0;
  boost::asio::ip::tcp::endpoint endpoint;
  std::string label; // "host:port": the Host header when check.host is empty
  config::HealthCheck check;
  // Known healthy already (a reload changed its check): it stays healthy until
  // unhealthy_threshold failures, rather than starting over as unhealthy.
  bool start_healthy = false;
  bool start_ever_passed = false; // it passed before: healthy_threshold applies to come back
  // When set, update() reads {healthy, ever passed} from here for a target it
  // starts over, rather than the values above taken when the list was made.
  std::function<std::pair<bool, bool>()> current;
  // The pool speaks HTTPS to its backends: so do its checks (an HTTP check
  // over TLS; a TCP check passes once the TLS handshake does).
  std::shared_ptr<const io::TlsClient> tls;
  config::PoolTls tls_config; // what `tls` was built from (to compare targets)
  std::string host_name;      // the backend's DNS name, if any (SNI)
  bool http2 = false;         // the pool speaks HTTP/2 (h2, h2c): so do its HTTP checks
};

struct Transition {
  size_t pool = 0;
  size_t backend = 0;
  bool healthy = false;
  // The last result and why it flips, e.g. "GET /healthz: status 503 (3 consecutive failures)",
  // "connect: connection refused (3 consecutive failures)", "GET /healthz: status 200 (first
  // check passed)", "connect: ok (2 consecutive passes)".
  std::string reason;
};

// What status pages and metrics show for one target.
struct TargetStats {
  size_t pool = 0; // as in its Target
  size_t backend = 0;
  uint64_t passes = 0;
  uint64_t failures = 0;
  bool healthy = false;
  std::string last_result; // e.g. "GET /healthz: status 200", "" before the first check
};

class Checker {
public:
  // Called on the checker thread, once per transition. It must not call stop() or destroy the
  // Checker; it may call stats().
  using Report = std::function<void(const Transition&)>;

  // Every target starts unhealthy (unless start_healthy). Its first passing check makes it healthy;
  // after that it becomes unhealthy after unhealthy_threshold failures in a row, and healthy again
  // after healthy_threshold passes in a row. `targets` are checked whatever check.enabled says.
  Checker(std::vector<Target> targets, Report report);
  ~Checker(); // stop()
  Checker(const Checker&) = delete;
  Checker& operator=(const Checker&) = delete;

  // Starts the checker thread. The first check of each target happens within interval/10
  // (spread so that a thousand targets do not all connect at once); then one check every
  // interval +-10% after the previous one ended. Call once.
  void start();
  // Stops the thread and abandons checks in flight. Idempotent; not from Report.
  void stop();

  // Replaces the targets (any thread; applied on the checker thread soon after).
  // A target with the same (pool, backend), endpoint and check as one checked
  // now keeps its state, counters and schedule: no reset, no extra check. New
  // ones start unhealthy and are first checked within interval/10 (one whose
  // check changed keeps its pass and failure counts); the others stop being
  // checked.
  void update(std::vector<Target> targets);

  // A consistent snapshot per target, in target order. Any thread.
  std::vector<TargetStats> stats() const;
  // CPU time the checker thread has used (the final figure once stopped). Any thread.
  std::chrono::nanoseconds cpu_time() const;

private:
  struct State;
  using Clock = std::chrono::steady_clock;

  void schedule(State& s, Clock::time_point when);
  void do_connect(State& s);
  void on_connect(State& s, const boost::system::error_code& ec);
  // Sends the state's `request` (plain or TLS), then reads.
  void do_write(State& s);
  void on_write(State& s, const boost::system::error_code& ec);
  void do_read(State& s);
  // False once the check is finished; true when it needs more bytes.
  bool on_read(State& s, const boost::system::error_code& ec, size_t n);
  void on_timeout(State& s);
  bool skip_interim(State& s);
  void tls_handshake(State& s);
  void tls_write(State& s);
  void tls_read(State& s);
  void tls_wait(State& s, int ssl_error, void (Checker::*next)(State&));
  void finish(State& s, bool passed, std::string result);
  Clock::duration jittered(Clock::duration interval);
  void apply(std::vector<Target> targets);
  void schedule_first(State& s, Clock::time_point now, std::chrono::milliseconds cap);
  void rebuild_index();

  Report report_;
  // Sorted (pool, backend) -> index in states_.
  std::vector<std::pair<std::pair<size_t, size_t>, size_t>> index_;
  boost::asio::io_context io_{1};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  // After io_: destroyed before it. Changed by update() under stats_mutex_.
  std::vector<std::unique_ptr<State>> states_;
  // Removed by update(): their aborted handlers may still be queued, so they
  // are freed a while later.
  std::vector<std::pair<Clock::time_point, std::unique_ptr<State>>> retired_;
  std::minstd_rand random_;         // checker thread only (and start())
  mutable std::mutex stats_mutex_;  // guards every State::stats, states_ and index_
  mutable std::mutex thread_mutex_; // guards thread_, started_, stopped_
  std::thread thread_;
  std::thread::native_handle_type native_{}; // thread_'s, for its CPU clock
  bool started_ = false;
  bool stopped_ = false;
  std::atomic<int64_t> final_cpu_ns_{0}; // written by the thread as it ends
};

} // namespace lb::healthcheck
