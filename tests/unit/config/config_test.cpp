#include "config/config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <unistd.h>

using namespace std::chrono_literals;
using namespace lb::config;

namespace {

const char* const minimal = R"(
listeners:
  - name: public
    listen: 127.0.0.1:8080
    routes:
      - pool: web
pools:
  web:
    backends: [127.0.0.1:9001]
)";

// Loads `yaml` that must be valid.
std::shared_ptr<const Config> valid(const std::string& yaml) {
  auto result = load_string(yaml, "t.yaml");
  for (const auto& e : result.errors)
    ADD_FAILURE() << e;
  EXPECT_TRUE(result.config);
  return result.config;
}

// The errors of `yaml`, which must be invalid.
std::vector<std::string> errors(const std::string& yaml) {
  auto result = load_string(yaml, "t.yaml");
  EXPECT_FALSE(result.config);
  EXPECT_FALSE(result.errors.empty());
  return result.errors;
}

std::string only_error(const std::string& yaml) {
  auto all = errors(yaml);
  EXPECT_EQ(all.size(), 1u) << ::testing::PrintToString(all);
  return all.empty() ? "" : all[0];
}

// `minimal` with `extra` lines added at the end of the first listener's map.
std::string with_listener_lines(const std::string& extra) {
  return R"(
listeners:
  - name: public
    listen: 127.0.0.1:8080
    routes:
      - pool: web
)" + extra +
         R"(
pools:
  web:
    backends: [127.0.0.1:9001]
)";
}

} // namespace

TEST(Config, LoadsTheSpecExample) {
  auto config = valid(R"(
workers: 4
shutdown_timeout: 5s
admin:
  listen: 127.0.0.1:9901
access_log:
  path: stderr
  format: combined
listeners:
  - name: public
    listen: "[::]:8080"
    limits:
      max_header_bytes: 16KiB
      max_body_bytes: 0
      max_connections: 500
    timeouts:
      header: 250ms
      idle: 2m
    headers:
      forwarded_for: replace
      request_id: X-Trace
      via: off
    routes:
      - match: { host: API.example.com, path_prefix: /v1/ }
        pool: api
      - match: { host: "*.example.com", header: { X-Canary: "1", X-Env: prod } }
        pool: web
      - pool: web
pools:
  web:
    balance: round_robin
    timeouts: { connect: 1s, response: 10s, idle: 20s }
    retries: 0
    regions:
      - name: aws-us-east
        priority: 0
        backends:
          - address: 127.0.0.1:9001
            weight: 2
          - address: 127.0.0.1:9002
      - name: rackspace
        priority: 1
        backends: ["[::1]:9003"]
  api:
    backends:
      - address: 127.0.0.1:9101
)");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->file, "t.yaml");
  EXPECT_EQ(config->workers, 4u);
  EXPECT_EQ(config->shutdown_timeout, 5s);
  EXPECT_EQ(config->admin.listen.text(), "127.0.0.1:9901");
  EXPECT_EQ(config->access_log.path, "stderr");
  EXPECT_EQ(config->access_log.format, AccessLog::Format::combined);

  ASSERT_EQ(config->listeners.size(), 1u);
  const Listener& l = config->listeners[0];
  EXPECT_EQ(l.name, "public");
  EXPECT_EQ(l.listen.host, "::");
  EXPECT_EQ(l.listen.port, 8080);
  EXPECT_TRUE(l.listen.ipv6);
  EXPECT_EQ(l.limits.max_header_bytes, 16u * 1024);
  EXPECT_EQ(l.limits.max_body_bytes, 0u);
  EXPECT_EQ(l.limits.max_connections, 500u);
  EXPECT_EQ(l.timeouts.header, 250ms);
  EXPECT_EQ(l.timeouts.idle, 120s);
  EXPECT_EQ(l.headers.forwarded_for, Headers::ForwardedFor::replace);
  EXPECT_EQ(l.headers.request_id, "X-Trace");
  EXPECT_FALSE(l.headers.via);
  ASSERT_EQ(l.routes.size(), 3u);
  EXPECT_EQ(l.routes[0].match.host, "api.example.com"); // host names are case-insensitive
  EXPECT_EQ(l.routes[0].match.path_prefix, "/v1/");
  EXPECT_EQ(l.routes[0].pool, "api");
  EXPECT_EQ(l.routes[1].match.host, "*.example.com");
  using Header = std::pair<std::string, std::string>;
  EXPECT_EQ(l.routes[1].match.headers, (std::vector<Header>{{"X-Canary", "1"}, {"X-Env", "prod"}}));
  EXPECT_TRUE(l.routes[2].match.host.empty());
  EXPECT_TRUE(l.routes[2].match.path_prefix.empty());
  EXPECT_TRUE(l.routes[2].match.headers.empty());

  ASSERT_EQ(config->pools.size(), 2u); // file order
  const Pool& web = config->pools[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.balance, Balance::round_robin);
  EXPECT_EQ(web.timeouts.connect, 1s);
  EXPECT_EQ(web.timeouts.response, 10s);
  EXPECT_EQ(web.timeouts.idle, 20s);
  EXPECT_EQ(web.retries, 0u);
  ASSERT_EQ(web.regions.size(), 2u);
  EXPECT_EQ(web.regions[0].name, "aws-us-east");
  EXPECT_EQ(web.regions[0].priority, 0u);
  ASSERT_EQ(web.regions[0].backends.size(), 2u);
  EXPECT_EQ(web.regions[0].backends[0].address.text(), "127.0.0.1:9001");
  EXPECT_EQ(web.regions[0].backends[0].weight, 2u);
  EXPECT_EQ(web.regions[0].backends[1].weight, 1u);
  EXPECT_EQ(web.regions[1].name, "rackspace");
  EXPECT_EQ(web.regions[1].priority, 1u);
  ASSERT_EQ(web.regions[1].backends.size(), 1u);
  EXPECT_EQ(web.regions[1].backends[0].address.text(), "[::1]:9003");

  const Pool* api = config->find_pool("api");
  ASSERT_TRUE(api);
  EXPECT_EQ(api, &config->pools[1]);
  ASSERT_EQ(api->regions.size(), 1u);
  EXPECT_EQ(api->regions[0].name, "default"); // the `backends:` shorthand
  EXPECT_EQ(api->regions[0].priority, 0u);
  EXPECT_EQ(config->find_pool("nope"), nullptr);
}

TEST(Config, DefaultsComeFromTheTypes) {
  auto config = valid(minimal);
  ASSERT_TRUE(config);
  const Config defaults;
  EXPECT_EQ(config->workers, 0u);
  EXPECT_EQ(config->shutdown_timeout, defaults.shutdown_timeout);
  EXPECT_EQ(config->admin.listen.text(), "127.0.0.1:9901");
  EXPECT_EQ(config->access_log.path, "off");
  const Listener& l = config->listeners.at(0);
  EXPECT_EQ(l.limits.max_header_bytes, Limits{}.max_header_bytes);
  EXPECT_EQ(l.limits.max_body_bytes, Limits{}.max_body_bytes);
  EXPECT_EQ(l.timeouts.header, ListenerTimeouts{}.header);
  EXPECT_EQ(l.headers.request_id, "X-Request-Id");
  EXPECT_TRUE(l.headers.via);
  const Pool& web = config->pools.at(0);
  EXPECT_EQ(web.retries, 2u);
  EXPECT_EQ(web.timeouts.response, PoolTimeouts{}.response);
  EXPECT_EQ(web.regions.at(0).backends.at(0).weight, 1u);
  EXPECT_EQ(web.regions.at(0).weight, 100u);
  EXPECT_EQ(web.balance, Balance::round_robin);
  EXPECT_EQ(web.hash_key.kind, HashKey::Kind::source_ip);
  EXPECT_EQ(web.hash_key.name, "");
  EXPECT_EQ(web.sticky_cookie, "");
  EXPECT_EQ(web.slow_start, 0ms);
  EXPECT_EQ(web.max_connections_per_backend, 0u);
  EXPECT_EQ(web.queue_timeout, 1s);
  EXPECT_FALSE(web.maintenance);
  EXPECT_DOUBLE_EQ(web.overprovisioning, 1.4);
  EXPECT_EQ(config->sticky_secret, "");
}

TEST(Config, WorkersAuto) {
  EXPECT_EQ(valid(std::string("workers: auto\n") + minimal)->workers, 0u);
  EXPECT_EQ(valid(std::string("workers: 3\n") + minimal)->workers, 3u);
  EXPECT_EQ(only_error(std::string("workers: 0\n") + minimal),
            "t.yaml:1:10: workers: must be 1..1024, got '0'");
  EXPECT_EQ(only_error(std::string("workers: many\n") + minimal),
            "t.yaml:1:10: workers: expected auto or a number of threads 1..1024, got 'many'");
}

TEST(Config, IoAutoOrEpoll) {
  EXPECT_EQ(valid(std::string("io: auto\n") + minimal)->io, Config::Io::auto_);
  EXPECT_EQ(valid(std::string("io: epoll\n") + minimal)->io, Config::Io::epoll);
  EXPECT_EQ(valid(minimal)->io, Config::Io::auto_);
  EXPECT_EQ(only_error(std::string("io: io_uring\n") + minimal),
            "t.yaml:1:5: io: io_uring is not built into lb: measured against its epoll loop it "
            "saved no CPU per request (bench/README.md); use auto or epoll");
  EXPECT_EQ(only_error(std::string("io: kqueue\n") + minimal),
            "t.yaml:1:5: io: expected auto or epoll, got 'kqueue'");
}

TEST(Config, OffAndOnSpellings) {
  for (const char* off : {"off", "\"off\"", "false"}) {
    auto config = valid(with_listener_lines(std::string("    headers: { request_id: ") + off +
                                            ", via: " + off + ", forwarded_for: " + off + " }"));
    ASSERT_TRUE(config) << off;
    EXPECT_EQ(config->listeners[0].headers.request_id, "") << off;
    EXPECT_FALSE(config->listeners[0].headers.via) << off;
    EXPECT_EQ(config->listeners[0].headers.forwarded_for, Headers::ForwardedFor::off) << off;
  }
  for (const char* on : {"on", "true"})
    EXPECT_TRUE(valid(with_listener_lines(std::string("    headers: { via: ") + on + " }"))
                    ->listeners[0]
                    .headers.via);
}

TEST(Config, EmptyMatchMatchesEverything) {
  auto config = valid(R"(
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { match: {}, pool: web }
      - { match: , pool: web }
      - pool: web
pools:
  web: { backends: [{ address: 127.0.0.1:9001 }] }
)");
  ASSERT_TRUE(config);
  for (const Route& route : config->listeners[0].routes) {
    EXPECT_TRUE(route.match.host.empty());
    EXPECT_TRUE(route.match.path_prefix.empty());
    EXPECT_TRUE(route.match.headers.empty());
    EXPECT_EQ(route.pool, "web");
  }
}

TEST(Config, UnknownKeyIsReportedAtTheKeyWithASuggestion) {
  EXPECT_EQ(only_error(with_listener_lines("    limts: { max_connections: 5 }")),
            "t.yaml:7:5: unknown key 'limts' (did you mean 'limits'?)");
  EXPECT_EQ(only_error(with_listener_lines("    colour: blue")),
            "t.yaml:7:5: unknown key 'colour'");
}

TEST(Config, CollectsEveryErrorInFileOrder) {
  auto all = errors(R"(
shutdown_timeout: 30
listeners:
  - name: public
    listen: localhost:80
    timeouts: { header: abc }
    routes: [{ pool: nope }]
pools:
  web:
    retries: 99
    backends: [127.0.0.1:9001]
)");
  EXPECT_EQ(all, (std::vector<std::string>{
                     "t.yaml:2:19: shutdown_timeout: expected a duration like 2s or 250ms, got "
                     "'30' (add a unit: ms, s, m or h)",
                     "t.yaml:5:13: listen: expected a numeric address like 127.0.0.1:8080 or "
                     "[::1]:8080, got 'localhost:80' (host names are not supported here: use an "
                     "IP address)",
                     "t.yaml:6:25: header: expected a duration like 2s or 250ms, got 'abc'",
                     "t.yaml:7:22: pool 'nope' is not defined",
                     "t.yaml:10:14: retries: must be 0..10, got '99'",
                 }));
}

TEST(Config, DuplicateKeyIsReportedAtTheSecond) {
  EXPECT_EQ(only_error(with_listener_lines("    name: again")), "t.yaml:7:5: duplicate key 'name'");
}

TEST(Config, TlsNeedsACertificateAndProxyProtocolIsAccepted) {
  EXPECT_EQ(
      only_error(with_listener_lines("    tls: {}")),
      "t.yaml:7:10: tls: needs at least one certificate (certificates: [{cert: FILE, key: FILE}]) "
      "or acme: {...}");
  EXPECT_TRUE(valid(with_listener_lines("    proxy_protocol: true"))->listeners[0].proxy_protocol);
}

TEST(Config, AcmeAloneMakesATlsListener) {
  auto config = valid(with_listener_lines("    tls:\n"
                                          "      acme:\n"
                                          "        directory: https://acme.example/dir\n"
                                          "        email: ops@example.com\n"
                                          "        domains: [Example.COM, www.example.com]\n"
                                          "        storage: state/acme\n"
                                          "        challenge: tls-alpn-01"));
  ASSERT_TRUE(config);
  const auto& tls = config->listeners[0].tls;
  EXPECT_TRUE(tls.enabled);
  EXPECT_TRUE(tls.certificates.empty());
  ASSERT_TRUE(tls.acme);
  EXPECT_EQ(tls.acme->directory, "https://acme.example/dir");
  EXPECT_EQ(tls.acme->email, "ops@example.com");
  EXPECT_EQ(tls.acme->domains, (std::vector<std::string>{"example.com", "www.example.com"}));
  EXPECT_EQ(tls.acme->storage, "state/acme"); // relative to the config file (here: none)
  EXPECT_EQ(tls.acme->challenge, Acme::Challenge::tls_alpn_01);
  EXPECT_FALSE(tls.watch);
  EXPECT_TRUE(tls.client_ca.empty());
  config = valid(with_listener_lines("    tls: { acme: { directory: https://a.example/d, "
                                     "domains: a.example, storage: s } }"));
  ASSERT_TRUE(config);
  EXPECT_EQ(config->listeners[0].tls.acme->challenge, Acme::Challenge::tls_alpn_01);
  // HTTP-01 is answered on a plain listener: without one, lb check says so.
  EXPECT_EQ(
      only_error(with_listener_lines("    tls: { acme: { directory: https://a.example/d, "
                                     "domains: a.example, storage: s, challenge: http-01 } }")),
      "t.yaml:3:5: acme: challenge http-01 is answered on a listener without tls (the ACME "
      "server connects to port 80): add one, or use tls-alpn-01");
}

TEST(Config, Http2IsOnByDefaultAndItsSettingsAreChecked) {
  auto config = valid(with_listener_lines(""));
  ASSERT_TRUE(config);
  EXPECT_TRUE(config->listeners[0].http2);
  EXPECT_EQ(config->listeners[0].limits.max_concurrent_streams, 100u);
  config =
      valid(with_listener_lines("    http2: false\n    limits: { max_concurrent_streams: 250 }"));
  ASSERT_TRUE(config);
  EXPECT_FALSE(config->listeners[0].http2);
  EXPECT_EQ(config->listeners[0].limits.max_concurrent_streams, 250u);
  EXPECT_EQ(only_error(with_listener_lines("    http2: maybe")),
            "t.yaml:7:12: http2: expected true or false, got 'maybe'");
  EXPECT_EQ(only_error(with_listener_lines("    limits: { max_concurrent_streams: 0 }")),
            "t.yaml:7:39: max_concurrent_streams: must be 1..10000, got '0'");
}

TEST(Config, DnsSettingsAndDiscoveredBackends) {
  auto base =
      std::string(
          "dns: { servers: [127.0.0.1:5353, 10.0.0.2, \"::1\"], min_ttl: 2s, max_ttl: 1m }\n") +
      with_listener_lines("") + "  api:\n";
  auto config = valid(base + "    backends:\n"
                             "      - dns: App.Internal.:8000\n"
                             "        weight: 2\n"
                             "      - srv: _http._tcp.app.service.consul\n"
                             "      - 127.0.0.1:9001\n");
  ASSERT_TRUE(config);
  ASSERT_EQ(config->dns.servers.size(), 3u);
  EXPECT_EQ(config->dns.servers[0].text(), "127.0.0.1:5353");
  EXPECT_EQ(config->dns.servers[1].text(), "10.0.0.2:53");
  EXPECT_EQ(config->dns.servers[2].text(), "[::1]:53");
  EXPECT_EQ(config->dns.min_ttl, std::chrono::seconds(2));
  EXPECT_EQ(config->dns.max_ttl, std::chrono::minutes(1));
  const auto& backends = config->pools.back().regions[0].backends;
  ASSERT_EQ(backends.size(), 3u);
  EXPECT_EQ(backends[0].kind, lb::config::Backend::Kind::dns);
  EXPECT_EQ(backends[0].discovery_key(), "dns:App.Internal:8000");
  EXPECT_EQ(backends[0].weight, 2u);
  EXPECT_EQ(backends[1].kind, lb::config::Backend::Kind::srv);
  EXPECT_EQ(backends[1].discovery_key(), "srv:_http._tcp.app.service.consul");
  EXPECT_EQ(backends[2].kind, lb::config::Backend::Kind::address);
  EXPECT_EQ(only_error(base + "    backends: [{ dns: app }]\n"),
            "t.yaml:13:23: dns: expected a host name and port like app.internal:8080, got 'app'");
}

TEST(Config, PoolOptions) {
  auto config = valid(R"(
sticky_secret: "k3y with spaces"
listeners:
  - { name: public, listen: 127.0.0.1:0, routes: [{ pool: web }] }
pools:
  web:
    balance: maglev
    hash_key: cookie:session_id
    sticky_cookie: lb_sticky
    slow_start: 30s
    max_connections_per_backend: 10000
    queue_timeout: 250ms
    maintenance: true
    overprovisioning: 2.5
    regions:
      - { name: east, weight: 3, backends: [127.0.0.1:9001] }
      - { name: west, weight: 10000, backends: [127.0.0.1:9002] }
      - { name: tier2, priority: 1, backends: [127.0.0.1:9003] }
)");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->sticky_secret, "k3y with spaces");
  const Pool& web = config->pools.at(0);
  EXPECT_EQ(web.balance, Balance::maglev);
  EXPECT_EQ(web.hash_key.kind, HashKey::Kind::cookie);
  EXPECT_EQ(web.hash_key.name, "session_id");
  EXPECT_EQ(web.sticky_cookie, "lb_sticky");
  EXPECT_EQ(web.slow_start, 30s);
  EXPECT_EQ(web.max_connections_per_backend, 10000u);
  EXPECT_EQ(web.queue_timeout, 250ms);
  EXPECT_TRUE(web.maintenance);
  EXPECT_DOUBLE_EQ(web.overprovisioning, 2.5);
  ASSERT_EQ(web.regions.size(), 3u);
  EXPECT_EQ(web.regions[0].weight, 3u);
  EXPECT_EQ(web.regions[1].weight, 10000u);
  EXPECT_EQ(web.regions[2].weight, 100u);
}

TEST(Config, BalanceValues) {
  auto balance_of = [](const std::string& value) {
    auto config = valid(std::string(minimal) + "    balance: " + value + "\n");
    return config ? config->pools[0].balance : Balance::round_robin;
  };
  EXPECT_EQ(balance_of("round_robin"), Balance::round_robin);
  EXPECT_EQ(balance_of("least_conn"), Balance::least_conn);
  EXPECT_EQ(balance_of("random_two"), Balance::random_two);
  EXPECT_EQ(balance_of("ring_hash"), Balance::ring_hash);
  EXPECT_EQ(balance_of("maglev"), Balance::maglev);
  EXPECT_EQ(only_error(std::string(minimal) + "    balance: fastest\n"),
            "t.yaml:10:14: balance: expected round_robin, least_conn, random_two, ring_hash or "
            "maglev, got 'fastest'");
  EXPECT_EQ(only_error(std::string(minimal) + "    balance: round-robin\n"),
            "t.yaml:10:14: balance: expected round_robin, least_conn, random_two, ring_hash or "
            "maglev, got 'round-robin' (did you mean 'round_robin'?)");
}

TEST(Config, HashKeyForms) {
  auto key_of = [](const std::string& value) {
    auto config =
        valid(std::string(minimal) + "    balance: ring_hash\n    hash_key: " + value + "\n");
    return config ? config->pools[0].hash_key : HashKey{};
  };
  HashKey key = key_of("source_ip");
  EXPECT_EQ(key.kind, HashKey::Kind::source_ip);
  EXPECT_EQ(key.name, "");
  key = key_of("header:X-User-Id");
  EXPECT_EQ(key.kind, HashKey::Kind::header);
  EXPECT_EQ(key.name, "X-User-Id");
  key = key_of("\"cookie:session\"");
  EXPECT_EQ(key.kind, HashKey::Kind::cookie);
  EXPECT_EQ(key.name, "session");
  // ring_hash and maglev without a hash_key hash the source address.
  auto config = valid(std::string(minimal) + "    balance: maglev\n");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->pools[0].hash_key.kind, HashKey::Kind::source_ip);

  auto error_of = [](const std::string& value) {
    return only_error(std::string(minimal) + "    balance: ring_hash\n    hash_key: " + value +
                      "\n");
  };
  EXPECT_EQ(error_of("client_ip"), "t.yaml:11:15: hash_key: expected source_ip, header:NAME or "
                                   "cookie:NAME, got 'client_ip'");
  EXPECT_EQ(error_of("\"header:\""), "t.yaml:11:15: hash_key: '' is not a valid header name");
  EXPECT_EQ(error_of("\"header:X User\""),
            "t.yaml:11:15: hash_key: 'X User' is not a valid header name");
  EXPECT_EQ(error_of("\"cookie:a;b\""), "t.yaml:11:15: hash_key: 'a;b' is not a valid cookie name");
  EXPECT_EQ(error_of("[source_ip]"), "t.yaml:11:15: hash_key: expected source_ip, header:NAME "
                                     "or cookie:NAME, got a list");
}

TEST(Config, HashKeyNeedsAHashingBalance) {
  EXPECT_EQ(only_error(std::string(minimal) + "    hash_key: source_ip\n"),
            "t.yaml:10:5: hash_key applies to balance ring_hash or maglev only");
  for (const char* balance : {"round_robin", "least_conn", "random_two"})
    EXPECT_EQ(only_error(std::string(minimal) +
                         "    hash_key: header:X-A\n    balance: " + balance + "\n"),
              "t.yaml:10:5: hash_key applies to balance ring_hash or maglev only")
        << balance;
  // A refused balance is one error, not two.
  EXPECT_EQ(only_error(std::string(minimal) + "    balance: ringhash\n    hash_key: source_ip\n"),
            "t.yaml:10:14: balance: expected round_robin, least_conn, random_two, ring_hash or "
            "maglev, got 'ringhash' (did you mean 'ring_hash'?)");
}

TEST(Config, StickyCookie) {
  auto cookie_of = [](const std::string& value) {
    auto config = valid(std::string(minimal) + "    sticky_cookie: " + value + "\n");
    return config ? config->pools[0].sticky_cookie : "<invalid>";
  };
  EXPECT_EQ(cookie_of("off"), "");
  EXPECT_EQ(cookie_of("false"), "");
  EXPECT_EQ(cookie_of("lb"), "lb");
  EXPECT_EQ(cookie_of("__Host-lb.route"), "__Host-lb.route");
  auto error_of = [](const std::string& value) {
    return only_error(std::string(minimal) + "    sticky_cookie: " + value + "\n");
  };
  EXPECT_EQ(error_of("\"a=b\""), "t.yaml:10:20: sticky_cookie: 'a=b' is not a valid cookie name");
  EXPECT_EQ(error_of("\"\""), "t.yaml:10:20: sticky_cookie: '' is not a valid cookie name");
  EXPECT_EQ(
      error_of("true"),
      "t.yaml:10:20: sticky_cookie: expected off or a cookie name like lb_sticky, got 'true'");
}

TEST(Config, StickySecret) {
  EXPECT_EQ(valid(std::string("sticky_secret: 12345\n") + minimal)->sticky_secret, "12345");
  EXPECT_EQ(only_error(std::string("sticky_secret: \"\"\n") + minimal),
            "t.yaml:1:16: sticky_secret: must not be empty (leave the key out for no secret)");
  EXPECT_EQ(only_error(std::string("sticky_secret:\n") + minimal),
            "t.yaml:1:1: sticky_secret: expected a non-empty string, got nothing");
  EXPECT_EQ(only_error(std::string("sticky_secret: [a]\n") + minimal),
            "t.yaml:1:16: sticky_secret: expected a non-empty string, got a list");
}

TEST(Config, Overprovisioning) {
  auto of = [](const std::string& value) {
    auto config = valid(std::string(minimal) + "    overprovisioning: " + value + "\n");
    return config ? config->pools[0].overprovisioning : -1.0;
  };
  EXPECT_DOUBLE_EQ(of("1"), 1.0);
  EXPECT_DOUBLE_EQ(of("1.0"), 1.0);
  EXPECT_DOUBLE_EQ(of("1.25"), 1.25);
  EXPECT_DOUBLE_EQ(of("10"), 10.0);
  auto error_of = [](const std::string& value) {
    return only_error(std::string(minimal) + "    overprovisioning: " + value + "\n");
  };
  EXPECT_EQ(error_of("0.5"), "t.yaml:10:23: overprovisioning: must be 1.0..10.0, got '0.5'");
  EXPECT_EQ(error_of("10.5"), "t.yaml:10:23: overprovisioning: must be 1.0..10.0, got '10.5'");
  EXPECT_EQ(error_of("lots"),
            "t.yaml:10:23: overprovisioning: expected a number 1.0..10.0, got 'lots'");
  EXPECT_EQ(error_of("nan"),
            "t.yaml:10:23: overprovisioning: expected a number 1.0..10.0, got 'nan'");
  EXPECT_EQ(error_of("140%"),
            "t.yaml:10:23: overprovisioning: expected a number 1.0..10.0, got '140%'");
}

TEST(Config, CircuitBreakerAndSlowStart) {
  auto config =
      valid(std::string(minimal) + "    max_connections_per_backend: 1\n    queue_timeout: 0s\n"
                                   "    slow_start: 0s\n    maintenance: off\n");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->pools[0].max_connections_per_backend, 1u);
  EXPECT_EQ(config->pools[0].queue_timeout, 0ms); // no queueing: 503 at once
  EXPECT_EQ(config->pools[0].slow_start, 0ms);
  EXPECT_FALSE(config->pools[0].maintenance);
  // Without queue_timeout, the default 1s applies.
  config = valid(std::string(minimal) + "    max_connections_per_backend: 10000000\n");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->pools[0].max_connections_per_backend, 10'000'000u);
  EXPECT_EQ(config->pools[0].queue_timeout, 1s);

  EXPECT_EQ(only_error(std::string(minimal) + "    queue_timeout: 2s\n"),
            "t.yaml:10:5: queue_timeout needs max_connections_per_backend");
  EXPECT_EQ(only_error(std::string(minimal) + "    max_connections_per_backend: 0\n"),
            "t.yaml:10:34: max_connections_per_backend: must be 1..10000000, got '0'");
  // An invalid limit is one error; queue_timeout is not blamed for it.
  EXPECT_EQ(only_error(std::string(minimal) +
                       "    max_connections_per_backend: lots\n    queue_timeout: 1s\n"),
            "t.yaml:10:34: max_connections_per_backend: expected an integer 1..10000000, got "
            "'lots'");
  EXPECT_EQ(only_error(std::string(minimal) + "    slow_start: 30\n"),
            "t.yaml:10:17: slow_start: expected a duration like 2s or 250ms, got '30' (add a "
            "unit: ms, s, m or h)");
  EXPECT_EQ(only_error(std::string(minimal) + "    maintenance: yes\n"),
            "t.yaml:10:18: maintenance: expected true or false, got 'yes'");
}

TEST(Config, HealthCheck) {
  auto config = valid(std::string(minimal) + R"(    health_check:
      type: http
      path: /ready?full=1
      host: app.internal:8080
      interval: 5s
      timeout: 250ms
      healthy_threshold: 1
      unhealthy_threshold: 100
      expect_status: 200,204,300-399
)");
  ASSERT_TRUE(config);
  const HealthCheck& check = config->pools[0].health_check;
  EXPECT_TRUE(check.enabled);
  EXPECT_EQ(check.type, HealthCheck::Type::http);
  EXPECT_EQ(check.path, "/ready?full=1");
  EXPECT_EQ(check.host, "app.internal:8080");
  EXPECT_EQ(check.interval, 5s);
  EXPECT_EQ(check.timeout, 250ms);
  EXPECT_EQ(check.healthy_threshold, 1u);
  EXPECT_EQ(check.unhealthy_threshold, 100u);
  using Range = std::pair<int, int>;
  EXPECT_EQ(check.expect_status, (std::vector<Range>{{200, 200}, {204, 204}, {300, 399}}));
}

TEST(Config, HealthCheckIsOnWhenPresent) {
  const HealthCheck defaults;
  auto off = valid(minimal);
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->pools[0].health_check.enabled);
  EXPECT_FALSE(off->pools[0].outlier_detection.enabled);
  EXPECT_TRUE(off->pools[0].fail_open);

  auto tcp = valid(std::string(minimal) + "    health_check: { type: tcp }\n");
  ASSERT_TRUE(tcp);
  const HealthCheck& check = tcp->pools[0].health_check;
  EXPECT_TRUE(check.enabled);
  EXPECT_EQ(check.type, HealthCheck::Type::tcp);
  EXPECT_EQ(check.interval, defaults.interval);
  EXPECT_EQ(check.timeout, defaults.timeout);
  EXPECT_EQ(check.healthy_threshold, defaults.healthy_threshold);
  EXPECT_EQ(check.unhealthy_threshold, defaults.unhealthy_threshold);

  for (const char* empty : {"{}", ""}) {
    auto http = valid(std::string(minimal) + "    health_check: " + empty + "\n");
    ASSERT_TRUE(http) << empty;
    EXPECT_TRUE(http->pools[0].health_check.enabled) << empty;
    EXPECT_EQ(http->pools[0].health_check.type, HealthCheck::Type::http);
    EXPECT_EQ(http->pools[0].health_check.path, "/healthz");
    EXPECT_EQ(http->pools[0].health_check.host, "");
    EXPECT_EQ(http->pools[0].health_check.expect_status, defaults.expect_status);
  }
}

TEST(Config, HealthCheckExpectStatusForms) {
  using Ranges = std::vector<std::pair<int, int>>;
  auto parse = [](const std::string& value) {
    auto config =
        valid(std::string(minimal) + "    health_check: { expect_status: " + value + " }\n");
    return config ? config->pools[0].health_check.expect_status : Ranges{};
  };
  EXPECT_EQ(parse("200"), (Ranges{{200, 200}})); // a YAML integer
  EXPECT_EQ(parse("\"204\""), (Ranges{{204, 204}}));
  EXPECT_EQ(parse("200-399"), (Ranges{{200, 399}}));
  EXPECT_EQ(parse("\"200, 204 ,300 - 399\""), (Ranges{{200, 200}, {204, 204}, {300, 399}}));
  EXPECT_EQ(parse("[200, 300-399]"), (Ranges{{200, 200}, {300, 399}}));
  EXPECT_EQ(parse("100-599"), (Ranges{{100, 599}}));

  auto error_of = [](const std::string& value) {
    return only_error(std::string(minimal) + "    health_check: { expect_status: " + value +
                      " }\n");
  };
  EXPECT_EQ(error_of("abc"), "t.yaml:10:36: expect_status: expected status codes like 200, "
                             "200-399 or 200,204,300-399, got 'abc'");
  EXPECT_EQ(error_of("\"200,\""), "t.yaml:10:36: expect_status: expected status codes like 200, "
                                  "200-399 or 200,204,300-399, got '200,'");
  EXPECT_EQ(error_of("99"), "t.yaml:10:36: expect_status: status codes are 100..599, got '99'");
  EXPECT_EQ(error_of("200-600"),
            "t.yaml:10:36: expect_status: status codes are 100..599, got '200-600'");
  EXPECT_EQ(error_of("399-200"),
            "t.yaml:10:36: expect_status: range 399-200 ends before it starts, got '399-200'");
  EXPECT_EQ(error_of("[200, x]"), "t.yaml:10:42: expect_status: expected status codes like 200, "
                                  "200-399 or 200,204,300-399, got 'x'");
  EXPECT_EQ(error_of("[]"), "t.yaml:10:36: expect_status: at least one status code is required");
  EXPECT_EQ(error_of("{ a: 1 }"), "t.yaml:10:36: expect_status: expected status codes like "
                                  "200, 200-399 or 200,204,300-399, got a map");
}

TEST(Config, HealthCheckErrors) {
  auto error_of = [](const std::string& check) {
    return only_error(std::string(minimal) + "    health_check: { " + check + " }\n");
  };
  EXPECT_EQ(error_of("type: udp"), "t.yaml:10:27: type: expected http, tcp or grpc, got 'udp'");
  EXPECT_EQ(error_of("path: healthz"),
            "t.yaml:10:27: path: expected a path starting with '/', got 'healthz'");
  EXPECT_EQ(error_of("path: \"/a b\""),
            "t.yaml:10:27: path: expected a path starting with '/', got '/a b'");
  EXPECT_EQ(error_of("host: \"a\\r\\nX: y\""),
            "t.yaml:10:27: host: expected a host name like app.internal, got 'a\r\nX: y'");
  EXPECT_EQ(error_of("interval: 0s"), "t.yaml:10:31: interval: must be more than 0s");
  EXPECT_EQ(error_of("timeout: 0s"), "t.yaml:10:30: timeout: must be more than 0s");
  EXPECT_EQ(error_of("timeout: 1"), "t.yaml:10:30: timeout: expected a duration like 2s or "
                                    "250ms, got '1' (add a unit: ms, s, m or h)");
  EXPECT_EQ(error_of("interval: 1s, timeout: 1500ms"),
            "t.yaml:10:44: timeout: must not be more than interval (1s), got '1500ms'");
  EXPECT_EQ(error_of("timeout: 3s"),
            "t.yaml:10:30: timeout: must not be more than interval (2s), got '3s'");
  EXPECT_EQ(error_of("healthy_threshold: 0"),
            "t.yaml:10:40: healthy_threshold: must be 1..100, got '0'");
  EXPECT_EQ(error_of("unhealthy_threshold: 101"),
            "t.yaml:10:42: unhealthy_threshold: must be 1..100, got '101'");
  EXPECT_EQ(error_of("intreval: 1s"),
            "t.yaml:10:21: unknown key 'intreval' (did you mean 'interval'?)");
  EXPECT_EQ(error_of("type: tcp, host: a.b"),
            "t.yaml:10:32: host: applies to type http only (a tcp check only connects)");
  EXPECT_EQ(only_error(std::string(minimal) + "    health_check: on\n"),
            "t.yaml:10:19: health_check: expected a map, got 'on'");

  // Without an explicit timeout, a short interval shortens the default one.
  auto config = valid(std::string(minimal) + "    health_check: { interval: 300ms }\n");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->pools[0].health_check.timeout, 300ms);
  config = valid(std::string(minimal) + "    health_check: { interval: 1s, timeout: 1s }\n");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->pools[0].health_check.timeout, 1s);
}

TEST(Config, OutlierDetection) {
  auto config = valid(std::string(minimal) +
                      "    outlier_detection: { consecutive_failures: 3, ejection_time: 10s }\n");
  ASSERT_TRUE(config);
  const OutlierDetection& detection = config->pools[0].outlier_detection;
  EXPECT_TRUE(detection.enabled);
  EXPECT_EQ(detection.consecutive_failures, 3u);
  EXPECT_EQ(detection.ejection_time, 10s);

  config = valid(std::string(minimal) + "    outlier_detection: {}\n");
  ASSERT_TRUE(config);
  EXPECT_TRUE(config->pools[0].outlier_detection.enabled);
  EXPECT_EQ(config->pools[0].outlier_detection.consecutive_failures, 5u);
  EXPECT_EQ(config->pools[0].outlier_detection.ejection_time, 30s);

  EXPECT_EQ(
      only_error(std::string(minimal) + "    outlier_detection: { consecutive_failures: 0 }\n"),
      "t.yaml:10:48: consecutive_failures: must be 1..1000, got '0'");
  EXPECT_EQ(only_error(std::string(minimal) + "    outlier_detection: { ejection_time: 0s }\n"),
            "t.yaml:10:41: ejection_time: must be more than 0s");
  EXPECT_EQ(only_error(std::string(minimal) + "    outlier_detection: { interval: 1s }\n"),
            "t.yaml:10:26: unknown key 'interval'");
}

TEST(Config, FailOpen) {
  for (const char* off : {"false", "off"}) {
    auto config = valid(std::string(minimal) + "    fail_open: " + off + "\n");
    ASSERT_TRUE(config) << off;
    EXPECT_FALSE(config->pools[0].fail_open) << off;
  }
  auto config = valid(std::string(minimal) + "    fail_open: true\n");
  ASSERT_TRUE(config);
  EXPECT_TRUE(config->pools[0].fail_open);
  EXPECT_EQ(only_error(std::string(minimal) + "    fail_open: maybe\n"),
            "t.yaml:10:16: fail_open: expected true or false, got 'maybe'");
}

TEST(Config, RouteToAnUnknownPool) {
  auto yaml = std::string(minimal);
  yaml.replace(yaml.find("pool: web"), 9, "pool: wbe");
  EXPECT_EQ(only_error(yaml), "t.yaml:6:15: pool 'wbe' is not defined (did you mean 'web'?)");
}

TEST(Config, ListenerWithoutRoutes) {
  EXPECT_EQ(only_error(R"(
listeners:
  - name: public
    listen: 127.0.0.1:8080
pools:
  web: { backends: [127.0.0.1:9001] }
)"),
            "t.yaml:3:5: listener has no routes");
  EXPECT_EQ(only_error(R"(
listeners:
  - name: public
    listen: 127.0.0.1:8080
    routes: []
pools:
  web: { backends: [127.0.0.1:9001] }
)"),
            "t.yaml:5:13: listener has no routes");
}

TEST(Config, ListenerNamesAndAddressesAreUnique) {
  auto all = errors(R"(
listeners:
  - { name: a, listen: 127.0.0.1:8080, routes: [{ pool: web }] }
  - { name: a, listen: 127.0.0.1:8081, routes: [{ pool: web }] }
  - { name: b, listen: 127.0.0.1:8080, routes: [{ pool: web }] }
pools:
  web: { backends: [127.0.0.1:9001] }
)");
  EXPECT_EQ(all, (std::vector<std::string>{
                     "t.yaml:4:13: duplicate listener name 'a'",
                     "t.yaml:5:24: listen: 127.0.0.1:8080 is already used by listener 'a'",
                 }));
  // Port 0 means "any free port": several listeners may ask for it.
  EXPECT_TRUE(valid(R"(
listeners:
  - { name: a, listen: 127.0.0.1:0, routes: [{ pool: web }] }
  - { name: b, listen: 127.0.0.1:0, routes: [{ pool: web }] }
admin: { listen: 127.0.0.1:0 }
pools:
  web: { backends: [127.0.0.1:9001] }
)"));
}

TEST(Config, PoolShape) {
  auto base = std::string(with_listener_lines("")) + "  api:\n";
  EXPECT_EQ(only_error(base + "    retries: 1\n"), "t.yaml:11:3: pool 'api' has no backends");
  EXPECT_EQ(only_error(base + "    backends: [127.0.0.1:1]\n    regions: []\n"),
            "t.yaml:13:5: a pool has either 'backends' or 'regions', not both");
  EXPECT_EQ(
      only_error(base + "    regions:\n      - { name: r, weight: 0, backends: [127.0.0.1:1] }\n"),
      "t.yaml:13:28: weight: must be 1..10000, got '0'");
  EXPECT_EQ(only_error(base + "    backends: [{ address: 127.0.0.1:1, weight: 1001 }]\n"),
            "t.yaml:12:48: weight: must be 1..1000, got '1001'");
  EXPECT_EQ(only_error(base + "    backends: [{ address: 127.0.0.1:1, dns: app.internal:80 }]\n"),
            "t.yaml:12:40: dns: a backend is one of 'address', 'dns' or 'srv'");
}

TEST(Config, BackendAddressesAreUniqueInAPool) {
  EXPECT_EQ(only_error(R"(
listeners:
  - { name: a, listen: 127.0.0.1:0, routes: [{ pool: web }] }
pools:
  web:
    regions:
      - { name: one, backends: [127.0.0.1:9001] }
      - { name: two, priority: 1, backends: [{ address: 127.0.0.1:9001 }] }
  other: { backends: [127.0.0.1:9001] }
)"),
            "t.yaml:8:57: duplicate backend 127.0.0.1:9001 in pool 'web'");
}

TEST(Config, HeaderSizeLimits) {
  EXPECT_EQ(only_error(with_listener_lines("    limits: { max_header_bytes: 512 }")),
            "t.yaml:7:33: max_header_bytes: must be between 1KiB and 1MiB, got '512'");
  EXPECT_EQ(only_error(with_listener_lines("    limits: { max_body_bytes: 10MB }")),
            "t.yaml:7:31: max_body_bytes: expected a size like 16KiB, 10MiB or a number of bytes, "
            "got '10MB' (units are KiB, MiB and GiB; KB/MB/GB are not accepted)");
  EXPECT_TRUE(valid(with_listener_lines("    limits: { max_header_bytes: 1MiB }")));
}

TEST(Config, WrongTypes) {
  EXPECT_EQ(only_error(with_listener_lines("    timeouts: [1s]")),
            "t.yaml:7:15: timeouts: expected a map, got a list");
  EXPECT_EQ(only_error(with_listener_lines("    timeouts: { idle: }")),
            "t.yaml:7:17: idle: expected a duration like 2s or 250ms, got nothing");
  EXPECT_EQ(only_error(with_listener_lines("    timeouts: { idle: 0s }")),
            "t.yaml:7:23: idle: must be more than 0s");
}

TEST(Config, SyntaxErrorHasAPosition) {
  EXPECT_EQ(only_error("listeners: [\npools: {}\n"),
            "t.yaml:3:1: invalid YAML: end of sequence flow not found");
}

TEST(Config, EmptyDocument) {
  EXPECT_EQ(only_error(""),
            "t.yaml:1:1: the config is empty: expected a map with 'listeners' and 'pools'");
  EXPECT_EQ(only_error("# only a comment\n"),
            "t.yaml:1:1: the config is empty: expected a map with 'listeners' and 'pools'");
}

TEST(Config, NeverThrows) {
  const std::string deep(100000, '[');
  for (const std::string& text :
       {deep, std::string("\t- x"), std::string("a: *nothing"), std::string("\0\1\2", 3),
        std::string("- - - -"), std::string("!!binary ~"), std::string("? [a]: 1\n")}) {
    LoadResult result;
    EXPECT_NO_THROW(result = load_string(text, "t.yaml"));
    EXPECT_FALSE(result.config);
    EXPECT_FALSE(result.errors.empty());
  }
}

TEST(LoadFile, ReadsTheFile) {
  char path[] = "/tmp/lb_config_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, minimal, strlen(minimal)), ssize_t(strlen(minimal)));
  close(fd);
  auto result = load_file(path);
  unlink(path);
  ASSERT_TRUE(result.config);
  EXPECT_EQ(result.config->file, path);
}

TEST(LoadFile, MissingFile) {
  auto result = load_file("/nonexistent/lb.yaml");
  EXPECT_FALSE(result.config);
  EXPECT_EQ(result.errors, std::vector<std::string>{
                               "/nonexistent/lb.yaml: cannot read: No such file or directory"});
}

TEST(LoadFile, DirectoryIsNotAConfig) {
  auto result = load_file("/tmp");
  EXPECT_FALSE(result.config);
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0], "/tmp: cannot read: Is a directory");
}

TEST(LoadFile, EndlessFileIsRefused) {
  auto result = load_file("/dev/zero");
  EXPECT_FALSE(result.config);
  EXPECT_EQ(result.errors, std::vector<std::string>{"/dev/zero: cannot read: File too large"});
}

TEST(Config, EmptyAddressIsAnError) {
  EXPECT_EQ(only_error(std::string("admin: { listen: '' }\n") + minimal),
            "t.yaml:1:18: listen: expected a numeric address like 127.0.0.1:8080 or [::1]:8080, "
            "got ''");
}

// ---- listener rules --------------------------------------------------------------------------

namespace {

// One listener with `routes` (lines indented as list items under routes:), pools web and canary.
std::string with_routes(const std::string& routes, const std::string& listener_extra = "") {
  return R"(
listeners:
  - name: public
    listen: 127.0.0.1:8080
)" + listener_extra +
         "    routes:\n" + routes + R"(
pools:
  web:
    backends: [127.0.0.1:9001]
  canary:
    backends: [127.0.0.1:9002]
)";
}

} // namespace

TEST(ConfigRules, EveryMatchKind) {
  auto config = valid(with_routes(R"(      - match:
          host: "*.Example.com"
          path: /exact
          path_regex: "^/u/[0-9]+$"
          method: [GET, HEAD]
          header: { X-Canary: "1", X-Debug: present }
          query: { preview: "1" }
          source: [192.168.0.0/16, 10.1.2.3, "2001:db8::/32"]
        pool: web
      - match: { path_prefix: /v1/, method: POST, source: 127.0.0.1 }
        pool: canary
)"));
  ASSERT_TRUE(config);
  const RouteMatch& m = config->listeners[0].routes[0].match;
  EXPECT_EQ(m.host, "*.example.com");
  EXPECT_EQ(m.path, "/exact");
  EXPECT_EQ(m.path_regex, "^/u/[0-9]+$");
  EXPECT_EQ(m.methods, (std::vector<std::string>{"GET", "HEAD"}));
  EXPECT_EQ(m.headers, (std::vector<std::pair<std::string, std::string>>{{"X-Canary", "1"}}));
  EXPECT_EQ(m.header_present, (std::vector<std::string>{"X-Debug"}));
  EXPECT_EQ(m.query, (std::vector<std::pair<std::string, std::string>>{{"preview", "1"}}));
  ASSERT_EQ(m.source.size(), 3u);
  EXPECT_EQ(m.source[0].bits, 16);
  EXPECT_EQ(m.source[1].bits, 32);
  EXPECT_TRUE(m.source[2].ipv6);
  const uint8_t in[4] = {192, 168, 7, 9}, out[4] = {192, 169, 0, 1};
  EXPECT_TRUE(m.source[0].contains(false, in));
  EXPECT_FALSE(m.source[0].contains(false, out));
  EXPECT_FALSE(m.source[0].contains(true, in)); // another family never matches
  const RouteMatch& m2 = config->listeners[0].routes[1].match;
  EXPECT_EQ(m2.methods, (std::vector<std::string>{"POST"}));
  ASSERT_EQ(m2.source.size(), 1u);
}

TEST(ConfigRules, CidrHostBitsAndEdges) {
  auto config = valid(with_routes("      - pool: web\n",
                                  "    allow: [10.1.2.3/8, 0.0.0.0/0]\n    deny: [\"::1\"]\n"));
  ASSERT_TRUE(config);
  const auto& allow = config->listeners[0].allow;
  ASSERT_EQ(allow.size(), 2u);
  const uint8_t ten[4] = {10, 200, 0, 1}, eleven[4] = {11, 0, 0, 0};
  EXPECT_TRUE(allow[0].contains(false, ten)); // host bits of the range are cleared
  EXPECT_FALSE(allow[0].contains(false, eleven));
  EXPECT_TRUE(allow[1].contains(false, eleven)); // /0: every IPv4 address
  ASSERT_EQ(config->listeners[0].deny.size(), 1u);
  EXPECT_EQ(config->listeners[0].deny[0].bits, 128);
  EXPECT_EQ(only_error(with_routes("      - pool: web\n", "    deny: [10.0.0.0/33]\n")),
            "t.yaml:5:12: deny: '10.0.0.0/33' is not an address range (like 10.0.0.0/8, "
            "192.168.1.7 or 2001:db8::/32)");
  EXPECT_EQ(only_error(with_routes("      - pool: web\n", "    allow: [example.com]\n")),
            "t.yaml:5:13: allow: 'example.com' is not an address range (like 10.0.0.0/8, "
            "192.168.1.7 or 2001:db8::/32)");
  EXPECT_EQ(only_error(with_routes("      - pool: web\n", "    allow: []\n")),
            "t.yaml:5:12: allow: expected at least one address range");
}

TEST(ConfigRules, Actions) {
  auto config = valid(with_routes(R"(      - match: { path: /a }
        pools: [ { pool: web, weight: 90 }, { pool: canary, weight: 10 } ]
        split_key: cookie:user
      - match: { path_prefix: /old/ }
        redirect: { prefix: /new/ }
      - match: { path: /b }
        redirect: { scheme: https, host: Example.com, port: 8443, path: /x, query: "a=b", code: 308 }
      - match: { path: /c }
        respond: { status: 503, body: "back soon", content_type: text/html }
      - pool: web
        rewrite: { host: internal.example.com }
        request_headers: { set: { X-Env: prod }, add: { X-Client: "ip=%{client_ip} id=%{request_id}%{host}" }, remove: [X-Debug, X-Other] }
        response_headers: { set: { Strict-Transport-Security: "max-age=63072000" }, remove: Server }
)"));
  ASSERT_TRUE(config);
  const auto& r = config->listeners[0].routes;
  EXPECT_EQ(r[0].action, Route::Action::split);
  ASSERT_EQ(r[0].pools.size(), 2u);
  EXPECT_EQ(r[0].pools[1].pool, "canary");
  EXPECT_EQ(r[0].pools[1].weight, 10u);
  EXPECT_TRUE(r[0].has_split_key);
  EXPECT_EQ(r[0].split_key.kind, HashKey::Kind::cookie);
  EXPECT_EQ(r[1].action, Route::Action::redirect);
  EXPECT_TRUE(r[1].redirect.has_prefix);
  EXPECT_EQ(r[1].redirect.code, 301);
  EXPECT_EQ(r[2].redirect.scheme, "https");
  EXPECT_EQ(r[2].redirect.host, "example.com");
  EXPECT_EQ(r[2].redirect.port, 8443);
  EXPECT_EQ(r[2].redirect.path, "/x");
  EXPECT_EQ(r[2].redirect.query, "a=b");
  EXPECT_EQ(r[2].redirect.code, 308);
  EXPECT_EQ(r[3].action, Route::Action::respond);
  EXPECT_EQ(r[3].respond.status, 503);
  EXPECT_EQ(r[3].respond.body, "back soon");
  EXPECT_EQ(r[3].respond.content_type, "text/html");
  EXPECT_EQ(r[4].rewrite_host, "internal.example.com");
  ASSERT_EQ(r[4].request_headers.add.size(), 1u);
  const auto& parts = r[4].request_headers.add[0].second.parts;
  using Part = HeaderValue::Part;
  ASSERT_EQ(parts.size(), 5u);
  EXPECT_EQ(parts[0], (std::pair<Part, std::string>{Part::text, "ip="}));
  EXPECT_EQ(parts[1].first, Part::client_ip);
  EXPECT_EQ(parts[2], (std::pair<Part, std::string>{Part::text, " id="}));
  EXPECT_EQ(parts[3].first, Part::request_id);
  EXPECT_EQ(parts[4].first, Part::host);
  EXPECT_EQ(r[4].request_headers.remove, (std::vector<std::string>{"X-Debug", "X-Other"}));
  EXPECT_EQ(r[4].response_headers.remove, (std::vector<std::string>{"Server"}));
}

TEST(ConfigRules, MistakesAreReportedAtTheirNode) {
  EXPECT_EQ(only_error(with_routes("      - pool: web\n        respond: { status: 503 }\n")),
            "t.yaml:7:9: route has two actions ('pool' and 'respond'): give exactly one");
  EXPECT_EQ(only_error(with_routes("      - match: { path: /x }\n")),
            "t.yaml:6:9: route has no action: give one of pool, pools, redirect or respond");
  EXPECT_EQ(
      only_error(with_routes("      - match: { path_regex: \"^/u/(\" }\n        pool: web\n")),
      "t.yaml:6:30: path_regex: '^/u/(' is not a valid RE2 expression: missing ): ^/u/(");
  EXPECT_EQ(
      only_error(with_routes("      - pools: [ { pool: web, weight: 1 }, { pool: nope } ]\n")),
      "t.yaml:6:52: pool 'nope' is not defined");
  EXPECT_EQ(only_error(with_routes("      - pools: [ { pool: web, weight: 0 } ]\n")),
            "t.yaml:6:16: pools: the weights sum to 0: no request could go anywhere");
  EXPECT_EQ(
      only_error(with_routes("      - match: { path: /x }\n        redirect: { code: 302 }\n")),
      "t.yaml:6:9: redirect: sends the request to where it already is (same scheme, host, "
      "port and path): a client would follow it forever; change at least one part");
  EXPECT_EQ(only_error(with_routes("      - match: { path_prefix: /a/ }\n"
                                   "        redirect: { prefix: /a/ }\n")),
            "t.yaml:6:9: redirect: sends the request to where it already is (same scheme, host, "
            "port and path): a client would follow it forever; change at least one part");
  // A 303 from a POST-only route comes back as a GET: no loop.
  EXPECT_TRUE(valid(with_routes("      - match: { path: /form, method: POST }\n"
                                "        redirect: { code: 303 }\n")));
  // http -> https on a cleartext listener is no loop.
  EXPECT_TRUE(valid(with_routes("      - redirect: { scheme: https }\n")));
  EXPECT_EQ(only_error(with_routes("      - redirect: { scheme: http }\n")),
            "t.yaml:6:9: redirect: sends the request to where it already is (same scheme, host, "
            "port and path): a client would follow it forever; change at least one part");
  EXPECT_EQ(only_error(with_routes("      - redirect: { scheme: https, code: 304 }\n")),
            "t.yaml:6:42: code: expected 301, 302, 303, 307 or 308, got '304'");
  EXPECT_EQ(only_error(with_routes("      - redirect: { prefix: /new/ }\n")),
            "t.yaml:6:9: redirect: prefix replaces the matched path_prefix: the route needs "
            "match: {path_prefix: ...}");
  EXPECT_EQ(only_error(with_routes("      - respond: { status: 503 }\n"
                                   "        response_headers: { remove: [Server] }\n")),
            "t.yaml:7:9: response_headers applies to routes that forward (pool or pools), not to "
            "respond");
  EXPECT_EQ(
      only_error(with_routes("      - pool: web\n"
                             "        request_headers: { set: { Content-Length: \"1\" } }\n")),
      "t.yaml:7:35: request_headers: Content-Length is set by lb itself and cannot be "
      "changed here");
  EXPECT_EQ(only_error(with_routes("      - pool: web\n"
                                   "        request_headers: { add: { X-A: \"%{nope}\" } }\n")),
            "t.yaml:7:40: X-A: unknown variable '%{nope}' (known: %{client_ip}, %{request_id}, "
            "%{host})");
  EXPECT_EQ(only_error(with_routes("      - match: { path: /m }\n        pool: web\n"
                                   "        rewrite: { path_prefix: /v2/ }\n")),
            "t.yaml:8:9: rewrite: path_prefix replaces the matched path_prefix: the route needs "
            "match: {path_prefix: ...}");
  EXPECT_EQ(only_error(with_routes("      - match: { path: /m }\n        pool: web\n"
                                   "        split_key: source_ip\n")),
            "t.yaml:8:9: split_key applies to a split (pools: [...]) only");
}

TEST(ConfigRules, FieldsLbOwnsAndBounds) {
  EXPECT_EQ(only_error(with_routes("      - pool: web\n"
                                   "        request_headers: { remove: [X-Forwarded-For] }\n")),
            "t.yaml:7:37: request_headers: X-Forwarded-For is set by lb itself and cannot be "
            "changed here (see the listener's headers: {forwarded_for: ...})");
  EXPECT_EQ(only_error(with_routes("      - pool: web\n"
                                   "        response_headers: { set: { via: x } }\n")),
            "t.yaml:7:36: response_headers: via is set by lb itself and cannot be changed here "
            "(see the listener's headers: {via: off})");
  EXPECT_EQ(only_error(with_routes("      - pool: web\n"
                                   "        request_headers: { set: { x-request-id: \"1\" } }\n")),
            "t.yaml:6:9: request_headers: X-Request-Id is the listener's request id header, set "
            "by lb itself (see the listener's headers: {request_id: ...})");
  // (Another name when the listener names another; responses may carry it.)
  EXPECT_TRUE(valid(with_routes("      - pool: web\n"
                                "        request_headers: { set: { X-Request-Id: \"1\" } }\n",
                                "    headers: { request_id: X-Trace-Id }\n")));
  EXPECT_TRUE(valid(with_routes("      - pool: web\n"
                                "        response_headers: { remove: [X-Request-Id] }\n")));
  std::string many = "      - pool: web\n        request_headers: { add: { ";
  for (int i = 0; i < 9; ++i)
    many += "X-" + std::to_string(i) + ": v, ";
  many += "} }\n";
  EXPECT_NE(only_error(with_routes(many)).find("at most 8 fields set or added per route"),
            std::string::npos);
  EXPECT_NE(only_error(with_routes("      - respond: { status: 205 }\n")).find("has no body"),
            std::string::npos);
  // A path_prefix may hold a query part (matched against path and query).
  auto config =
      valid(with_routes("      - match: { path_prefix: \"/search?q=\" }\n        pool: web\n"));
  ASSERT_TRUE(config);
  EXPECT_EQ(config->listeners[0].routes[0].match.path_prefix, "/search?q=");
  // An IPv4-mapped range is the IPv4 range.
  auto mapped = valid(with_routes("      - pool: web\n", "    allow: [\"::ffff:10.0.0.0/104\"]\n"));
  ASSERT_TRUE(mapped);
  const Cidr& c = mapped->listeners[0].allow.at(0);
  const uint8_t ten[4] = {10, 1, 2, 3};
  EXPECT_FALSE(c.ipv6);
  EXPECT_EQ(c.bits, 8);
  EXPECT_TRUE(c.contains(false, ten));
}

TEST(ConfigRules, RetryOptions) {
  auto config = valid(std::string(minimal) + R"(    retry_on: [reset, 503, 504]
    retry_budget: { ratio: 0.25, min_per_second: 5 }
    per_try_timeout: 2s
)");
  ASSERT_TRUE(config);
  const Pool& p = config->pools[0];
  EXPECT_FALSE(p.retry_connect_failure);
  EXPECT_TRUE(p.retry_reset);
  EXPECT_EQ(p.retry_statuses, (std::vector<int>{503, 504}));
  EXPECT_TRUE(p.has_retry_budget);
  EXPECT_DOUBLE_EQ(p.retry_budget_ratio, 0.25);
  EXPECT_EQ(p.retry_budget_min, 5u);
  EXPECT_EQ(p.per_try_timeout, 2s);
  auto defaults = valid(minimal);
  ASSERT_TRUE(defaults);
  EXPECT_TRUE(defaults->pools[0].retry_connect_failure);
  EXPECT_TRUE(defaults->pools[0].retry_reset);
  EXPECT_TRUE(defaults->pools[0].retry_statuses.empty());
  EXPECT_FALSE(defaults->pools[0].has_retry_budget);
  EXPECT_EQ(only_error(std::string(minimal) + "    retry_on: [connect_failure, 500]\n"),
            "t.yaml:10:33: retry_on: expected connect_failure, reset, 502, 503 or 504, got '500' "
            "(did you mean '502'?)");
  EXPECT_EQ(only_error(std::string(minimal) + "    retry_budget: { ratio: 2 }\n"),
            "t.yaml:10:28: ratio: must be 0.0..1.0, got '2'");
  EXPECT_EQ(only_error(std::string(minimal) + "    per_try_timeout: 31s\n"),
            "t.yaml:10:22: per_try_timeout: 31s is longer than timeouts.response (30s), which "
            "bounds every attempt together");
}

TEST(Config, PoolProtocol) {
  auto base = std::string(minimal);
  EXPECT_EQ(valid(base)->pools[0].protocol, Protocol::http1);
  auto h2c = valid(base + "    protocol: h2c\n    health_check: { type: grpc, service: a.B }\n");
  EXPECT_EQ(h2c->pools[0].protocol, Protocol::h2c);
  EXPECT_EQ(h2c->pools[0].health_check.type, HealthCheck::Type::grpc);
  EXPECT_EQ(h2c->pools[0].health_check.service, "a.B");
  EXPECT_FALSE(h2c->pools[0].tls.http2);
  auto h2 = valid(base + "    protocol: h2\n    tls: { verify: false }\n");
  EXPECT_EQ(h2->pools[0].protocol, Protocol::h2);
  EXPECT_TRUE(h2->pools[0].tls.http2); // ALPN offers h2
  EXPECT_EQ(only_error(base + "    protocol: http2\n"),
            "t.yaml:10:15: protocol: expected http1, h2 or h2c, got 'http2'");
  EXPECT_EQ(only_error(base + "    protocol: h2\n"),
            "t.yaml:10:5: protocol: h2 needs the pool's tls (ALPN h2); HTTP/2 without TLS is h2c");
  EXPECT_EQ(only_error(base + "    protocol: h2c\n    tls: {}\n"),
            "t.yaml:10:5: protocol: h2c is HTTP/2 without TLS; with the pool's tls use h2");
  EXPECT_EQ(only_error(base + "    health_check: { type: grpc }\n"),
            "t.yaml:8:3: pool 'web': health_check type grpc needs protocol h2 or h2c (gRPC is "
            "HTTP/2)");
  EXPECT_EQ(only_error(base + "    protocol: h2c\n    health_check: { service: a.B }\n"),
            "t.yaml:11:21: service: applies to type grpc only");
  EXPECT_EQ(
      only_error(base + "    protocol: h2c\n    health_check: { type: grpc, service: \"a b\" }\n"),
      "t.yaml:11:42: service: expected a gRPC service name like pkg.Service, got 'a b'");
}
