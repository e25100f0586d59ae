// lb: a layer-7 HTTP load balancer.
//   lb run   -c FILE   serve (FILE defaults to config/lb.yaml)
//   lb check -c FILE   validate only
//   lb version
#include "config/config.hpp"
#include "healthcheck/checker.hpp"
#include "lb/admin/admin.hpp"
#include "lb/io/log.hpp"
#include "lb/server/server.hpp"
#include "lb/version.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

// Serves until SIGTERM/SIGINT, then drains: stop accepting, let in-flight
// requests finish (up to shutdown_timeout), exit 0.
int serve(std::shared_ptr<const lb::config::Config> config) {
  namespace asio = boost::asio;
  std::signal(SIGPIPE, SIG_IGN);
  // Every connection is a descriptor (two when proxied): use all the system allows.
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  asio::io_context main_io;
  lb::server::Server server(config);
  if (!server.bind()) return 1;
  lb::admin::AdminServer admin(main_io, config->admin, server);
  std::string error;
  if (!admin.bind(error)) {
    lb::io::log("admin: cannot listen on %s: %s", config->admin.listen.text().c_str(),
                error.c_str());
    return 1;
  }
  admin.start();

  // Active health checks: their own thread; transitions update the pools.
  std::vector<lb::healthcheck::Target> targets;
  for (const auto& pool : server.runtime()->pools) {
    if (!pool->config().health_check.enabled) continue;
    for (size_t b = 0; b < pool->backends().size(); ++b) {
      const auto& backend = pool->backends()[b];
      targets.push_back({pool->index(), b, backend.endpoint, backend.label,
                         pool->config().health_check});
    }
  }
  std::unique_ptr<lb::healthcheck::Checker> checker;
  if (!targets.empty()) {
    checker = std::make_unique<lb::healthcheck::Checker>(
        std::move(targets), [runtime = server.runtime()](const lb::healthcheck::Transition& t) {
          auto& pool = *runtime->pools[t.pool];
          lb::io::log("pool %s: backend %s is now %s: %s", pool.name().c_str(),
                      pool.backends()[t.backend].label.c_str(),
                      t.healthy ? "healthy" : "unhealthy", t.reason.c_str());
          pool.set_healthy(t.backend, t.healthy);
        });
    checker->start();
    admin.set_health_check_counts([&checker, runtime = server.runtime()] {
      std::vector<lb::admin::HealthCheckCount> counts;
      auto stats = checker->stats();
      const auto& targets = checker->targets();
      for (size_t i = 0; i < stats.size() && i < targets.size(); ++i) {
        const auto& pool = *runtime->pools[targets[i].pool];
        counts.push_back({pool.name(), pool.backends()[targets[i].backend].label, stats[i].passes,
                          stats[i].failures});
      }
      return counts;
    });
  }

  asio::signal_set signals(main_io, SIGTERM, SIGINT, SIGHUP);
  asio::steady_timer deadline(main_io);
  bool stopping = false;
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        if (sig == SIGHUP) {
          lb::io::log("SIGHUP: configuration reload is not supported yet; still serving %s",
                      config->file.c_str());
          signals.async_wait(on_signal);
          return;
        }
        if (stopping) {
          lb::io::log("second signal: stopping now");
          main_io.stop();
          return;
        }
        stopping = true;
        lb::io::log("%s: draining (up to %lld ms), then exiting", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                    static_cast<long long>(config->shutdown_timeout.count()));
        admin.set_shutting_down();
        server.drain(main_io, [&] {
          lb::io::log("drained: exiting");
          main_io.stop();
        });
        deadline.expires_after(config->shutdown_timeout);
        deadline.async_wait([&](const boost::system::error_code& e) {
          if (e) return;
          lb::io::log("shutdown_timeout reached: closing remaining connections");
          main_io.stop();
        });
        signals.async_wait(on_signal);
      };
  signals.async_wait(on_signal);

  // The control tick: ends outlier ejections whose time is up, ramps slow_start.
  asio::steady_timer control(main_io);
  std::function<void(const boost::system::error_code&)> on_control =
      [&](const boost::system::error_code& ec) {
        if (ec) return;
        for (const auto& pool : server.runtime()->pools) pool->tick();
        control.expires_after(std::chrono::milliseconds(100));
        control.async_wait(on_control);
      };
  control.expires_after(std::chrono::milliseconds(100));
  control.async_wait(on_control);

  server.start();
  lb::io::log("ready (%u workers)", server.workers());
  main_io.run();
  admin.close();
  if (checker) checker->stop();
  server.stop();
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: lb run [-c FILE]     serve (FILE defaults to config/lb.yaml)\n"
               "       lb check [-c FILE]   validate the config and exit\n"
               "       lb version\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string command = argv[1];
  if (command == "version" || command == "--version") {
    std::printf("lb %s\n", lb::version);
    return 0;
  }
  if (command != "run" && command != "check") return usage();

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
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.c_str());
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
