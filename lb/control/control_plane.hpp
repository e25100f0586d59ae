#pragma once
// The control plane: everything that changes what the workers serve, in one
// component. It owns the main thread's io_context, the admin listener, the
// health checker, DNS discovery, signals and the control tick, and builds
// and publishes the runtime snapshots the data path reads.
//
// Threads and locking:
// - The main thread runs the io_context: reloads (SIGHUP, POST /reload),
//   DNS answers (posted by the discovery thread), admin actions (drain,
//   enable, weight: the admin listener is on this io_context), signals and
//   the control tick. These never run at once.
// - The health checker's thread reports transitions; the discovery thread
//   posts its answers to the main thread.
// - `control_` is held by whatever builds and publishes a snapshot (reload,
//   DNS) and by whatever changes backend state from outside the main thread
//   (health transitions) or from the tick (ejections, slow_start ramps), so
//   that no change lands in a snapshot that is being replaced.
// - Workers only read published snapshots (Server::publish swaps them).

#include "config/config.hpp"
#include "healthcheck/checker.hpp"
#include "healthcheck/dns.hpp"
#include "lb/acme/acme.hpp"
#include "lb/admin/admin.hpp"
#include "lb/cluster/cluster.hpp"
#include "lb/server/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace lb::control {

class ControlPlane {
public:
  explicit ControlPlane(std::shared_ptr<const config::Config> config);
  ~ControlPlane();
  ControlPlane(const ControlPlane&) = delete;
  ControlPlane& operator=(const ControlPlane&) = delete;

  // Serves until SIGTERM/SIGINT, then drains: stop accepting, let in-flight
  // requests finish (up to shutdown_timeout). Returns the exit status: 0, or
  // 1 when it could not start (a listener or the admin address taken, a
  // pool's TLS context).
  int run();

private:
  // DNS discovery for one config's names: a resolver and what it resolves.
  struct Resolving {
    std::unique_ptr<healthcheck::Discovery> discovery;
    std::vector<std::string> keys; // the discovery keys of its queries, in order
    healthcheck::DnsSettings settings;
    uint64_t generation = 0; // answers posted by an older resolver are dropped
  };

  bool start();
  // A resolver for `c`'s names (not started), after resolving them once:
  // answers go into `into`, failures keep what `into` had.
  Resolving prepare_dns(const config::Config& c, upstream::Discovered& into);
  void on_dns_answer(uint64_t generation, const std::string& key,
                     const std::vector<healthcheck::DnsRecord>& records);
  void on_health_transition(const healthcheck::Transition& t);
  std::vector<admin::HealthCheckCount> health_check_counts();
  // The config file again, validated as `lb check` does: an invalid one
  // changes nothing.
  admin::ReloadResult reload(const char* why);
  // The listeners built again from the config in force, with the certificate
  // files as they are now (tls.watch, a new ACME certificate). Connections
  // keep the certificate they started with.
  void refresh_certificates(const char* why);
  // tls.watch: the files to watch, and whether they changed since last looked at.
  void watch_certificates();
  bool certificates_changed();
  void do_wait_signal();
  void on_signal(const boost::system::error_code& ec, int sig);
  // Stops accepting and lets in-flight requests finish (up to shutdown_timeout), then exits.
  void start_drain(const char* why);
  void do_tick();
  void on_tick(const boost::system::error_code& ec);
  void stop();

  boost::asio::io_context io_;
  std::shared_ptr<const config::Config> config_;      // the one in force
  const std::shared_ptr<const config::Config> first_; // what a reload cannot change
  std::mutex control_;
  upstream::Registry registry_;
  upstream::Discovered discovered_;
  Resolving dns_;
  uint64_t dns_generation_ = 0;
  std::optional<server::Server> server_;
  std::optional<admin::AdminServer> admin_;
  std::optional<healthcheck::Checker> checker_;
  boost::asio::signal_set signals_;
  boost::asio::steady_timer deadline_;
  boost::asio::steady_timer tick_;
  bool stopping_ = false;
  bool lame_duck_ = false; // stopping, but still serving (shutdown_delay)
  bool started_ = false;
  std::optional<acme::Manager> acme_;
  std::optional<cluster::Cluster> cluster_;
  std::vector<cluster::Override> tier_overrides_; // the last set read
  std::map<std::string, int64_t> applied_stamps_; // "d:POOL BACKEND" -> the version applied
  void reapply_overrides();                       // (control_ held)
  void share_limits(); // the routes' scope: cluster rate limits, to the cluster
  // The tier's backend overrides (cluster:), applied to the pools in force.
  void apply_overrides(const std::vector<cluster::Override>& overrides);
  // tls.watch: each watched file with what stat() said (mtime, size, inode).
  struct Stamp {
    std::string path;
    int64_t mtime_ns = -1;
    int64_t size = -1;
    uint64_t inode = 0;
    bool operator==(const Stamp&) const = default;
  };
  std::vector<Stamp> watched_;
  std::vector<Stamp> changed_; // a change seen at the last look, applied once it holds still
  unsigned ticks_ = 0;
};

} // namespace lb::control
