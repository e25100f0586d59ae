#include "lb/admin/totals.hpp"

#include <algorithm>

namespace lb::admin {

uint64_t BackendTotals::requests() const {
  uint64_t n = 0;
  for (const auto& [code, count] : responses)
    n += count;
  return n;
}

uint64_t BackendTotals::errors_5xx() const {
  uint64_t n = 0;
  for (const auto& [code, count] : responses)
    if (code >= 500 && code <= 599)
      n += count;
  return n;
}

Totals gather(const proxy::Runtime& runtime,
              const std::vector<const proxy::WorkerMetrics*>& workers) {
  Totals t;
  t.listeners.resize(runtime.listeners.size());
  for (auto& l : t.listeners) {
    l.requests.resize(runtime.pools.size() + 1);
    l.requests_h2.resize(runtime.pools.size() + 1);
  }
  t.pools.resize(runtime.pools.size());
  for (size_t p = 0; p < runtime.pools.size(); ++p)
    t.pools[p].backends.resize(runtime.pools[p]->backends().size());

  for (const proxy::WorkerMetrics* w : workers) {
    for (size_t l = 0; l < t.listeners.size(); ++l) {
      const proxy::ListenerMetrics* from = w->listeners.find(runtime.listeners[l]->id);
      if (!from)
        continue;
      ListenerTotals& to = t.listeners[l];
      auto add_requests = [&](size_t slot, uint32_t id) {
        if (const proxy::CodeCounts* counts = from->requests.find(id))
          counts->for_each([&](int code, uint64_t n) { to.requests[slot][code] += n; });
        if (const proxy::CodeCounts* counts = from->requests_h2.find(id))
          counts->for_each([&](int code, uint64_t n) { to.requests_h2[slot][code] += n; });
      };
      add_requests(0, 0);
      for (size_t p = 0; p < runtime.pools.size(); ++p)
        add_requests(p + 1, runtime.pools[p]->id() + 1);
      to.bytes_in += from->bytes_in.get();
      to.bytes_out += from->bytes_out.get();
      to.connections += from->connections.get();
      to.h2_connections += from->h2_connections.get();
      to.h2_streams += from->h2_streams.get();
      to.h2_goaway_graceful += from->h2_goaway_graceful.get();
      to.h2_goaway_flood += from->h2_goaway_calm.get();
      to.h2_goaway_error += from->h2_goaway_error.get();
    }
    for (size_t p = 0; p < t.pools.size(); ++p) {
      const upstream::Pool& pool = *runtime.pools[p];
      PoolTotals& to = t.pools[p];
      if (const proxy::PoolMetrics* from = w->pools.find(pool.id())) {
        for (size_t i = 0; i < to.duration_buckets.size(); ++i)
          to.duration_buckets[i] += from->duration.bucket(i);
        to.duration_sum_seconds += from->duration.sum_seconds();
        for (size_t r = 0; r < proxy::retry_reason_count; ++r)
          to.retries[r] += from->retries[r].get();
        to.budget_exhausted += from->budget_exhausted.get();
        to.fail_open += from->fail_open.get();
        for (size_t g = 0; g < to.grpc.size(); ++g)
          to.grpc[g] += from->grpc[g].get();
      }
      for (size_t b = 0; b < to.backends.size(); ++b) {
        const proxy::BackendMetrics* fb = w->backends.find(pool.backends()[b].id);
        if (!fb)
          continue;
        BackendTotals& tb = to.backends[b];
        fb->responses.for_each([&](int code, uint64_t n) { tb.responses[code] += n; });
        tb.connect_errors += fb->connect_errors.get();
        tb.active += fb->active.get();
        tb.pooled += fb->pooled.get();
        tb.h2_connections += fb->h2_connections.get();
      }
    }
  }
  return t;
}

uint64_t PoolTotals::all_retries() const {
  uint64_t n = 0;
  for (uint64_t r : retries)
    n += r;
  return n;
}

} // namespace lb::admin
