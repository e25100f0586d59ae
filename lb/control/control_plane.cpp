#include "lb/control/control_plane.hpp"

#include "lb/cluster/acme_share.hpp"
#include "lb/io/log.hpp"

#include <boost/asio/post.hpp>

#include <malloc.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <csignal>

namespace lb::control {

namespace asio = boost::asio;
using proxy::Runtime;

namespace {

// Active health check targets of a snapshot, named by stable ids so that the
// checker keeps the state of backends a reload or DNS change keeps.
std::vector<healthcheck::Target> health_targets(const Runtime& runtime) {
  std::vector<healthcheck::Target> targets;
  for (const auto& pool : runtime.pools) {
    if (!pool->config().health_check.enabled)
      continue;
    for (size_t b = 0; b < pool->backends().size(); ++b) {
      const auto& backend = pool->backends()[b];
      healthcheck::Target t;
      t.pool = pool->id();
      t.backend = backend.id;
      t.endpoint = backend.endpoint;
      t.label = backend.label;
      t.check = pool->config().health_check;
      t.http2 = pool->config().protocol != config::Protocol::http1;
      // Health as the pool has it now, for a check that starts over (its
      // settings changed): read when the checker takes the new targets.
      t.start_healthy = pool->state(b).healthy.load();
      t.start_ever_passed = pool->state(b).ever_healthy.load();
      t.current = [state = pool->shared_state(b)] {
        return std::pair<bool, bool>(state->healthy.load(), state->ever_healthy.load());
      };
      if (pool->config().tls.enabled) {
        t.tls = pool->shared_tls();
        t.tls_config = pool->config().tls;
        t.host_name = backend.host_name;
      }
      targets.push_back(std::move(t));
    }
  }
  return targets;
}

// The DNS names a config's pools discover backends by, one query per distinct
// dns:/srv: entry, with the key each is known by (config::Backend::discovery_key).
struct DnsQueries {
  std::vector<healthcheck::DnsQuery> queries;
  std::vector<std::string> keys;
};

DnsQueries dns_queries(const config::Config& config) {
  DnsQueries q;
  for (const auto& pool : config.pools)
    for (const auto& region : pool.regions)
      for (const auto& b : region.backends) {
        if (b.kind == config::Backend::Kind::address)
          continue;
        std::string key = b.discovery_key();
        if (std::find(q.keys.begin(), q.keys.end(), key) != q.keys.end())
          continue;
        healthcheck::DnsQuery query;
        query.kind = b.kind == config::Backend::Kind::srv ? healthcheck::DnsQuery::Kind::srv
                                                          : healthcheck::DnsQuery::Kind::host;
        query.name = b.name;
        query.port = b.address.port;
        q.queries.push_back(std::move(query));
        q.keys.push_back(std::move(key));
      }
  return q;
}

healthcheck::DnsSettings dns_settings(const config::Config& config) {
  healthcheck::DnsSettings settings;
  for (const auto& a : config.dns.servers)
    settings.servers.emplace_back(boost::asio::ip::make_address(a.host), a.port);
  settings.min_ttl = config.dns.min_ttl;
  settings.max_ttl = config.dns.max_ttl;
  return settings;
}

std::vector<upstream::DiscoveredAddress>
addresses_of(const std::vector<healthcheck::DnsRecord>& records) {
  std::vector<upstream::DiscoveredAddress> out;
  for (const auto& r : records)
    out.push_back({r.address, r.port, r.priority, r.weight, r.target});
  return out;
}

std::string describe(const std::vector<healthcheck::DnsRecord>& records) {
  std::string text;
  for (const auto& r : records) {
    if (!text.empty())
      text += ", ";
    if (r.address.is_v6())
      text.append("[").append(r.address.to_string()).append("]");
    else
      text += r.address.to_string();
    text += ':';
    text += std::to_string(r.port);
  }
  return text.empty() ? "no addresses" : text;
}

// What a reload cannot change without a restart.
void warn_unchanged(const config::Config& before, const config::Config& after) {
  if (before.workers != after.workers)
    io::log("reload: 'workers' changed: takes effect at the next restart");
  if (!(before.cluster == after.cluster))
    io::log("reload: 'cluster' changed: takes effect at the next restart");
  if (before.admin.listen.text() != after.admin.listen.text())
    io::log("reload: 'admin.listen' changed: takes effect at the next restart");
  if (before.access_log.path != after.access_log.path ||
      before.access_log.format != after.access_log.format)
    io::log("reload: 'access_log' changed: takes effect at the next restart");
  // Read buffers are sized at startup for the largest request head allowed then.
  auto largest = [](const config::Config& c) {
    uint64_t n = 16 * 1024;
    for (const auto& l : c.listeners)
      n = std::max<uint64_t>(n, l.limits.max_header_bytes);
    return n;
  };
  if (largest(after) > largest(before))
    io::log("reload: 'max_header_bytes' above %llu takes effect at the next restart",
            static_cast<unsigned long long>(largest(before)));
}

// A pool that should speak HTTPS to its backends but has no TLS context (its
// CA bundle could not be loaded): such a config is not served.
std::string tls_problem(const Runtime& runtime) {
  for (const auto& p : runtime.pools)
    if (p->config().tls.enabled && !p->tls())
      return "pool " + p->name() + ": TLS: " + p->tls_error();
  return {};
}

bool same_dns(const healthcheck::DnsSettings& a, const healthcheck::DnsSettings& b) {
  return a.servers == b.servers && a.min_ttl == b.min_ttl && a.max_ttl == b.max_ttl &&
         a.timeout == b.timeout;
}

constexpr std::chrono::milliseconds tick_interval{100};

} // namespace

ControlPlane::ControlPlane(std::shared_ptr<const config::Config> config)
    : config_(config), first_(config), signals_(io_, SIGTERM, SIGINT, SIGHUP), deadline_(io_),
      tick_(io_) {}

ControlPlane::~ControlPlane() { stop(); }

int ControlPlane::run() {
  std::signal(SIGPIPE, SIG_IGN);
  // Every connection is a descriptor (two when proxied): use all the system allows.
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  // Request buffers and exchanges (16 KiB and more) are mapped on their own
  // rather than carved from the heap between long-lived connections, so what
  // a burst of requests leaves behind goes back to the system whole when the
  // workers trim their free lists.
  mallopt(M_MMAP_THRESHOLD, 16 * 1024);
  if (!start())
    return 1;
  io_.run();
  stop();
  return 0;
}

bool ControlPlane::start() {
  // DNS discovery: resolved once before serving, then re-resolved at each TTL
  // on its own thread; a changed answer rebuilds the pools that use it.
  dns_ = prepare_dns(*config_, discovered_);
  server_.emplace(std::make_shared<Runtime>(config_, registry_, discovered_));
  registry_.serving();
  if (std::string problem = tls_problem(*server_->runtime()); !problem.empty()) {
    io::log("%s", problem.c_str());
    return false;
  }
  if (!server_->bind())
    return false;
  admin_.emplace(io_, config_->admin, *server_);
  std::string error;
  if (!admin_->bind(error)) {
    io::log("admin: cannot listen on %s: %s", config_->admin.listen.text().c_str(), error.c_str());
    return false;
  }
  admin_->start();

  // Active health checks: their own thread; transitions update the pools.
  checker_.emplace(health_targets(*server_->runtime()),
                   [this](const healthcheck::Transition& t) { on_health_transition(t); });
  checker_->start();
  admin_->set_health_check_counts([this] { return health_check_counts(); });
  admin_->set_reload_handler([this] { return reload("POST /reload"); });
  acme_.emplace([this] { boost::asio::post(io_, [this] { refresh_certificates("acme"); }); });
  if (config_->cluster
          .enabled) // one order for the tier: the account, certificates and challenges in Redis
    acme_->set_shared(std::make_shared<cluster::AcmeShare>(config_->cluster));
  acme_->update(*config_);
  if (config_->cluster.enabled) {
    // The tier's overrides are read before this instance serves.
    cluster_.emplace(config_->cluster, [this](std::vector<cluster::Override> overrides) {
      boost::asio::post(io_, [this, o = std::move(overrides)] { apply_overrides(o); });
    });
    std::vector<cluster::Override> overrides;
    if (cluster_->fetch_now(overrides))
      apply_overrides(overrides);
    share_limits();
    cluster_->start();
    admin_->set_cluster(
        [this] {
          cluster::LinkStatus s = cluster_->status();
          return admin::ClusterLink{s.redis, s.connected, s.round_trips, s.errors, s.version};
        },
        [this](const std::string& pool, const std::string& backend, int drained, int weight) {
          return cluster_->publish({pool, backend, drained, weight});
        });
  }
  admin_->set_acme_renewal_counts([this] {
    std::vector<admin::AcmeRenewalCount> out;
    for (const auto& c : acme_->counts())
      out.push_back({c.listener, c.succeeded, c.failed});
    return out;
  });
  watch_certificates();
  if (dns_.discovery)
    dns_.discovery->start();
  do_wait_signal();
  do_tick();
  server_->start();
  started_ = true;
  io::log("ready (%u workers)", server_->workers());
  return true;
}

void ControlPlane::stop() {
  if (!started_)
    return;
  started_ = false;
  admin_->close();
  if (acme_)
    acme_->stop();
  if (cluster_)
    cluster_->stop();
  if (dns_.discovery)
    dns_.discovery->stop();
  checker_->stop();
  server_->stop();
}

// ---- DNS --------------------------------------------------------------------

ControlPlane::Resolving ControlPlane::prepare_dns(const config::Config& c,
                                                  upstream::Discovered& into) {
  Resolving r;
  DnsQueries q = dns_queries(c);
  r.keys = q.keys;
  r.settings = dns_settings(c);
  r.generation = ++dns_generation_;
  std::erase_if(into, [&](const auto& d) {
    return std::find(q.keys.begin(), q.keys.end(), d.first) == q.keys.end();
  });
  if (q.queries.empty())
    return r;
  try {
    r.discovery = std::make_unique<healthcheck::Discovery>(
        q.queries, r.settings,
        [this, generation = r.generation,
         keys = q.keys](size_t i, const std::vector<healthcheck::DnsRecord>& records) {
          on_dns_answer(generation, keys.at(i), records);
        },
        [](const std::string& line) { io::log("%s", line.c_str()); });
  } catch (const std::exception& e) {
    io::log("dns: cannot start the resolver: %s", e.what());
    return r;
  }
  auto answers = r.discovery->resolve_all();
  for (size_t i = 0; i < answers.size(); ++i) {
    if (answers[i].ok) {
      into[q.keys[i]] = addresses_of(answers[i].records);
      io::log("dns: %s: %s", q.keys[i].c_str(), describe(answers[i].records).c_str());
    } else {
      // Kept from before (a reload), or none yet: retried soon.
      io::log("dns: %s: %s; %s", q.keys[i].c_str(), answers[i].error.c_str(),
              into.count(q.keys[i]) ? "keeping the last addresses" : "no backends from it yet");
    }
  }
  return r;
}

// A DNS answer changed (discovery thread): on the main thread, rebuild the
// pools that discover backends; kept addresses keep their state.
void ControlPlane::on_dns_answer(uint64_t generation, const std::string& key,
                                 const std::vector<healthcheck::DnsRecord>& records) {
  asio::post(io_, [this, generation, key, records] {
    if (generation != dns_.generation)
      return; // from a resolver a reload replaced
    io::log("dns: %s: now %s", key.c_str(), describe(records).c_str());
    std::lock_guard lock(control_);
    discovered_[key] = addresses_of(records);
    auto next = std::make_shared<Runtime>(*server_->runtime(), registry_, discovered_);
    std::string error;
    if (!server_->publish(next, error)) {
      io::log("dns: cannot apply the new addresses: %s", error.c_str());
      return;
    }
    checker_->update(health_targets(*next));
    if (cluster_) {
      reapply_overrides();
      share_limits();
    }
  });
}

// ---- Health ------------------------------------------------------------------

// Checker thread.
void ControlPlane::on_health_transition(const healthcheck::Transition& t) {
  std::lock_guard lock(control_);
  for (const auto& pool : server_->runtime()->pools) {
    // A reload may have turned this pool's checks off meanwhile.
    if (pool->id() != t.pool || !pool->config().health_check.enabled)
      continue;
    int b = pool->find_id(static_cast<uint32_t>(t.backend));
    if (b < 0)
      continue;
    io::log("pool %s: backend %s is now %s: %s", pool->name().c_str(),
            pool->backends()[static_cast<size_t>(b)].label.c_str(),
            t.healthy ? "healthy" : "unhealthy", t.reason.c_str());
    pool->set_healthy(static_cast<size_t>(b), t.healthy);
  }
}

// Admin thread (lb_health_checks_total at scrape time).
std::vector<admin::HealthCheckCount> ControlPlane::health_check_counts() {
  std::vector<admin::HealthCheckCount> counts;
  auto runtime = server_->runtime();
  for (const auto& st : checker_->stats())
    for (const auto& pool : runtime->pools) {
      if (pool->id() != st.pool)
        continue;
      int b = pool->find_id(static_cast<uint32_t>(st.backend));
      if (b >= 0)
        counts.push_back(
            {pool->name(), pool->backends()[static_cast<size_t>(b)].label, st.passes, st.failures});
    }
  return counts;
}

// ---- Reload --------------------------------------------------------------------

admin::ReloadResult ControlPlane::reload(const char* why) {
  auto loaded = config::load_file(config_->file);
  if (!loaded.config) {
    std::string message;
    for (const auto& e : loaded.errors)
      message += (message.empty() ? "" : "\n") + e;
    io::log("%s: reload refused, still serving the previous config: %zu error%s in %s", why,
            loaded.errors.size(), loaded.errors.size() == 1 ? "" : "s", config_->file.c_str());
    for (const auto& e : loaded.errors)
      io::log("  %s", e.c_str());
    admin_->count_reload(false);
    return {false, message};
  }
  warn_unchanged(*first_, *loaded.config);
  // New DNS names are resolved before the config that uses them is served;
  // the resolver in force changes only if the reload goes through.
  upstream::Discovered next_discovered = discovered_;
  Resolving next_dns;
  bool dns_changed = dns_queries(*loaded.config).keys != dns_.keys ||
                     !same_dns(dns_settings(*loaded.config), dns_.settings);
  if (dns_changed)
    next_dns = prepare_dns(*loaded.config, next_discovered);
  std::lock_guard lock(control_);
  auto next = std::make_shared<Runtime>(loaded.config, registry_, next_discovered,
                                        server_->runtime().get());
  std::string publish_error = tls_problem(*next);
  if (!publish_error.empty() || !server_->publish(next, publish_error)) {
    io::log("%s: reload refused, still serving the previous config: %s", why,
            publish_error.c_str());
    admin_->count_reload(false);
    return {false, publish_error};
  }
  if (dns_changed) {
    if (dns_.discovery)
      dns_.discovery->stop();
    dns_ = std::move(next_dns);
    discovered_ = std::move(next_discovered);
    if (dns_.discovery)
      dns_.discovery->start();
  }
  config_ = loaded.config;
  checker_->update(health_targets(*next));
  if (cluster_) {
    reapply_overrides();
    share_limits();
  }
  acme_->update(*config_);
  watch_certificates();
  size_t backends = 0;
  for (const auto& p : next->pools)
    backends += p->backends().size();
  io::log("%s: configuration reloaded from %s (%zu listeners, %zu pools, %zu backends)", why,
          config_->file.c_str(), next->listeners.size(), next->pools.size(), backends);
  admin_->count_reload(true);
  return {true, "ok: configuration reloaded"};
}

// ---- Signals -------------------------------------------------------------------

void ControlPlane::do_wait_signal() {
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) { on_signal(ec, sig); });
}

// SIGHUP reloads; SIGTERM/SIGINT drain, a second one stops at once.
void ControlPlane::on_signal(const boost::system::error_code& ec, int sig) {
  if (ec)
    return;
  if (sig == SIGHUP) {
    // Until the drain, a lame duck still serves: it still reloads.
    if (!stopping_ || lame_duck_)
      reload("SIGHUP");
    else
      io::log("SIGHUP: ignored while draining");
    return do_wait_signal();
  }
  if (lame_duck_) {
    // A second signal during the lame duck: drain now (a third stops at once).
    lame_duck_ = false;
    deadline_.cancel();
    start_drain(sig == SIGTERM ? "second SIGTERM" : "second SIGINT");
    return do_wait_signal();
  }
  if (stopping_) {
    io::log("second signal: stopping now");
    io_.stop();
    return;
  }
  stopping_ = true;
  const char* name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
  admin_->set_shutting_down();
  if (config_->shutdown_delay.count() > 0) {
    // Lame duck: health checks see 503 while everything still serves, so an
    // L4 tier or DNS takes this instance out before it stops accepting.
    io::log("%s: lame duck for %lld ms (/healthz answers 503, listeners keep serving), then "
            "draining (up to %lld ms)",
            name, static_cast<long long>(config_->shutdown_delay.count()),
            static_cast<long long>(config_->shutdown_timeout.count()));
    lame_duck_ = true;
    deadline_.expires_after(config_->shutdown_delay);
    deadline_.async_wait([this](const boost::system::error_code& e) {
      if (e || !lame_duck_)
        return;
      lame_duck_ = false;
      start_drain("shutdown_delay over");
    });
  } else {
    start_drain(name);
  }
  do_wait_signal();
}

void ControlPlane::start_drain(const char* why) {
  io::log("%s: draining (up to %lld ms), then exiting", why,
          static_cast<long long>(config_->shutdown_timeout.count()));
  server_->drain(io_, [this] {
    io::log("drained: exiting");
    io_.stop();
  });
  deadline_.expires_after(config_->shutdown_timeout);
  deadline_.async_wait([this](const boost::system::error_code& e) {
    if (e)
      return;
    io::log("shutdown_timeout reached: closing remaining connections");
    io_.stop();
  });
}

// ---- The control tick: ends outlier ejections whose time is up, ramps slow_start.

void ControlPlane::do_tick() {
  tick_.expires_after(tick_interval);
  tick_.async_wait([this](const boost::system::error_code& ec) { on_tick(ec); });
}

void ControlPlane::on_tick(const boost::system::error_code& ec) {
  if (ec)
    return;
  {
    std::lock_guard lock(control_);
    for (const auto& pool : server_->runtime()->pools)
      pool->tick();
  }
  if (++ticks_ % 10 == 0 && !watched_.empty() && (!stopping_ || lame_duck_) &&
      certificates_changed())
    refresh_certificates("tls.watch");
  do_tick();
}

// ---- Certificates --------------------------------------------------------------

namespace {

std::vector<std::string> watched_files(const config::Config& c) {
  std::vector<std::string> files;
  for (const auto& l : c.listeners)
    if (l.tls.enabled && l.tls.watch) {
      for (const auto& cert : l.tls.certificates) {
        files.push_back(cert.cert);
        files.push_back(cert.key);
      }
      if (!l.tls.client_ca.empty())
        files.push_back(l.tls.client_ca);
    }
  return files;
}

} // namespace

void ControlPlane::watch_certificates() {
  watched_.clear();
  changed_.clear();
  for (const auto& path : watched_files(*config_))
    watched_.push_back({path});
  certificates_changed(); // takes the first stamps
  changed_.clear();
}

bool ControlPlane::certificates_changed() {
  std::vector<Stamp> now;
  for (const auto& w : watched_) {
    Stamp s{w.path};
    struct stat st;
    if (::stat(w.path.c_str(), &st) == 0) {
      s.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
      s.size = st.st_size;
      s.inode = st.st_ino;
    }
    now.push_back(s);
  }
  if (now == watched_) {
    changed_.clear();
    return false;
  }
  // A certificate and its key are written one after the other: what changed
  // is applied once it has held still for a look (a second).
  if (now != changed_) {
    changed_ = now;
    return false;
  }
  watched_ = now;
  changed_.clear();
  return true;
}

void ControlPlane::share_limits() {
  std::vector<cluster::SharedLimit> limits;
  for (const auto& l : server_->runtime()->listeners)
    for (const auto& r : l->router.routes())
      if (r.limiter && r.limiter->shared())
        limits.push_back({l->config.name + " " + r.label, r.limiter});
  cluster_->set_limits(std::move(limits));
}

void ControlPlane::apply_overrides(const std::vector<cluster::Override>& overrides) {
  std::lock_guard lock(control_);
  tier_overrides_ = overrides;
  if (cluster_->version_went_down()) {
    io::log("cluster: the overrides' version went down (Redis lost data, or a replica that lagged "
            "took over): applying the set as it is now");
    applied_stamps_.clear();
  }
  reapply_overrides();
}

// Each field of the tier's set that is newer than what this instance applied
// (a local action on a backend stays until the tier writes that backend
// again). Enables and weights go first, drains after, so that a set that
// moves traffic from one backend to another never leaves a pool empty in
// between. A backend this config lacks gets its override when a reload adds it.
void ControlPlane::reapply_overrides() {
  auto find = [&](const cluster::Override& o) -> std::pair<upstream::Pool*, size_t> {
    for (const auto& pool : server_->runtime()->pools)
      if (pool->name() == o.pool)
        for (size_t b = 0; b < pool->backends().size(); ++b)
          if (pool->backends()[b].label == o.backend)
            return {pool.get(), b};
    return {nullptr, 0};
  };
  auto fresh = [&](const std::string& field, int64_t stamp) {
    auto it = applied_stamps_.find(field);
    return it == applied_stamps_.end() || stamp > it->second;
  };
  size_t applied = 0;
  std::vector<std::pair<upstream::Pool*, size_t>> drains;
  for (const auto& o : tier_overrides_) {
    auto [pool, b] = find(o);
    std::string field = cluster::override_field(o.pool, o.backend);
    if (!pool) {
      // Gone (DNS, a reload): when it comes back it gets the override again.
      applied_stamps_.erase("w:" + field);
      applied_stamps_.erase("d:" + field);
      continue;
    }
    if (o.weight >= 0 && fresh("w:" + field, o.weight_stamp)) {
      pool->set_weight(b, static_cast<uint32_t>(o.weight));
      applied_stamps_["w:" + field] = o.weight_stamp;
      ++applied;
    }
    if (o.drained >= 0 && fresh("d:" + field, o.drained_stamp)) {
      if (o.drained == 1)
        drains.emplace_back(pool, b);
      else
        pool->set_drained(b, false);
      applied_stamps_["d:" + field] = o.drained_stamp;
      ++applied;
    }
  }
  for (auto [pool, b] : drains)
    pool->set_drained(b, true);
  if (applied)
    io::log("cluster: backend overrides version %lld: %zu change%s applied",
            static_cast<long long>(cluster_->status().version), applied, applied == 1 ? "" : "s");
}

void ControlPlane::refresh_certificates(const char* why) {
  if ((stopping_ && !lame_duck_) || !started_)
    return;
  std::lock_guard lock(control_);
  auto next = std::make_shared<Runtime>(config_, registry_, discovered_, server_->runtime().get());
  std::string error = tls_problem(*next);
  if (!error.empty() || !server_->publish(next, error)) {
    io::log("%s: certificates changed but cannot be used, still serving the previous ones: %s", why,
            error.c_str());
    return;
  }
  io::log("%s: certificates loaded again (new TLS handshakes get them)", why);
}

} // namespace lb::control
