#pragma once
// lb's Prometheus metrics (SPEC "Metrics"), built at scrape time: the workers'
// counters summed (see totals.hpp) plus state read from the pools, as
// prometheus-cpp MetricFamily objects that its TextSerializer writes out.

#include "lb/server/server.hpp"

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lb::admin {

// Active health check results of one backend, for lb_health_checks_total.
struct HealthCheckCount {
  std::string pool;
  std::string backend; // the backend's label, "host:port"
  uint64_t passed = 0;
  uint64_t failed = 0;
};
using HealthCheckCounts = std::function<std::vector<HealthCheckCount>()>;

// ACME renewals (orders) of one listener's certificate, for lb_acme_renewals_total.
struct AcmeRenewalCount {
  std::string listener;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
};
using AcmeRenewalCounts = std::function<std::vector<AcmeRenewalCount>()>;

// The link to the tier's Redis (`cluster:`), for /status and metrics.
struct ClusterLink {
  std::string redis; // host:port
  bool connected = false;
  uint64_t round_trips = 0;
  uint64_t errors = 0;
  int64_t version = -1; // of the backend overrides applied; -1: none read yet
};
using ClusterLinkStatus = std::function<ClusterLink()>;

class MetricsCollector : public prometheus::Collectable {
public:
  explicit MetricsCollector(const server::Server& server) : server_(server) {}

  // Where lb_health_checks_total comes from (called at each scrape, on the admin
  // thread). Unset: the family is written with no samples.
  void set_health_check_counts(HealthCheckCounts counts) { health_checks_ = std::move(counts); }
  // Where lb_acme_renewals_total comes from (same terms).
  void set_acme_renewal_counts(AcmeRenewalCounts counts) { acme_ = std::move(counts); }
  // Where the lb_cluster_redis_* metrics come from (unset: no cluster).
  void set_cluster_status(ClusterLinkStatus status) { cluster_ = std::move(status); }
  // Counts a configuration reload for lb_config_reloads_total. Any thread.
  void count_reload(bool ok) { (ok ? reloads_ok_ : reloads_failed_).fetch_add(1); }

  std::vector<prometheus::MetricFamily> Collect() const override;
  // Collect() in the Prometheus text exposition format (version 0.0.4).
  std::string text() const;

private:
  const server::Server& server_;
  HealthCheckCounts health_checks_;
  AcmeRenewalCounts acme_;
  ClusterLinkStatus cluster_;
  std::atomic<uint64_t> reloads_ok_{0};
  std::atomic<uint64_t> reloads_failed_{0};
};

} // namespace lb::admin
