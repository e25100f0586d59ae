// lb: a layer-7 HTTP load balancer.
//   lb run   -c FILE   serve (FILE defaults to config/lb.yaml)
//   lb check -c FILE   validate only
//   lb version
#include "config/config.hpp"
#include "healthcheck/checker.hpp"
#include "healthcheck/dns.hpp"
#include "lb/admin/admin.hpp"
#include "lb/io/log.hpp"
#include "lb/server/server.hpp"
#include "lb/version.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

namespace {

namespace asio = boost::asio;
using lb::proxy::Runtime;

// Active health check targets of a snapshot, named by stable ids so that the
// checker keeps the state of backends a reload or DNS change keeps.
std::vector<lb::healthcheck::Target> health_targets(const Runtime& runtime) {
  std::vector<lb::healthcheck::Target> targets;
  for (const auto& pool : runtime.pools) {
    if (!pool->config().health_check.enabled)
      continue;
    for (size_t b = 0; b < pool->backends().size(); ++b) {
      const auto& backend = pool->backends()[b];
      lb::healthcheck::Target t;
      t.pool = pool->id();
      t.backend = backend.id;
      t.endpoint = backend.endpoint;
      t.label = backend.label;
      t.check = pool->config().health_check;
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
  std::vector<lb::healthcheck::DnsQuery> queries;
  std::vector<std::string> keys;
};

DnsQueries dns_queries(const lb::config::Config& config) {
  DnsQueries q;
  for (const auto& pool : config.pools)
    for (const auto& region : pool.regions)
      for (const auto& b : region.backends) {
        if (b.kind == lb::config::Backend::Kind::address)
          continue;
        std::string key = b.discovery_key();
        if (std::find(q.keys.begin(), q.keys.end(), key) != q.keys.end())
          continue;
        lb::healthcheck::DnsQuery query;
        query.kind = b.kind == lb::config::Backend::Kind::srv
                         ? lb::healthcheck::DnsQuery::Kind::srv
                         : lb::healthcheck::DnsQuery::Kind::host;
        query.name = b.name;
        query.port = b.address.port;
        q.queries.push_back(std::move(query));
        q.keys.push_back(std::move(key));
      }
  return q;
}

lb::healthcheck::DnsSettings dns_settings(const lb::config::Config& config) {
  lb::healthcheck::DnsSettings settings;
  for (const auto& a : config.dns.servers)
    settings.servers.emplace_back(boost::asio::ip::make_address(a.host), a.port);
  settings.min_ttl = config.dns.min_ttl;
  settings.max_ttl = config.dns.max_ttl;
  return settings;
}

std::vector<lb::upstream::DiscoveredAddress>
addresses_of(const std::vector<lb::healthcheck::DnsRecord>& records) {
  std::vector<lb::upstream::DiscoveredAddress> out;
  for (const auto& r : records)
    out.push_back({r.address, r.port, r.priority, r.weight, r.target});
  return out;
}

std::string describe(const std::vector<lb::healthcheck::DnsRecord>& records) {
  std::string text;
  for (const auto& r : records) {
    if (!text.empty())
      text += ", ";
    text += r.address.is_v6() ? "[" + r.address.to_string() + "]" : r.address.to_string();
    text += ":" + std::to_string(r.port);
  }
  return text.empty() ? "no addresses" : text;
}

// What a reload cannot change without a restart.
void warn_unchanged(const lb::config::Config& before, const lb::config::Config& after) {
  if (before.workers != after.workers)
    lb::io::log("reload: 'workers' changed: takes effect at the next restart");
  if (before.admin.listen.text() != after.admin.listen.text())
    lb::io::log("reload: 'admin.listen' changed: takes effect at the next restart");
  if (before.access_log.path != after.access_log.path ||
      before.access_log.format != after.access_log.format)
    lb::io::log("reload: 'access_log' changed: takes effect at the next restart");
  // Read buffers are sized at startup for the largest request head allowed then.
  auto largest = [](const lb::config::Config& c) {
    uint64_t n = 16 * 1024;
    for (const auto& l : c.listeners)
      n = std::max<uint64_t>(n, l.limits.max_header_bytes);
    return n;
  };
  if (largest(after) > largest(before))
    lb::io::log("reload: 'max_header_bytes' above %llu takes effect at the next restart",
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

bool same_dns(const lb::healthcheck::DnsSettings& a, const lb::healthcheck::DnsSettings& b) {
  return a.servers == b.servers && a.min_ttl == b.min_ttl && a.max_ttl == b.max_ttl &&
         a.timeout == b.timeout;
}

// Serves until SIGTERM/SIGINT, then drains: stop accepting, let in-flight
// requests finish (up to shutdown_timeout), exit 0. SIGHUP and POST /reload
// load the config file again and switch to it without dropping anything.
int serve(std::shared_ptr<const lb::config::Config> config) {
  std::signal(SIGPIPE, SIG_IGN);
  // Every connection is a descriptor (two when proxied): use all the system allows.
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  asio::io_context main_io;
  const std::shared_ptr<const lb::config::Config> first_config = config;

  // Whatever builds and publishes a snapshot (a reload, a DNS change) and
  // whatever changes backend state from outside the data path (health check
  // transitions) holds this, so no change lands in a snapshot being replaced.
  std::mutex control;
  lb::upstream::Registry registry;
  lb::upstream::Discovered discovered;

  // DNS discovery: resolved once before serving, then re-resolved at each TTL
  // on its own thread; a changed answer rebuilds the pools that use it.
  struct Resolving {
    std::unique_ptr<lb::healthcheck::Discovery> discovery;
    std::vector<std::string> keys; // the discovery keys of its queries, in order
    lb::healthcheck::DnsSettings settings;
    uint64_t generation = 0; // answers posted by an older resolver are dropped
  } dns;
  uint64_t dns_generation = 0;
  std::function<void(uint64_t, const std::string&, const std::vector<lb::healthcheck::DnsRecord>&)>
      on_dns;
  // A resolver for `c`'s names (not started), after resolving them once:
  // answers go into `into`, failures keep what `into` had.
  auto prepare_dns = [&](const lb::config::Config& c, lb::upstream::Discovered& into) {
    Resolving r;
    DnsQueries q = dns_queries(c);
    r.keys = q.keys;
    r.settings = dns_settings(c);
    r.generation = ++dns_generation;
    std::erase_if(into, [&](const auto& d) {
      return std::find(q.keys.begin(), q.keys.end(), d.first) == q.keys.end();
    });
    if (q.queries.empty())
      return r;
    try {
      r.discovery = std::make_unique<lb::healthcheck::Discovery>(
          q.queries, r.settings,
          [&on_dns, generation = r.generation,
           keys = q.keys](size_t i, const std::vector<lb::healthcheck::DnsRecord>& records) {
            on_dns(generation, keys.at(i), records);
          },
          [](const std::string& line) { lb::io::log("%s", line.c_str()); });
    } catch (const std::exception& e) {
      lb::io::log("dns: cannot start the resolver: %s", e.what());
      return r;
    }
    auto answers = r.discovery->resolve_all();
    for (size_t i = 0; i < answers.size(); ++i) {
      if (answers[i].ok) {
        into[q.keys[i]] = addresses_of(answers[i].records);
        lb::io::log("dns: %s: %s", q.keys[i].c_str(), describe(answers[i].records).c_str());
      } else {
        // Kept from before (a reload), or none yet: retried soon.
        lb::io::log("dns: %s: %s; %s", q.keys[i].c_str(), answers[i].error.c_str(),
                    into.count(q.keys[i]) ? "keeping the last addresses"
                                          : "no backends from it yet");
      }
    }
    return r;
  };
  dns = prepare_dns(*config, discovered);

  lb::server::Server server(std::make_shared<Runtime>(config, registry, discovered));
  registry.serving();
  if (std::string problem = tls_problem(*server.runtime()); !problem.empty()) {
    lb::io::log("%s", problem.c_str());
    return 1;
  }
  if (!server.bind())
    return 1;
  lb::admin::AdminServer admin(main_io, config->admin, server);
  std::string error;
  if (!admin.bind(error)) {
    lb::io::log("admin: cannot listen on %s: %s", config->admin.listen.text().c_str(),
                error.c_str());
    return 1;
  }
  admin.start();

  // Active health checks: their own thread; transitions update the pools.
  lb::healthcheck::Checker checker(
      health_targets(*server.runtime()), [&](const lb::healthcheck::Transition& t) {
        std::lock_guard lock(control);
        for (const auto& pool : server.runtime()->pools) {
          // A reload may have turned this pool's checks off meanwhile.
          if (pool->id() != t.pool || !pool->config().health_check.enabled)
            continue;
          int b = pool->find_id(static_cast<uint32_t>(t.backend));
          if (b < 0)
            continue;
          lb::io::log("pool %s: backend %s is now %s: %s", pool->name().c_str(),
                      pool->backends()[static_cast<size_t>(b)].label.c_str(),
                      t.healthy ? "healthy" : "unhealthy", t.reason.c_str());
          pool->set_healthy(static_cast<size_t>(b), t.healthy);
        }
      });
  checker.start();
  admin.set_health_check_counts([&checker, &server] {
    std::vector<lb::admin::HealthCheckCount> counts;
    auto runtime = server.runtime();
    for (const auto& st : checker.stats())
      for (const auto& pool : runtime->pools) {
        if (pool->id() != st.pool)
          continue;
        int b = pool->find_id(static_cast<uint32_t>(st.backend));
        if (b >= 0)
          counts.push_back({pool->name(), pool->backends()[static_cast<size_t>(b)].label, st.passes,
                            st.failures});
      }
    return counts;
  });

  // A DNS answer changed (discovery thread): on the main thread, rebuild the
  // pools that discover backends; kept addresses keep their state.
  on_dns = [&](uint64_t generation, const std::string& key,
               const std::vector<lb::healthcheck::DnsRecord>& records) {
    asio::post(main_io, [&, generation, key, records] {
      if (generation != dns.generation)
        return; // from a resolver a reload replaced
      lb::io::log("dns: %s: now %s", key.c_str(), describe(records).c_str());
      std::lock_guard lock(control);
      discovered[key] = addresses_of(records);
      auto next = std::make_shared<Runtime>(*server.runtime(), registry, discovered);
      std::string error;
      if (!server.publish(next, error)) {
        lb::io::log("dns: cannot apply the new addresses: %s", error.c_str());
        return;
      }
      checker.update(health_targets(*next));
    });
  };
  if (dns.discovery)
    dns.discovery->start();

  // Reload: the file is validated as `lb check` does; an invalid one changes nothing.
  auto reload = [&](const char* why) -> lb::admin::ReloadResult {
    auto loaded = lb::config::load_file(config->file);
    if (!loaded.config) {
      std::string message;
      for (const auto& e : loaded.errors)
        message += (message.empty() ? "" : "\n") + e;
      lb::io::log("%s: reload refused, still serving the previous config: %zu error%s in %s", why,
                  loaded.errors.size(), loaded.errors.size() == 1 ? "" : "s", config->file.c_str());
      for (const auto& e : loaded.errors)
        lb::io::log("  %s", e.c_str());
      admin.count_reload(false);
      return {false, message};
    }
    warn_unchanged(*first_config, *loaded.config);
    // New DNS names are resolved before the config that uses them is served;
    // the resolver in force changes only if the reload goes through.
    lb::upstream::Discovered next_discovered = discovered;
    Resolving next_dns;
    bool dns_changed = dns_queries(*loaded.config).keys != dns.keys ||
                       !same_dns(dns_settings(*loaded.config), dns.settings);
    if (dns_changed)
      next_dns = prepare_dns(*loaded.config, next_discovered);
    std::lock_guard lock(control);
    auto next =
        std::make_shared<Runtime>(loaded.config, registry, next_discovered, server.runtime().get());
    std::string publish_error = tls_problem(*next);
    if (!publish_error.empty() || !server.publish(next, publish_error)) {
      lb::io::log("%s: reload refused, still serving the previous config: %s", why,
                  publish_error.c_str());
      admin.count_reload(false);
      return {false, publish_error};
    }
    if (dns_changed) {
      if (dns.discovery)
        dns.discovery->stop();
      dns = std::move(next_dns);
      discovered = std::move(next_discovered);
      if (dns.discovery)
        dns.discovery->start();
    }
    config = loaded.config;
    checker.update(health_targets(*next));
    size_t backends = 0;
    for (const auto& p : next->pools)
      backends += p->backends().size();
    lb::io::log("%s: configuration reloaded from %s (%zu listeners, %zu pools, %zu backends)", why,
                config->file.c_str(), next->listeners.size(), next->pools.size(), backends);
    admin.count_reload(true);
    return {true, "ok: configuration reloaded"};
  };
  admin.set_reload_handler([&] { return reload("POST /reload"); });

  asio::signal_set signals(main_io, SIGTERM, SIGINT, SIGHUP);
  asio::steady_timer deadline(main_io);
  bool stopping = false;
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int sig) {
        if (ec)
          return;
        if (sig == SIGHUP) {
          if (!stopping)
            reload("SIGHUP");
          signals.async_wait(on_signal);
          return;
        }
        if (stopping) {
          lb::io::log("second signal: stopping now");
          main_io.stop();
          return;
        }
        stopping = true;
        lb::io::log("%s: draining (up to %lld ms), then exiting",
                    sig == SIGTERM ? "SIGTERM" : "SIGINT",
                    static_cast<long long>(config->shutdown_timeout.count()));
        admin.set_shutting_down();
        server.drain(main_io, [&] {
          lb::io::log("drained: exiting");
          main_io.stop();
        });
        deadline.expires_after(config->shutdown_timeout);
        deadline.async_wait([&](const boost::system::error_code& e) {
          if (e)
            return;
          lb::io::log("shutdown_timeout reached: closing remaining connections");
          main_io.stop();
        });
        signals.async_wait(on_signal);
      };
  signals.async_wait(on_signal);

  // The control tick: ends outlier ejections whose time is up, ramps slow_start.
  asio::steady_timer control_timer(main_io);
  std::function<void(const boost::system::error_code&)> on_control =
      [&](const boost::system::error_code& ec) {
        if (ec)
          return;
        {
          std::lock_guard lock(control);
          for (const auto& pool : server.runtime()->pools)
            pool->tick();
        }
        control_timer.expires_after(std::chrono::milliseconds(100));
        control_timer.async_wait(on_control);
      };
  control_timer.expires_after(std::chrono::milliseconds(100));
  control_timer.async_wait(on_control);

  server.start();
  lb::io::log("ready (%u workers)", server.workers());
  main_io.run();
  admin.close();
  if (dns.discovery)
    dns.discovery->stop();
  checker.stop();
  server.stop();
  return 0;
}

int usage() {
  std::fprintf(stderr, "usage: lb run [-c FILE]     serve (FILE defaults to config/lb.yaml)\n"
                       "       lb check [-c FILE]   validate the config and exit\n"
                       "       lb version\n");
  return 2;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2)
    return usage();
  std::string command = argv[1];
  if (command == "version" || command == "--version") {
    std::printf("lb %s\n", lb::version);
    return 0;
  }
  if (command != "run" && command != "check")
    return usage();

  std::string file = "config/lb.yaml";
  for (int i = 2; i < argc; ++i) {
    if ((std::strcmp(argv[i], "-c") == 0 || std::strcmp(argv[i], "--config") == 0) &&
        i + 1 < argc) {
      file = argv[++i];
    } else {
      std::fprintf(stderr, "lb: unknown argument '%s'\n", argv[i]);
      return usage();
    }
  }

  auto loaded = lb::config::load_file(file);
  if (!loaded.config) {
    for (const auto& e : loaded.errors)
      std::fprintf(stderr, "%s\n", e.c_str());
    std::fprintf(stderr, "lb: %zu error%s in %s\n", loaded.errors.size(),
                 loaded.errors.size() == 1 ? "" : "s", file.c_str());
    return 1;
  }
  if (command == "check") {
    std::printf("ok\n");
    return 0;
  }
  return serve(loaded.config);
}
