#pragma once
// Plain, immutable description of an lb configuration, as validated from YAML.
// Every module that needs settings reads them from here; the loader lives in config.hpp.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lb::config {

using Duration = std::chrono::milliseconds;

// A numeric IP address and port, as written by the user ("127.0.0.1:80", "[::1]:80").
struct Address {
  std::string host;  // numeric IPv4 or IPv6 address, without brackets
  uint16_t port = 0; // 0 = any free port (listeners only; the bound port is logged)
  bool ipv6 = false;
  std::string text() const; // "host:port" or "[host]:port"
};

struct AccessLog {
  enum class Format { json, combined };
  std::string path = "off"; // stdout | stderr | a file path | off
  Format format = Format::json;
};

struct Limits {
  uint64_t max_header_bytes = 32 * 1024;
  uint64_t max_body_bytes = 10 * 1024 * 1024; // 0 = unlimited
  uint64_t max_connections = 100000;
  uint32_t max_concurrent_streams = 100; // HTTP/2: streams open at once per connection
};

struct ListenerTimeouts {
  Duration header{std::chrono::seconds(10)};
  Duration idle{std::chrono::seconds(60)};
  Duration tunnel{std::chrono::hours(1)}; // an upgraded (WebSocket) connection with no traffic
};

struct Headers {
  enum class ForwardedFor { append, replace, off };
  ForwardedFor forwarded_for = ForwardedFor::append;
  std::string request_id = "X-Request-Id"; // empty = off
  bool via = true;
};

struct RouteMatch {
  std::string host;        // lowercase; empty = any; "*.example.com" = any subdomain
  std::string path_prefix; // empty = any
  std::vector<std::pair<std::string, std::string>> headers; // name -> exact value
};

struct Route {
  RouteMatch match;
  std::string pool;
};

struct TlsCertificate {
  std::string cert; // PEM chain file (resolved against the config file's directory)
  std::string key;  // PEM private key file
};

struct ListenerTls {
  bool enabled = false;
  std::vector<TlsCertificate> certificates; // picked by SNI; the first is the default
  enum class Version { tls1_2, tls1_3 } min_version = Version::tls1_2;
};

struct Listener {
  std::string name;
  Address listen;
  ListenerTls tls;
  bool proxy_protocol = false; // connections start with a PROXY v1/v2 header (from an L4 LB)
  bool http2 = true;           // HTTP/2 to clients: ALPN h2 (TLS), prior knowledge (cleartext)
  Limits limits;
  ListenerTimeouts timeouts;
  Headers headers;
  std::vector<Route> routes;
};

// HTTPS toward a pool's backends.
struct PoolTls {
  bool enabled = false;
  bool verify = true; // check the backend's certificate chain and name
  std::string ca;     // PEM bundle to verify against; empty: the system's trust store
  std::string sni;    // the name sent and verified; empty: a dns:/srv: backend's host
                      // name, else none sent and the backend's IP address verified
  ListenerTls::Version min_version = ListenerTls::Version::tls1_2;
  bool operator==(const PoolTls&) const = default;
};

struct Backend {
  // address: one backend. dns: every A/AAAA address of `name`, on `address.port`.
  // srv: the targets of the SRV name `name`, with their ports and weights.
  enum class Kind { address, dns, srv };
  Kind kind = Kind::address;
  Address address;
  std::string name;
  uint32_t weight = 1;
  // What discovery results are keyed by: "dns:NAME:PORT" or "srv:NAME".
  std::string discovery_key() const;
};

struct Region {
  std::string name;
  uint32_t priority = 0;
  uint32_t weight = 100; // share among the regions of the same priority
  std::vector<Backend> backends;
};

struct PoolTimeouts {
  Duration connect{std::chrono::seconds(2)};
  Duration response{std::chrono::seconds(30)};
  Duration idle{std::chrono::seconds(90)};
};

struct HealthCheck {
  bool enabled = false;
  enum class Type { http, tcp } type = Type::http;
  std::string path = "/healthz";
  std::string host; // Host header of the check; empty: the backend address
  Duration interval{std::chrono::seconds(2)};
  Duration timeout{std::chrono::seconds(1)};
  uint32_t healthy_threshold = 2;
  uint32_t unhealthy_threshold = 3;
  std::vector<std::pair<int, int>> expect_status{{200, 399}};
  bool operator==(const HealthCheck&) const = default;
};

struct OutlierDetection {
  bool enabled = false;
  uint32_t consecutive_failures = 5;
  Duration ejection_time{std::chrono::seconds(30)};
};

enum class Balance { round_robin, least_conn, random_two, ring_hash, maglev };

// The `balance:` names, in Balance order (lb/upstream/balancer.cpp maps each
// to its algorithm).
inline constexpr std::string_view balance_names[] = {"round_robin", "least_conn", "random_two",
                                                     "ring_hash", "maglev"};
inline std::string_view balance_name(Balance b) { return balance_names[static_cast<size_t>(b)]; }
inline bool hashing(Balance b) { return b == Balance::ring_hash || b == Balance::maglev; }

// What ring_hash and maglev hash to pick a backend.
struct HashKey {
  enum class Kind { source_ip, header, cookie } kind = Kind::source_ip;
  std::string name; // the header or cookie name, as written; empty for source_ip
};

struct Pool {
  std::string name;
  Balance balance = Balance::round_robin;
  HashKey hash_key;          // used by ring_hash and maglev only
  std::string sticky_cookie; // cookie that pins a client to a backend; empty = off
  Duration slow_start{0};    // a (re)joining backend ramps its weight up over this; 0 = off
  PoolTimeouts timeouts;
  uint32_t retries = 2;
  uint32_t max_connections_per_backend = 0;        // circuit breaker; 0 = unlimited
  Duration queue_timeout{std::chrono::seconds(1)}; // wait for a free slot, then 503; 0 = no queue
  bool maintenance = false;      // answer 503 with the maintenance page, touch no backend
  double overprovisioning = 1.4; // priority load: level gets min(100%, this x its health)
  HealthCheck health_check;
  OutlierDetection outlier_detection;
  PoolTls tls;
  bool fail_open = true;
  std::vector<Region> regions;
};

struct Dns {
  std::vector<Address> servers; // empty: the system resolver (/etc/resolv.conf)
  Duration min_ttl{std::chrono::seconds(1)};
  Duration max_ttl{std::chrono::seconds(300)};
};

struct Admin {
  Address listen{"127.0.0.1", 9901, false};
};

struct Config {
  std::string file;     // where it was loaded from
  unsigned workers = 0; // 0 = auto: one per core
  Duration shutdown_timeout{std::chrono::seconds(30)};
  std::string sticky_secret; // keys the sticky cookie's backend hash; empty = unkeyed
  Admin admin;
  AccessLog access_log;
  Dns dns;
  std::vector<Listener> listeners;
  std::vector<Pool> pools; // in file order

  const Pool* find_pool(const std::string& name) const;
};

} // namespace lb::config
