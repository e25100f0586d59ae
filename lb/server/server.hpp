#pragma once
// Accepting connections: `workers` threads, each with its own io_context and its
// own SO_REUSEPORT listening socket per listener, so the kernel spreads
// connections and a connection lives and dies on one thread.

#include "config/config_types.hpp"
#include "lb/proxy/access_log.hpp"
#include "lb/proxy/metrics.hpp"
#include "lb/proxy/runtime.hpp"
#include "lb/server/worker.hpp"

#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace lb::server {

class Server {
public:
  // Serves `runtime`; its config fixes what a reload cannot change (workers,
  // the access log).
  explicit Server(std::shared_ptr<const proxy::Runtime> runtime);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every listener on every worker. Returns false (and logs why) on failure.
  bool bind();
  // Starts the worker threads.
  void start();
  // Stops accepting and lets in-flight requests finish; `done` runs on the
  // caller's io_context when every worker is idle. Thread: the caller's.
  void drain(boost::asio::io_context& notify, std::function<void()> done);
  // Ends whatever is still running and joins the threads.
  void stop();

  // Switches every worker to `next`: listeners it adds or moves are bound
  // first, and when one cannot be, nothing changes and `error` says why.
  // Listeners it keeps keep their sockets. Thread: the caller's (one at a time).
  bool publish(std::shared_ptr<const proxy::Runtime> next, std::string& error);

  unsigned workers() const { return static_cast<unsigned>(workers_.size()); }
  // The newest snapshot. Any thread.
  std::shared_ptr<const proxy::Runtime> runtime() const {
    std::lock_guard lock(runtime_mutex_);
    return runtime_;
  }
  // Every worker's counters, to be summed at scrape time (any thread).
  std::vector<const proxy::WorkerMetrics*> metrics() const;

private:
  // Binds the listeners of `next` that `previous` does not have at the same
  // address: per worker, the new sockets.
  bool bind_new(const proxy::Runtime* previous, const proxy::Runtime& next,
                std::vector<std::vector<std::unique_ptr<Worker::Acceptor>>>& fresh,
                std::string& error);
  // Marks the backends `previous` has and `next` lacks as retired: should one
  // come back (the same address in DNS again), it is a new backend.
  static void retire_dropped_backends(const proxy::Runtime& previous, const proxy::Runtime& next);

  std::shared_ptr<const config::Config> config_; // the first one
  mutable std::mutex runtime_mutex_;
  std::shared_ptr<const proxy::Runtime> runtime_;
  std::vector<std::unique_ptr<Worker>> workers_;
  // Each listener's open connections (by listener id; never dropped, so a
  // listener that comes back counts on): shared by its workers' acceptors.
  std::unordered_map<uint32_t, Worker::OpenCount> open_by_listener_;
  std::vector<std::thread> threads_;
  int access_log_fd_ = -1;
  std::unique_ptr<proxy::LogWriter> log_writer_; // reset after the workers in ~Server
  bool own_access_log_fd_ = false;
};

} // namespace lb::server
