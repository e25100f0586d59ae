#include "lb/admin/status.hpp"

#include "lb/admin/totals.hpp"
#include "lb/version.hpp"

#include <nlohmann/json.hpp>

namespace lb::admin {

std::string status_json(const server::Server& server, double uptime_seconds, bool draining,
                        const ClusterLink* cluster) {
  using json = nlohmann::ordered_json;
  std::shared_ptr<const proxy::Runtime> runtime = server.runtime();
  const Totals t = gather(*runtime, server.metrics());
  const int64_t now = upstream::steady_ms();

  json listeners = json::array();
  for (size_t l = 0; l < runtime->listeners.size(); ++l) {
    const config::Listener& c = runtime->listeners[l]->config;
    uint64_t requests = 0;
    for (const auto* table : {&t.listeners[l].requests, &t.listeners[l].requests_h2})
      for (const auto& by_code : *table)
        for (const auto& [code, n] : by_code)
          requests += n;
    listeners.push_back({{"name", c.name},
                         {"listen", c.listen.text()},
                         {"connections", t.listeners[l].connections},
                         {"connections_by_protocol",
                          {{"HTTP/1.1", t.listeners[l].connections - t.listeners[l].h2_connections},
                           {"HTTP/2", t.listeners[l].h2_connections}}},
                         {"requests", requests},
                         {"bytes_in", t.listeners[l].bytes_in},
                         {"bytes_out", t.listeners[l].bytes_out}});
  }

  json pools = json::array();
  for (size_t p = 0; p < runtime->pools.size(); ++p) {
    const upstream::Pool& pool = *runtime->pools[p];
    const PoolTotals& pt = t.pools[p];
    const upstream::Selection& selection = pool.selection();

    json regions = json::array();
    const auto& region_configs = pool.config().regions;
    for (size_t r = 0; r < region_configs.size(); ++r)
      regions.push_back(
          {{"name", region_configs[r].name},
           {"priority", region_configs[r].priority},
           {"weight", region_configs[r].weight},
           {"traffic_share", r < selection.region_share.size() ? selection.region_share[r] : 0.0}});

    json backends = json::array();
    for (size_t b = 0; b < pool.backends().size(); ++b) {
      const upstream::Backend& backend = pool.backends()[b];
      const upstream::BackendState& st = pool.state(b);
      const BackendTotals& bt = pt.backends[b];
      int64_t until = st.ejected_until_ms.load(std::memory_order_relaxed);
      bool ejected = until > now;
      uint32_t effective =
          b < selection.effective_weight.size() ? selection.effective_weight[b] : 0;
      backends.push_back({{"address", backend.label},
                          {"region", backend.region},
                          {"weight", st.weight.load(std::memory_order_relaxed)},
                          {"healthy", st.healthy.load(std::memory_order_relaxed)},
                          {"drained", st.drained.load(std::memory_order_relaxed)},
                          {"ejected", ejected},
                          {"ejected_for_ms", ejected ? until - now : 0},
                          {"in_rotation", effective > 0},
                          {"active_requests", bt.active},
                          {"pooled_connections", bt.pooled},
                          {"http2_connections", bt.h2_connections},
                          {"requests", bt.requests()},
                          {"errors_5xx", bt.errors_5xx()},
                          {"connect_errors", bt.connect_errors},
                          {"ejections", st.ejections_total.load(std::memory_order_relaxed)}});
    }

    uint64_t requests = 0;
    for (uint64_t n : pt.duration_buckets)
      requests += n;
    pools.push_back({{"name", pool.name()},
                     {"balance", config::balance_name(pool.config().balance)},
                     {"fail_open", pool.config().fail_open},
                     {"fail_open_active", selection.fail_open},
                     {"health_check", pool.config().health_check.enabled},
                     {"requests", requests},
                     {"retries", pt.all_retries()},
                     {"regions", std::move(regions)},
                     {"backends", std::move(backends)}});
  }

  json doc = {{"version", lb::version},
              {"uptime_seconds", uptime_seconds},
              {"draining", draining},
              {"workers", server.workers()},
              {"listeners", std::move(listeners)},
              {"pools", std::move(pools)}};
  if (cluster)
    doc["cluster"] = json{{"redis", cluster->redis},
                          {"connected", cluster->connected},
                          {"round_trips", cluster->round_trips},
                          {"errors", cluster->errors},
                          {"overrides_version", cluster->version}};
  // Names come from the config: never let a stray byte make dump() throw.
  return doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

} // namespace lb::admin
