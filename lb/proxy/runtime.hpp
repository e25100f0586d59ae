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
         const std::vector<std::unique_ptr<upstream::Pool>>& pools);
  // Index of the pool for this request head, or -1 when no route matches.
  // `authority` (from an absolute-form target), when not empty, stands for Host.
  // `route`, when given, receives the index of the matching route (or -1).
  int match(const http::Head& head, std::string_view authority = {}, int* route = nullptr) const;

 private:
  struct CompiledRoute {
    enum class HostMatch { any, exact, suffix } host_match = HostMatch::any;
    std::string host;  // lower case; for suffix: ".example.com"
    std::string path_prefix;
    std::vector<std::pair<std::string, std::string>> headers;
    int pool = -1;
  };
  std::vector<CompiledRoute> routes_;
};

struct ListenerRuntime {
  ListenerRuntime(const config::Listener& c, size_t i,
                  const std::vector<std::unique_ptr<upstream::Pool>>& pools)
      : config(c), index(i), router(c.routes, pools) {
    if (c.tls.enabled) tls = io::TlsServer::create(c.tls, tls_error);
  }
  config::Listener config;
  size_t index;
  std::unique_ptr<io::TlsServer> tls;  // set when the listener terminates HTTPS
  std::string tls_error;               // why `tls` could not be built
  Router router;
};

struct Runtime {
  explicit Runtime(std::shared_ptr<const config::Config> c);
  std::shared_ptr<const config::Config> config;
  std::vector<std::unique_ptr<upstream::Pool>> pools;
  std::vector<std::unique_ptr<ListenerRuntime>> listeners;
};

}  // namespace lb::proxy
