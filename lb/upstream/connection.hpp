#pragma once
// Upstream connections and the per-worker keep-alive pool that holds them idle.

#include "lb/io/timeouts.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <vector>

namespace lb::upstream {

struct Connection {
  explicit Connection(boost::asio::io_context& io) : socket(io) {}
  boost::asio::ip::tcp::socket socket;
  uint32_t pool = 0;
  uint32_t backend = 0;
  uint32_t requests = 0;  // requests served on this connection so far
  io::Clock::time_point idle_since{};
  // The backend announced it closes idle connections after a while
  // ("Keep-Alive: timeout=N"): not reused from this point on.
  io::Clock::time_point retire_at = io::Clock::time_point::max();
};

// Idle keep-alive connections of one worker, per pool and backend. Not
// thread-safe: each worker has its own, so taking and returning is lock-free.
class ConnectionPool {
 public:
  ConnectionPool() = default;
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;
  ~ConnectionPool();

  // The most recently used idle connection to that backend that is still open,
  // or nullptr. Connections the backend has closed meanwhile are discarded.
  Connection* take(uint32_t pool, uint32_t backend);
  void put(Connection* c);
  // Closes connections idle since before `now - idle` (per pool).
  void sweep(io::Clock::time_point now, const std::vector<std::chrono::milliseconds>& idle);
  void close_all();
  size_t idle_count() const;

 private:
  std::vector<std::vector<std::vector<Connection*>>> idle_;  // [pool][backend] -> LIFO
};

}  // namespace lb::upstream
