#include "lb/proxy/runtime.hpp"

#include "lb/io/acme_challenges.hpp"
#include "lb/io/log.hpp"
#include "lb/upstream/hashing.hpp"

#include <re2/re2.h>

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

// The path and query of an origin-form or absolute-form request target
// ("http://host?q" -> "?q": an empty path).
std::string_view path_of(std::string_view target) {
  if (!target.empty() && target.front() != '/') {
    size_t scheme = target.find("://");
    if (scheme != std::string_view::npos) {
      size_t end = target.find_first_of("/?", scheme + 3);
      return end == std::string_view::npos ? std::string_view() : target.substr(end);
    }
  }
  return target;
}

} // namespace

bool access_allowed(const config::Listener& listener, const ClientAddress& client) {
  if (listener.allow.empty() && listener.deny.empty())
    return true;
  if (!client.addr)
    return listener.allow.empty();
  for (const auto& c : listener.deny)
    if (c.contains(client.ipv6, client.addr))
      return false;
  if (listener.allow.empty())
    return true;
  for (const auto& c : listener.allow)
    if (c.contains(client.ipv6, client.addr))
      return true;
  return false;
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = static_cast<char>(c | 0x20);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// Whether `raw` (a query component: %XX escapes, '+' for space) decodes to `want`.
bool decodes_to(std::string_view raw, std::string_view want) {
  size_t j = 0;
  for (size_t i = 0; i < raw.size(); ++i, ++j) {
    char c = raw[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%' && i + 2 < raw.size() && hex_value(raw[i + 1]) >= 0 &&
               hex_value(raw[i + 2]) >= 0) {
      c = static_cast<char>(hex_value(raw[i + 1]) * 16 + hex_value(raw[i + 2]));
      i += 2;
    }
    if (j >= want.size() || want[j] != c)
      return false;
  }
  return j == want.size();
}

// Whether the query holds parameter `name` with the value `value` (decoded).
bool query_has(std::string_view query, std::string_view name, std::string_view value) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    size_t eq = param.find('=');
    std::string_view n = param.substr(0, eq);
    std::string_view v = eq == std::string_view::npos ? std::string_view() : param.substr(eq + 1);
    if (decodes_to(n, name) && decodes_to(v, value))
      return true;
  }
  return false;
}

// Whether a target's path starts with `prefix`. A prefix without '?' lies
// within the path if the target starts with it; one with '?' is compared
// with the path and the query. A target with no path ("?q") has the path "/".
bool prefix_matches(std::string_view target, std::string_view prefix) {
  if (target.empty() || target.front() == '?')
    return prefix == "/";
  return target.starts_with(prefix);
}

bool has_field(const http::Head& head, std::string_view name) {
  for (unsigned i = 0; i < head.count; ++i)
    if (http::iequals(head.headers[i].name.view(), name))
      return true;
  return false;
}

bool has_field_value(const http::Head& head, std::string_view name, std::string_view value) {
  for (unsigned i = 0; i < head.count; ++i)
    if (http::iequals(head.headers[i].name.view(), name) && head.headers[i].value.view() == value)
      return true;
  return false;
}

} // namespace

Router::Router(const std::vector<config::Route>& routes,
               const std::vector<std::shared_ptr<upstream::Pool>>& pools, const Router* previous) {
  auto pool_index = [&](const std::string& name) {
    for (const auto& p : pools)
      if (p->name() == name)
        return static_cast<int>(p->index());
    return -1;
  };
  for (const auto& r : routes) {
    CompiledRoute c;
    c.config = &r;
    c.label = r.name.empty() ? "#" + std::to_string(routes_.size()) : r.name;
    if (r.rate_limit) {
      // A reload keeps the buckets of a route with the same label and limit.
      if (previous)
        for (const auto& p : previous->routes_)
          if (p.limiter && p.label == c.label && p.limiter->config() == *r.rate_limit)
            c.limiter = p.limiter;
      if (!c.limiter)
        c.limiter = std::make_shared<RateLimiter>(*r.rate_limit);
    }
    if (r.match.host.empty()) {
      c.host_match = CompiledRoute::HostMatch::any;
    } else if (r.match.host.rfind("*.", 0) == 0) {
      c.host_match = CompiledRoute::HostMatch::suffix;
      c.host = lower(r.match.host.substr(1));
    } else {
      c.host_match = CompiledRoute::HostMatch::exact;
      c.host = lower(r.match.host);
    }
    if (!r.match.path_regex.empty()) {
      RE2::Options options;
      options.set_log_errors(false);
      c.path_regex = std::make_unique<RE2>(r.match.path_regex, options);
    }
    c.pool = pool_index(r.pool);
    for (const auto& wp : r.pools) {
      if (wp.weight == 0)
        continue;
      c.split_total += wp.weight;
      c.split.emplace_back(pool_index(wp.pool), c.split_total);
    }
    c.modifies_request =
        r.has_rewrite_prefix || !r.rewrite_host.empty() || !r.request_headers.empty();
    c.modifies_response = !r.response_headers.empty();
    c.request_vars = r.request_headers.uses_variables();
    c.response_vars = r.response_headers.uses_variables();
    const config::RouteMatch& m = r.match;
    c.only_host_and_prefix = m.path.empty() && m.path_regex.empty() && m.methods.empty() &&
                             m.headers.empty() && m.header_present.empty() && m.query.empty() &&
                             m.source.empty() && !m.client_cert;
    routes_.push_back(std::move(c));
  }
}

Router::~Router() = default;

const CompiledRoute* Router::match(const http::Head& head, std::string_view authority,
                                   const ClientAddress& client, int* index) const {
  if (index)
    *index = -1;
  const http::Header* host_header = head.find(http::Field::host);
  std::string_view host = !authority.empty() ? host_without_port(authority)
                          : host_header      ? host_without_port(host_header->value.view())
                                             : std::string_view();
  // The path and the query, split only when a route looks at them.
  std::string_view target = path_of(head.target.view());
  std::string_view path, query;
  bool split = false;
  auto split_target = [&] {
    if (split)
      return;
    split = true;
    size_t q = target.find('?');
    path = target.substr(0, q);
    if (path.empty())
      path = "/";
    query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  };
  for (const auto& r : routes_) {
    const config::RouteMatch& m = r.config->match;
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
    if (r.only_host_and_prefix) { // (the common route: nothing more to test)
      if (m.path_prefix.empty() || prefix_matches(target, m.path_prefix)) {
        if (index)
          *index = static_cast<int>(&r - routes_.data());
        return &r;
      }
      continue;
    }
    if (!m.path_prefix.empty() && !prefix_matches(target, m.path_prefix))
      continue;
    if (!m.path.empty() || r.path_regex || !m.query.empty())
      split_target();
    if (!m.path.empty() && path != m.path)
      continue;
    if (!m.methods.empty() &&
        std::find(m.methods.begin(), m.methods.end(), head.method.view()) == m.methods.end())
      continue;
    bool ok = true;
    for (const auto& [name, value] : m.headers)
      if (!(ok = has_field_value(head, name, value)))
        break;
    for (size_t i = 0; ok && i < m.header_present.size(); ++i)
      ok = has_field(head, m.header_present[i]);
    for (size_t i = 0; ok && i < m.query.size(); ++i)
      ok = query_has(query, m.query[i].first, m.query[i].second);
    if (ok && m.client_cert)
      ok = client.verified_cert;
    if (ok && !m.source.empty()) {
      ok = false;
      for (size_t i = 0; !ok && client.addr && i < m.source.size(); ++i)
        ok = m.source[i].contains(client.ipv6, client.addr);
    }
    if (ok && r.path_regex)
      ok = r.path_regex->Match(re2::StringPiece(path.data(), path.size()), 0, path.size(),
                               RE2::UNANCHORED, nullptr, 0);
    if (!ok)
      continue;
    if (index)
      *index = static_cast<int>(&r - routes_.data());
    return &r;
  }
  return nullptr;
}

int Router::pool_of(const CompiledRoute& route, std::string_view key) {
  if (route.config->action == config::Route::Action::pool)
    return route.pool;
  if (route.split_total == 0)
    return -1;
  uint64_t draw = route.config->has_split_key && !key.empty() ? upstream::hash64(key, 0x5eed)
                                                              : upstream::thread_random();
  uint32_t point = static_cast<uint32_t>(draw % route.split_total);
  for (const auto& [pool, upto] : route.split)
    if (point < upto)
      return pool;
  return route.split.back().first;
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
  for (const auto& l : config->listeners) {
    uint32_t id = registry.listener_id(l.name);
    const ListenerRuntime* before = previous ? previous->listener_by_id(id) : nullptr;
    listeners.push_back(std::make_shared<ListenerRuntime>(l, listeners.size(), id, pools,
                                                          before ? &before->router : nullptr));
  }
}

Runtime::Runtime(const Runtime& previous, upstream::Registry& registry,
                 const upstream::Discovered& discovered)
    : config(previous.config), pools(previous.pools), listeners(previous.listeners) {
  for (size_t i = 0; i < pools.size(); ++i)
    if (uses_discovery(config->pools[i]))
      pools[i] = std::make_shared<upstream::Pool>(config->pools[i], i, registry, discovered,
                                                  config->sticky_secret, pools[i]->shared_tls());
}

std::unique_ptr<io::TlsServer> ListenerRuntime::make_tls(const config::Listener& c) {
  std::vector<config::TlsCertificate> acme;
  if (c.tls.acme)
    acme = io::acme_stored_certificates(*c.tls.acme);
  auto server = io::TlsServer::create(c.tls, c.http2, acme, tls_error);
  if (!server && !acme.empty()) {
    // Without the stored certificate: when that works, the stored file is
    // what is wrong, and it is ordered again; until then the listener
    // serves what it can.
    std::string without_error;
    server = io::TlsServer::create(c.tls, c.http2, {}, without_error);
    if (server) {
      io::log("listener %s: acme: cannot use the stored %s (%s); it will be ordered again",
              c.name.c_str(), acme[0].cert.c_str(), tls_error.c_str());
      tls_error.clear();
    }
  }
  return server;
}

bool uses_discovery(const config::Pool& pool) {
  for (const auto& r : pool.regions)
    for (const auto& b : r.backends)
      if (b.kind != config::Backend::Kind::address)
        return true;
  return false;
}

} // namespace lb::proxy
