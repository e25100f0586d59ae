#include "lb/admin/metrics.hpp"

#include "lb/admin/totals.hpp"
#include "lb/version.hpp"

#include <prometheus/text_serializer.h>

#include <limits>
#include <sstream>

namespace lb::admin {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

MetricFamily family(const char* name, const char* help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

void counter(MetricFamily& f, Labels labels, double value) {
  ClientMetric& m = f.metric.emplace_back();
  m.label = std::move(labels);
  m.counter.value = value;
}

void gauge(MetricFamily& f, Labels labels, double value) {
  ClientMetric& m = f.metric.emplace_back();
  m.label = std::move(labels);
  m.gauge.value = value;
}

} // namespace

std::vector<MetricFamily> MetricsCollector::Collect() const {
  std::shared_ptr<const proxy::Runtime> runtime = server_.runtime();
  const Totals t = gather(*runtime, server_.metrics());
  const int64_t now = upstream::steady_ms();

  auto requests = family("lb_requests_total",
                         "Requests answered to clients, by listener, pool (\"none\": no pool, "
                         "e.g. 404 no route), status code (499: the client left before "
                         "any response) and protocol (HTTP/1.1, HTTP/2).",
                         MetricType::Counter);
  auto bytes =
      family("lb_bytes_total", "Bytes received from (in) and sent to (out) clients, by listener.",
             MetricType::Counter);
  auto connections = family("lb_downstream_connections", "Open client connections, by listener.",
                            MetricType::Gauge);
  auto h2_connections =
      family("lb_http2_connections", "Open client connections speaking HTTP/2, by listener.",
             MetricType::Gauge);
  auto h2_streams =
      family("lb_http2_streams_total", "HTTP/2 streams (requests) clients opened, by listener.",
             MetricType::Counter);
  auto h2_goaways = family("lb_http2_goaways_total",
                           "HTTP/2 connections lb ended with GOAWAY, by listener and reason "
                           "(graceful: draining; flood: ENHANCE_YOUR_CALM; protocol_error).",
                           MetricType::Counter);
  for (size_t l = 0; l < runtime->listeners.size(); ++l) {
    const std::string& listener = runtime->listeners[l]->config.name;
    const ListenerTotals& lt = t.listeners[l];
    for (size_t slot = 0; slot < lt.requests.size(); ++slot) {
      std::string pool = slot == 0 ? "none" : runtime->pools[slot - 1]->name();
      for (const auto& [code, n] : lt.requests[slot])
        counter(requests,
                {{"listener", listener},
                 {"pool", pool},
                 {"code", std::to_string(code)},
                 {"protocol", "HTTP/1.1"}},
                static_cast<double>(n));
      for (const auto& [code, n] : lt.requests_h2[slot])
        counter(requests,
                {{"listener", listener},
                 {"pool", pool},
                 {"code", std::to_string(code)},
                 {"protocol", "HTTP/2"}},
                static_cast<double>(n));
    }
    counter(bytes, {{"listener", listener}, {"direction", "in"}}, static_cast<double>(lt.bytes_in));
    counter(bytes, {{"listener", listener}, {"direction", "out"}},
            static_cast<double>(lt.bytes_out));
    gauge(connections, {{"listener", listener}}, static_cast<double>(lt.connections));
    gauge(h2_connections, {{"listener", listener}}, static_cast<double>(lt.h2_connections));
    counter(h2_streams, {{"listener", listener}}, static_cast<double>(lt.h2_streams));
    counter(h2_goaways, {{"listener", listener}, {"reason", "graceful"}},
            static_cast<double>(lt.h2_goaway_graceful));
    counter(h2_goaways, {{"listener", listener}, {"reason", "flood"}},
            static_cast<double>(lt.h2_goaway_flood));
    counter(h2_goaways, {{"listener", listener}, {"reason", "protocol_error"}},
            static_cast<double>(lt.h2_goaway_error));
  }

  auto duration = family("lb_request_duration_seconds",
                         "Time from a request's first byte to the end of its response, by pool.",
                         MetricType::Histogram);
  auto upstream_requests = family("lb_upstream_requests_total",
                                  "Responses received from backends, by pool, backend and status "
                                  "code.",
                                  MetricType::Counter);
  auto connect_errors = family("lb_upstream_connect_errors_total",
                               "Failed connection attempts to backends (refused, timed out, "
                               "unreachable).",
                               MetricType::Counter);
  auto healthy = family("lb_backend_healthy",
                        "1 when the backend is in rotation: healthy, not drained, not ejected.",
                        MetricType::Gauge);
  auto active =
      family("lb_backend_active_requests", "Requests in flight to the backend.", MetricType::Gauge);
  auto pooled = family("lb_backend_pooled_connections",
                       "Idle keep-alive connections to the backend, ready for the next request.",
                       MetricType::Gauge);
  auto h2_backend = family("lb_backend_http2_connections",
                           "HTTP/2 connections to the backend (pools with protocol h2 or h2c), "
                           "each carrying many streams.",
                           MetricType::Gauge);
  auto weight =
      family("lb_backend_weight",
             "The backend's current weight (from the config or the admin API).", MetricType::Gauge);
  auto share = family("lb_region_traffic_share",
                      "Share (0..1) of the pool's traffic the region takes now (priority load "
                      "and region weight x health).",
                      MetricType::Gauge);
  auto retries = family("lb_retries_total",
                        "Requests tried again, by pool and by what failed (connect_failure, "
                        "reset, 502, 503, 504; replay: a pooled connection the backend closed).",
                        MetricType::Counter);
  auto budget_exhausted =
      family("lb_retry_budget_exhausted_total",
             "Retries the pool's retry_budget refused (the failure went to the client).",
             MetricType::Counter);
  auto fail_open =
      family("lb_fail_open_requests_total",
             "Requests served while no backend was in rotation (fail_open).", MetricType::Counter);
  auto grpc = family("lb_grpc_responses_total",
                     "gRPC calls answered, by pool and grpc-status (the backend's, or lb's own: "
                     "14 no backend or a failed connect, 4 a timeout; \"other\": above 16).",
                     MetricType::Counter);
  auto ejections =
      family("lb_outlier_ejections_total",
             "Times the backend was ejected by passive outlier detection.", MetricType::Counter);
  for (size_t p = 0; p < runtime->pools.size(); ++p) {
    const upstream::Pool& pool = *runtime->pools[p];
    const PoolTotals& pt = t.pools[p];

    ClientMetric& h = duration.metric.emplace_back();
    h.label = {{"pool", pool.name()}};
    uint64_t cumulative = 0;
    for (size_t i = 0; i < pt.duration_buckets.size(); ++i) {
      cumulative += pt.duration_buckets[i];
      double bound = i < proxy::Histogram::bounds.size() ? proxy::Histogram::bounds[i]
                                                         : std::numeric_limits<double>::infinity();
      h.histogram.bucket.push_back({cumulative, bound});
    }
    h.histogram.sample_count = cumulative;
    h.histogram.sample_sum = pt.duration_sum_seconds;

    for (size_t r = 0; r < proxy::retry_reason_count; ++r)
      counter(retries,
              {{"pool", pool.name()}, {"reason", std::string(proxy::retry_reason_names[r])}},
              static_cast<double>(pt.retries[r]));
    if (pool.config().has_retry_budget)
      counter(budget_exhausted, {{"pool", pool.name()}}, static_cast<double>(pt.budget_exhausted));
    counter(fail_open, {{"pool", pool.name()}}, static_cast<double>(pt.fail_open));
    for (size_t g = 0; g < pt.grpc.size(); ++g)
      if (pt.grpc[g])
        counter(grpc,
                {{"pool", pool.name()},
                 {"grpc_status", g + 1 < pt.grpc.size() ? std::to_string(g) : "other"}},
                static_cast<double>(pt.grpc[g]));

    const upstream::Selection& selection = pool.selection();
    const auto& regions = pool.config().regions;
    for (size_t r = 0; r < regions.size(); ++r)
      gauge(share, {{"pool", pool.name()}, {"region", regions[r].name}},
            r < selection.region_share.size() ? selection.region_share[r] : 0.0);

    for (size_t b = 0; b < pool.backends().size(); ++b) {
      const upstream::Backend& backend = pool.backends()[b];
      const upstream::BackendState& st = pool.state(b);
      const BackendTotals& bt = pt.backends[b];
      for (const auto& [code, n] : bt.responses)
        counter(upstream_requests,
                {{"pool", pool.name()}, {"backend", backend.label}, {"code", std::to_string(code)}},
                static_cast<double>(n));
      counter(connect_errors, {{"pool", pool.name()}, {"backend", backend.label}},
              static_cast<double>(bt.connect_errors));
      bool in_rotation = st.healthy.load(std::memory_order_relaxed) &&
                         !st.drained.load(std::memory_order_relaxed) &&
                         st.ejected_until_ms.load(std::memory_order_relaxed) <= now;
      gauge(healthy,
            {{"pool", pool.name()}, {"region", backend.region}, {"backend", backend.label}},
            in_rotation ? 1 : 0);
      gauge(active, {{"pool", pool.name()}, {"backend", backend.label}},
            static_cast<double>(bt.active));
      gauge(pooled, {{"pool", pool.name()}, {"backend", backend.label}},
            static_cast<double>(bt.pooled));
      if (pool.config().protocol != config::Protocol::http1)
        gauge(h2_backend, {{"pool", pool.name()}, {"backend", backend.label}},
              static_cast<double>(bt.h2_connections));
      gauge(weight, {{"pool", pool.name()}, {"backend", backend.label}},
            st.weight.load(std::memory_order_relaxed));
      counter(ejections, {{"pool", pool.name()}, {"backend", backend.label}},
              st.ejections_total.load(std::memory_order_relaxed));
    }
  }

  auto health_checks = family("lb_health_checks_total",
                              "Active health checks, by pool, backend and result (pass, fail).",
                              MetricType::Counter);
  if (health_checks_) {
    for (const HealthCheckCount& c : health_checks_()) {
      counter(health_checks, {{"pool", c.pool}, {"backend", c.backend}, {"result", "pass"}},
              static_cast<double>(c.passed));
      counter(health_checks, {{"pool", c.pool}, {"backend", c.backend}, {"result", "fail"}},
              static_cast<double>(c.failed));
    }
  }

  auto rate_limited = family("lb_rate_limited_total",
                             "Requests refused with 429 by a route's rate limit, by listener and "
                             "route (its name, else #INDEX).",
                             MetricType::Counter);
  auto untracked = family("lb_rate_limit_untracked_total",
                          "Requests a route's rate limit let through untracked: more keys were "
                          "active than its max_keys, by listener and route.",
                          MetricType::Counter);
  auto shared = family("lb_rate_limit_shared",
                       "1 while a route's scope: cluster rate limit is shared through Redis, 0 "
                       "while Redis is unreachable and it falls back (on_redis_error), by "
                       "listener and route.",
                       MetricType::Gauge);
  for (const auto& l : runtime->listeners)
    for (const auto& r : l->router.routes())
      if (r.limiter) {
        counter(rate_limited, {{"listener", l->config.name}, {"route", r.label}},
                static_cast<double>(r.limiter->refused()));
        counter(untracked, {{"listener", l->config.name}, {"route", r.label}},
                static_cast<double>(r.limiter->untracked()));
        if (r.limiter->shared())
          gauge(shared, {{"listener", l->config.name}, {"route", r.label}},
                r.limiter->mode() == proxy::RateLimiter::Mode::shared ? 1 : 0);
      }
  auto expiry = family("lb_certificate_expiry_seconds",
                       "When each certificate a TLS listener serves expires (notAfter, seconds "
                       "since the epoch), by listener, name and source (file, acme).",
                       MetricType::Gauge);
  for (const auto& l : runtime->listeners) {
    if (!l->tls)
      continue;
    for (const auto& served : l->tls->served()) {
      if (served.self_signed_placeholder)
        continue;
      for (const auto& name : served.names)
        gauge(expiry,
              {{"listener", l->config.name},
               {"name", name},
               {"source", served.acme ? "acme" : "file"}},
              static_cast<double>(served.not_after));
    }
  }
  auto acme = family("lb_acme_renewals_total",
                     "Certificate orders from ACME (first ones and renewals), by listener and "
                     "result (success, failure).",
                     MetricType::Counter);
  if (acme_) {
    for (const AcmeRenewalCount& c : acme_()) {
      counter(acme, {{"listener", c.listener}, {"result", "success"}},
              static_cast<double>(c.succeeded));
      counter(acme, {{"listener", c.listener}, {"result", "failure"}},
              static_cast<double>(c.failed));
    }
  }

  auto redis_up =
      family("lb_cluster_redis_up", "1 while the tier's Redis (cluster.redis) answers, else 0.",
             MetricType::Gauge);
  auto redis_trips = family("lb_cluster_redis_round_trips_total",
                            "Round trips to the tier's Redis.", MetricType::Counter);
  auto redis_errors =
      family("lb_cluster_redis_errors_total",
             "Failed connections and commands to the tier's Redis.", MetricType::Counter);
  if (cluster_) {
    ClusterLink link = cluster_();
    gauge(redis_up, {{"redis", link.redis}}, link.connected ? 1 : 0);
    counter(redis_trips, {{"redis", link.redis}}, static_cast<double>(link.round_trips));
    counter(redis_errors, {{"redis", link.redis}}, static_cast<double>(link.errors));
  }

  auto reloads =
      family("lb_config_reloads_total", "Configuration reloads, by result (success, failure).",
             MetricType::Counter);
  counter(reloads, {{"result", "success"}}, static_cast<double>(reloads_ok_.load()));
  counter(reloads, {{"result", "failure"}}, static_cast<double>(reloads_failed_.load()));

  auto build = family("lb_build_info", "Always 1; the version label says which lb is running.",
                      MetricType::Gauge);
  gauge(build, {{"version", lb::version}}, 1);

  std::vector<MetricFamily> out;
  for (MetricFamily* f : {&requests,       &duration,         &upstream_requests,
                          &connect_errors, &healthy,          &active,
                          &pooled,         &h2_backend,       &weight,
                          &share,          &connections,      &h2_connections,
                          &h2_streams,     &h2_goaways,       &bytes,
                          &retries,        &budget_exhausted, &fail_open,
                          &grpc,           &health_checks,    &ejections,
                          &rate_limited,   &untracked,        &expiry,
                          &acme,           &reloads,          &build})
    out.push_back(std::move(*f));
  if (cluster_) // (only with a cluster: block)
    for (MetricFamily* f : {&redis_up, &redis_trips, &redis_errors, &shared})
      out.push_back(std::move(*f));
  return out;
}

std::string MetricsCollector::text() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, Collect());
  return out.str();
}

} // namespace lb::admin
