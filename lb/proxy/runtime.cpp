#include "lb/proxy/runtime.hpp"

#include <algorithm>
#include <cctype>

namespace lb::proxy {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The host of a Host header value, without port: "Example.com:8080" -> "Example.com".
std::string_view host_without_port(std::string_view v) {
  if (!v.empty() && v.front() == '[') {
    size_t close = v.find(']');
    return close == std::string_view::npos ? v : v.substr(0, close + 1);
  }
  size_t colon = v.rfind(':');
  return colon == std::string_view::npos ? v : v.substr(0, colon);
}

bool iends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && http::iequals(s.substr(s.size() - suffix.size()), suffix);
}

// The path of an origin-form or absolute-form request target.
std::string_view path_of(std::string_view target) {
  if (!target.empty() && target.front() != '/') {
    size_t scheme = target.find("://");
    if (scheme != std::string_view::npos) {
      // The path starts at the first "/" after the authority, unless a query
      // comes first ("http://host?q": the path is empty, i.e. "/").
      size_t end = target.find_first_of("/?", scheme + 3);
      return end == std::string_view::npos || target[end] != '/' ? std::string_view("/")
                                                                 : target.substr(end);
    }
  }
  return target;
}

} // namespace

Router::Router(const std::vector<config::Route>& routes,
               const std::vector<std::shared_ptr<upstream::Pool>>& pools) {
  for (const auto& r : routes) {
    CompiledRoute c;
    if (r.match.host.empty()) {
      c.host_match = CompiledRoute::HostMatch::any;
    } else if (r.match.host.rfind("*.", 0) == 0) {
      c.host_match = CompiledRoute::HostMatch::suffix;
      c.host = lower(r.match.host.substr(1));
    } else {
      c.host_match = CompiledRoute::HostMatch::exact;
      c.host = lower(r.match.host);
    }
    c.path_prefix = r.match.path_prefix;
    c.headers = r.match.headers;
    for (const auto& p : pools)
      if (p->name() == r.pool)
        c.pool = static_cast<int>(p->index());
    routes_.push_back(std::move(c));
  }
}

int Router::match(const http::Head& head, std::string_view authority, int* route) const {
  if (route)
    *route = -1;
  const http::Header* host_header = head.find(http::Field::host);
  std::string_view host = !authority.empty() ? host_without_port(authority)
                          : host_header      ? host_without_port(host_header->value.view())
                                             : std::string_view();
  std::string_view path = path_of(head.target.view());
  for (const auto& r : routes_) {
    switch (r.host_match) {
    case CompiledRoute::HostMatch::any:
      break;
    case CompiledRoute::HostMatch::exact:
      if (!http::iequals(host, r.host))
        continue;
      break;
    case CompiledRoute::HostMatch::suffix:
      if (host.size() <= r.host.size() || !iends_with(host, r.host))
        continue;
      break;
    }
    if (!r.path_prefix.empty() && path.substr(0, r.path_prefix.size()) != r.path_prefix)
      continue;
    bool headers_match = true;
    for (const auto& [name, value] : r.headers) {
      bool found = false;
      for (unsigned i = 0; i < head.count && !found; ++i)
        found = http::iequals(head.headers[i].name.view(), name) &&
                head.headers[i].value.view() == value;
      if (!found) {
        headers_match = false;
        break;
      }
    }
    if (headers_match) {
      if (route)
        *route = static_cast<int>(&r - routes_.data());
      return r.pool;
    }
  }
  return -1;
}

Runtime::Runtime(std::shared_ptr<const config::Config> c, upstream::Registry& registry,
                 const upstream::Discovered& discovered, const Runtime* previous)
    : config(std::move(c)) {
  for (const auto& p : config->pools) {
    std::shared_ptr<const io::TlsClient> tls;
    for (size_t i = 0; previous && p.tls.enabled && i < previous->pools.size(); ++i)
      if (previous->pools[i]->name() == p.name && previous->pools[i]->config().tls == p.tls)
        tls = previous->pools[i]->shared_tls();
    pools.push_back(std::make_shared<upstream::Pool>(p, pools.size(), registry, discovered,
                                                     config->sticky_secret, std::move(tls)));
  }
  for (const auto& l : config->listeners)
    listeners.push_back(std::make_shared<ListenerRuntime>(l, listeners.size(),
                                                          registry.listener_id(l.name), pools));
}

Runtime::Runtime(const Runtime& previous, upstream::Registry& registry,
                 const upstream::Discovered& discovered)
    : config(previous.config), pools(previous.pools), listeners(previous.listeners) {
  for (size_t i = 0; i < pools.size(); ++i)
    if (uses_discovery(config->pools[i]))
      pools[i] = std::make_shared<upstream::Pool>(config->pools[i], i, registry, discovered,
                                                  config->sticky_secret, pools[i]->shared_tls());
}

bool uses_discovery(const config::Pool& pool) {
  for (const auto& r : pool.regions)
    for (const auto& b : r.backends)
      if (b.kind != config::Backend::Kind::address)
        return true;
  return false;
}

} // namespace lb::proxy
