#pragma once
// The runtime snapshot: everything the data path reads, built once from a
// validated Config and then immutable. Workers hold a pointer to it for the
// duration of a request; a new snapshot replaces it as a whole.

#include "config/config_types.hpp"
#include "lb/http/message.hpp"
#include "lb/io/tls.hpp"
#include "lb/proxy/rate_limit.hpp"
#include "lb/upstream/pool.hpp"

#include <memory>

namespace re2 {
class RE2;
}
#include <string>
#include <vector>

namespace lb::proxy {

// What a route looks at besides the head: the client's address (after a
// PROXY header), in binary.
struct ClientAddress {
  bool ipv6 = false;
  const uint8_t* addr = nullptr; // 4 or 16 bytes; nullptr: unknown
  bool verified_cert = false;    // presented a client certificate that verified (mTLS)
};

// Whether `client` is let in by a listener's allow and deny lists (deny wins;
// with allow set, only those get in).
bool access_allowed(const config::Listener& listener, const ClientAddress& client);

// One route, compiled: its matches in the order they are cheapest to test,
// its action, and its modifiers (in `config`).
struct CompiledRoute {
  enum class HostMatch { any, exact, suffix } host_match = HostMatch::any;
  std::string host;                      // lower case; for suffix: ".example.com"
  const config::Route* config = nullptr; // in the listener's config (same snapshot)
  std::unique_ptr<re2::RE2> path_regex;
  int pool = -1; // Action::pool
  // Action::split: pool indices with their cumulative weights.
  std::vector<std::pair<int, uint32_t>> split;
  uint32_t split_total = 0;
  bool modifies_request = false;        // rewrite or request_headers
  bool modifies_response = false;       // response_headers
  bool request_vars = false;            // request_headers' values use %{...}
  bool response_vars = false;           // response_headers' values use %{...}
  bool only_host_and_prefix = false;    // matches on nothing else
  std::string label;                    // its name, else "#INDEX": metrics, logs
  std::shared_ptr<RateLimiter> limiter; // rate_limit; shared by workers (and across reloads)
};

// Routes of one listener, compiled: first match wins.
class Router {
public:
  // `previous` (the same listener before a reload) lends its rate limiters'
  // state to routes with the same label and limit.
  Router(const std::vector<config::Route>& routes,
         const std::vector<std::shared_ptr<upstream::Pool>>& pools,
         const Router* previous = nullptr);
  ~Router();
  // The route for this request head, or nullptr when no route matches.
  // `authority` (from an absolute-form target), when not empty, stands for Host.
  // `index`, when given, receives the route's index (or -1).
  const CompiledRoute* match(const http::Head& head, std::string_view authority,
                             const ClientAddress& client, int* index = nullptr) const;
  // A forwarding route's pool for this request: a split draws by weight, or
  // by `key`'s hash when the route has a split_key and the key is not empty.
  static int pool_of(const CompiledRoute& route, std::string_view key);
  const std::vector<CompiledRoute>& routes() const { return routes_; }

private:
  std::vector<CompiledRoute> routes_;
};

struct ListenerRuntime {
  ListenerRuntime(const config::Listener& c, size_t i, uint32_t listener_id,
                  const std::vector<std::shared_ptr<upstream::Pool>>& pools,
                  const Router* previous_router = nullptr)
      : config(c), index(i), id(listener_id), router(config.routes, pools, previous_router) {
    if (c.tls.enabled)
      tls = make_tls(c);
  }
  config::Listener config;
  size_t index;                       // in its Runtime
  uint32_t id;                        // stable across snapshots (by name)
  std::unique_ptr<io::TlsServer> tls; // set when the listener terminates HTTPS
  std::string tls_error;              // why `tls` could not be built
  Router router;

private:
  // The configured certificates and, for an ACME listener, the stored one.
  std::unique_ptr<io::TlsServer> make_tls(const config::Listener& c);
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
