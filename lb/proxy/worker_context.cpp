#include "lb/proxy/worker_context.hpp"

#include <random>

namespace lb::proxy {

WorkerContext::WorkerContext(io::EventLoop& event_loop, unsigned worker_id,
                             std::shared_ptr<const Runtime> rt, uint32_t buffer_size,
                             LogWriter* log_writer)
    : loop(event_loop), id(worker_id), runtime(std::move(rt)), buffers(buffer_size, 4096),
      h2(event_loop), access_log(log_writer, runtime->config->access_log.format) {
  metrics = std::make_unique<WorkerMetrics>();
  connections.count_idle_with(
      [](void* m, uint32_t backend, int delta) {
        static_cast<WorkerMetrics*>(m)->backends.at(backend).pooled.add(delta);
      },
      metrics.get());
  h2.count_connections_with(
      [](void* m, uint32_t backend, int delta) {
        static_cast<WorkerMetrics*>(m)->backends.at(backend).h2_connections.add(delta);
      },
      metrics.get());
  std::random_device rd;
  id_prefix = rd();
}

// The metrics go before the idle connections (declared after them).
WorkerContext::~WorkerContext() {
  // (The counters' metrics go before the pools that call them.)
  connections.count_idle_with(nullptr, nullptr);
  h2.count_connections_with(nullptr, nullptr);
}

} // namespace lb::proxy
