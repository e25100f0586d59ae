#pragma once
// The runtime snapshot: everything the data path reads, built once from a
// validated Config and then immutable. Workers hold a pointer to it for the
// duration of a request; a new snapshot replaces it as a whole.

#include "config/config_types.hpp"
#include "lb/http/message.hpp"
#include "lb/io/tls.hpp"
#include "lb/upstream/pool.hpp"

#include <memory>
#include <string>
#include <vector>

namespace lb::proxy {

// Routes of one listener, compiled: first match wins.
class Router {
public:
  Router(const std::vector<config::Route>& routes,
         const std::vector<std::shared_ptr<upstream::Pool>>& pools);
  // Index of the pool for this request head, or -1 when no route matches.
  // `authority` (from an absolute-form target), when not empty, stands for Host.
  // `route`, when given, receives the index of the matching route (or -1).
  int match(const http::Head& head, std::string_view authority = {}, int* route = nullptr) const;

private:
  struct CompiledRoute {
    enum class HostMatch { any, exact, suffix } host_match = HostMatch::any;
    std::string host; // lower case; for suffix: ".example.com"
    std::string path_prefix;
    std::vector<std::pair<std::string, std::string>> headers;
    int pool = -1;
  };
  std::vector<CompiledRoute> routes_;
};

struct ListenerRuntime {
  ListenerRuntime(const config::Listener& c, size_t i, uint32_t listener_id,
                  const std::vector<std::shared_ptr<upstream::Pool>>& pools)
      : config(c), index(i), id(listener_id), router(c.routes, pools) {
    if (c.tls.enabled)
      tls = io::TlsServer::create(c.tls, c.http2, tls_error);
  }
  config::Listener config;
  size_t index;                       // in its Runtime
  uint32_t id;                        // stable across snapshots (by name)
  std::unique_ptr<io::TlsServer> tls; // set when the listener terminates HTTPS
  std::string tls_error;              // why `tls` could not be built
  Router router;
};

struct Runtime {
  // Everything built from `c`; backends the registry knows keep their state,
  // and pools of `previous` with the same tls settings lend their context.
  Runtime(std::shared_ptr<const config::Config> c, upstream::Registry& registry,
          const upstream::Discovered& discovered = {}, const Runtime* previous = nullptr);
  // `previous` with new DNS results: the pools that have dns: or srv: backends
  // are rebuilt, everything else is shared with it.
  Runtime(const Runtime& previous, upstream::Registry& registry,
          const upstream::Discovered& discovered);

  const ListenerRuntime* listener_by_id(uint32_t id) const {
    for (const auto& l : listeners)
      if (l->id == id)
        return l.get();
    return nullptr;
  }

  std::shared_ptr<const config::Config> config;
  std::vector<std::shared_ptr<upstream::Pool>> pools;
  std::vector<std::shared_ptr<const ListenerRuntime>> listeners;
};

// Whether a pool has backends found by DNS.
bool uses_discovery(const config::Pool& pool);

} // namespace lb::proxy
