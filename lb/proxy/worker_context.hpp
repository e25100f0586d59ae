#pragma once
// What a worker thread owns and its sessions use: the event loop, buffers,
// timeouts, idle upstream connections, the access log buffer. Touched by that
// thread only, so nothing here needs a lock.

#include "lb/io/buffer_pool.hpp"
#include "lb/io/event_loop.hpp"
#include "lb/io/pipe_pool.hpp"
#include "lb/io/timeouts.hpp"
#include "lb/proxy/access_log.hpp"
#include "lb/proxy/exchange.hpp"
#include "lb/proxy/h2_upstream.hpp"
#include "lb/proxy/metrics.hpp"
#include "lb/proxy/runtime.hpp"
#include "lb/upstream/connection.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace lb::proxy {

class ClientConnection;

struct WorkerContext {
  WorkerContext(io::EventLoop& event_loop, unsigned worker_id, std::shared_ptr<const Runtime> rt,
                uint32_t buffer_size, LogWriter* log_writer);
  ~WorkerContext();
  WorkerContext(const WorkerContext&) = delete;
  WorkerContext& operator=(const WorkerContext&) = delete;

  io::EventLoop& loop;
  unsigned id;
  unsigned workers = 1;                   // worker threads in the process
  std::shared_ptr<const Runtime> runtime; // the newest snapshot; replaced by Worker::adopt
  io::BufferPool buffers;
  io::PipePool pipes;     // long response bodies go through these by splice
  ExchangePool exchanges; // the requests in flight borrow theirs from here
  io::Timeouts timeouts;
  upstream::ConnectionPool connections;
  H2Client h2; // HTTP/2 connections to backends (pools with protocol h2, h2c)
  AccessLog access_log;
  std::unique_ptr<WorkerMetrics> metrics; // written by this worker only

  bool draining = false;
  std::function<void()> on_drained; // called once draining and no session is left

  // Sessions of this worker (intrusive list), for draining.
  ClientConnection* sessions = nullptr;
  size_t session_count = 0;
  // A session of this listener ended (its connection slot is free again).
  std::function<void(uint32_t listener_id)> on_session_closed;

  // Requests waiting for a backend below max_connections_per_backend, oldest
  // first; `poll_queue` makes the worker retry them soon.
  std::vector<ClientConnection*> queue;
  std::function<void()> poll_queue;

  // Retry budgets, by pool id (grown when a pool is first seen).
  std::vector<RetryBudget> retry_budgets;
  RetryBudget& retry_budget(size_t pool_id) {
    if (pool_id >= retry_budgets.size())
      retry_budgets.resize(pool_id + 1);
    return retry_budgets[pool_id];
  }

  // Request ids: a per-process random prefix, the worker id and a counter.
  uint64_t next_request = 0;
  uint32_t id_prefix = 0;
};

} // namespace lb::proxy
