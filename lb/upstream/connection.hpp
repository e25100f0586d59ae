#pragma once
// Upstream connections and the per-worker keep-alive pool that holds them idle.

#include "lb/io/event_loop.hpp"
#include "lb/io/timeouts.hpp"
#include "lb/io/tls.hpp"

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace lb::upstream {

class ConnectionPool;

// A socket to a backend, registered in its worker's event loop from its
// connect to its close: while a request uses it, its events go to that
// request; while idle, to the pool, which closes it as soon as the backend
// does (so reuse needs no check).
struct Connection {
  explicit Connection(io::EventLoop& l) : loop(&l) {}
  ~Connection() {
    if (ssl)
      SSL_free(ssl);
    loop->close(watch);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  io::EventLoop* loop;
  io::Watch watch;
  SSL* ssl = nullptr; // set when the pool speaks HTTPS to its backends
  // The context `ssl` was made with: a reload that changes the pool's tls
  // settings makes pooled connections of the old ones unusable.
  std::shared_ptr<const io::TlsClient> tls;
  uint32_t backend = 0;                          // the backend's stable id (Backend::id)
  std::chrono::milliseconds idle_timeout{90000}; // the pool's timeouts.idle
  uint32_t requests = 0;                         // requests served on this connection so far
  io::Clock::time_point idle_since{};
  // The backend announced it closes idle connections after a while
  // ("Keep-Alive: timeout=N"): not reused from this point on.
  io::Clock::time_point retire_at = io::Clock::time_point::max();
  ConnectionPool* idle_in = nullptr; // the pool holding it idle
};

// Idle keep-alive connections of one worker, per backend id (so they survive a
// reload or DNS change that keeps the backend). Not
// thread-safe: each worker has its own, so taking and returning is lock-free.
class ConnectionPool {
public:
  ConnectionPool() = default;
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;
  ~ConnectionPool();

  // The most recently used idle connection to that backend, or nullptr.
  // (Those the backend closed are gone already: their close was an event.)
  // `verify`: one peek besides, for a request that must not be sent into a
  // close that is on its way (a non-idempotent one, which is not replayed).
  // The caller sets the connection's event handler.
  Connection* take(uint32_t backend, io::Clock::time_point now, bool verify);
  // Keeps `c` idle, unless it is not clean (bytes or an end from the
  // backend not read): then it is closed.
  void put(Connection* c, io::Clock::time_point now);
  // Closes connections idle for longer than their pool's idle timeout.
  void sweep(io::Clock::time_point now);
  // Closes the connections of backends no longer in any pool (`live[id]` false).
  void retain(const std::vector<bool>& live);
  void close_all();
  size_t idle_count() const;

  // Told of every change in the number of idle connections to a backend (for
  // a per-worker gauge); nullptr: nobody.
  using IdleCounter = void (*)(void* context, uint32_t backend, int delta);
  void count_idle_with(IdleCounter counter, void* context) {
    counter_ = counter;
    counter_context_ = context;
  }

private:
  // An idle connection's socket had an event: the backend closed it, failed
  // or sent bytes nobody asked for. It goes at once.
  static void on_idle_event(void* connection, uint32_t events);
  void discard(Connection* c);
  void counted(uint32_t backend, int delta) {
    if (counter_ && delta)
      counter_(counter_context_, backend, delta);
  }

  std::vector<std::vector<Connection*>> idle_; // [backend id] -> LIFO
  IdleCounter counter_ = nullptr;
  void* counter_context_ = nullptr;
};

} // namespace lb::upstream
