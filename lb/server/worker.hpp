#pragma once
// One event-loop thread: its listeners' accept loops, its sessions, its tick.

#include "lb/io/handler_memory.hpp"
#include "lb/proxy/worker_context.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <vector>

namespace lb::server {

class Worker {
 public:
  Worker(unsigned id, std::shared_ptr<const proxy::Runtime> runtime, uint32_t buffer_size,
         proxy::LogWriter* log_writer);
  ~Worker();

  // Binds this worker's socket for listener `index` (SO_REUSEPORT). Before run().
  bool bind(size_t index, const boost::asio::ip::tcp::endpoint& endpoint, std::string& error,
            boost::asio::ip::tcp::endpoint& bound);
  void run();  // the thread body
  // Thread-safe: stop accepting, finish in-flight requests, call `done` when idle.
  void drain(std::function<void()> done);
  void stop() { io_->stop(); }
  const proxy::WorkerMetrics& metrics() const { return *context_.metrics; }
  void set_connection_limit(size_t index, size_t limit) { acceptors_[index]->limit = limit; }

 private:
  struct Acceptor {
    Acceptor(boost::asio::io_context& io, const proxy::ListenerRuntime& l)
        : socket(io), listener(l) {}
    boost::asio::ip::tcp::acceptor socket;
    const proxy::ListenerRuntime& listener;
    io::HandlerSlot slot;
    boost::asio::ip::tcp protocol = boost::asio::ip::tcp::v4();
    size_t limit = 0;     // this worker's share of limits.max_connections
    bool paused = false;  // at the limit: accepting again when a connection ends
  };

  void do_accept(Acceptor& a);
  void on_acceptable(Acceptor& a, const boost::system::error_code& ec);
  void do_tick();
  void on_tick(const boost::system::error_code& ec);
  void on_session_closed();
  void do_poll_queue();

  std::unique_ptr<boost::asio::io_context> io_;  // first: destroyed last by hand
  proxy::WorkerContext context_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  std::optional<boost::asio::steady_timer> tick_;
  std::optional<boost::asio::steady_timer> queue_timer_;  // retries of queued requests
  bool queue_polling_ = false;
  io::HandlerSlot tick_slot_;
  unsigned ticks_ = 0;
  std::function<void()> drained_;
};

}  // namespace lb::server
