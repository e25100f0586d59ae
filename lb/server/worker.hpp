#pragma once
// One event-loop thread: its listeners' accept loops, its sessions, its tick.

#include "lb/io/event_loop.hpp"
#include "lb/proxy/worker_context.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

namespace lb::server {

class Worker {
public:
  Worker(unsigned id, unsigned workers, std::shared_ptr<const proxy::Runtime> runtime,
         uint32_t buffer_size, proxy::LogWriter* log_writer);
  ~Worker();

  // A listening socket of this worker (SO_REUSEPORT), not accepting yet.
  struct Acceptor;
  // Counts a listener's open connections over all workers, against its
  // limits.max_connections; the same object for as long as the listener id lives.
  using OpenCount = std::shared_ptr<std::atomic<uint32_t>>;
  // Binds a socket for `listener`. Any thread; the result goes to install() or
  // is dropped.
  std::unique_ptr<Acceptor> bind(const proxy::ListenerRuntime& listener,
                                 const boost::asio::ip::tcp::endpoint& endpoint, OpenCount open,
                                 std::string& error, boost::asio::ip::tcp::endpoint& bound);
  // Before run(): every worker (this one included), to wake when a listener
  // they paused at max_connections drops below it.
  void set_peers(std::vector<Worker*> peers) { peers_ = std::move(peers); }
  // Before run(): accept on `a`.
  void install(std::unique_ptr<Acceptor> a);
  // Thread-safe: switch to a new snapshot. Listeners of `next` with a socket
  // in `fresh` (by listener id) accept there; the others keep theirs (their
  // listener is looked up in `next` by id); sockets of listeners `next` lacks
  // are closed. Sessions move to `next` at their next request. `done` runs on
  // the worker's thread once it has switched.
  void adopt(std::shared_ptr<const proxy::Runtime> next,
             std::vector<std::unique_ptr<Acceptor>> fresh, std::function<void()> done);
  void run(); // the thread body
  // Thread-safe: stop accepting, finish in-flight requests, call `done` when idle.
  void drain(std::function<void()> done);
  void stop() { loop_->stop(); }
  const proxy::WorkerMetrics& metrics() const { return *context_.metrics; }

  struct Acceptor {
    explicit Acceptor(const proxy::ListenerRuntime& l) : listener(&l) {}
    ~Acceptor();
    Acceptor(const Acceptor&) = delete;
    Acceptor& operator=(const Acceptor&) = delete;
    io::Watch watch;               // the listening socket
    io::EventLoop* loop = nullptr; // once installed
    Worker* worker = nullptr;
    const proxy::ListenerRuntime* listener; // in the worker's current snapshot
    OpenCount open;                         // the listener's connections, all workers together
    size_t limit = 0;                       // limits.max_connections (0: none)
    bool paused = false;                    // at the limit: accepting again when a connection ends
  };

private:
  // Takes a connection slot of `a`'s listener; false at max_connections.
  static bool reserve(Acceptor& a);
  // Gives one back, waking the other workers when the listener was full.
  void release(Acceptor& a);
  void resume_if_below_limit(Acceptor& a);
  // Thread-safe: resume `listener`'s acceptor if it is paused and below its limit.
  void wake(uint32_t listener);
  void wake_peers(uint32_t listener);
  void on_connection_closed(uint32_t listener);

  static void on_acceptor_event(void* acceptor, uint32_t events);
  void on_acceptable(Acceptor& a);
  void do_tick();
  void on_tick();
  void do_poll_queue();
  void poll_queue();
  // Runs `step` on every session of this worker (each held while it runs).
  void each_session(void (proxy::ClientConnection::*step)());

  std::unique_ptr<io::EventLoop> loop_; // first: destroyed last
  proxy::WorkerContext context_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_; // by listener id
  // By listener id, kept when the listener goes: its sessions still count there.
  std::vector<OpenCount> open_;
  std::vector<Worker*> peers_;
  bool running_ = false;
  io::EventLoop::Timer tick_;
  io::EventLoop::Timer queue_timer_; // retries of queued requests
  bool queue_polling_ = false;
  unsigned ticks_ = 0;
  std::function<void()> drained_;
};

} // namespace lb::server
