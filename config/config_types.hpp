#pragma once
// Plain, immutable description of an lb configuration, as validated from YAML.
// Every module that needs settings reads them from here; the loader lives in config.hpp.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
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

// A client address range: "10.0.0.0/8", "2001:db8::/32" or one address.
struct Cidr {
  bool ipv6 = false;
  uint8_t bits = 0;      // prefix length
  uint8_t addr[16] = {}; // network address (4 bytes used for IPv4)
  std::string text;      // as written
  // Whether the address (4 or 16 bytes, per `v6`) is in the range.
  bool contains(bool v6, const uint8_t* a) const;
};

struct RouteMatch {
  std::string host;                 // lowercase; empty = any; "*.example.com" = any subdomain
  std::string path;                 // exact path (without the query); empty = any
  std::string path_prefix;          // empty = any
  std::string path_regex;           // RE2, searched in the path; empty = any
  std::vector<std::string> methods; // any of these; empty = any
  // name -> exact value; `present` (header_present) = any value
  std::vector<std::pair<std::string, std::string>> headers;
  std::vector<std::string> header_present;                // names that must be present
  std::vector<std::pair<std::string, std::string>> query; // parameter -> exact (decoded) value
  std::vector<Cidr> source;                               // client address in one of these
  bool client_cert = false; // the client presented a verified certificate (mTLS)
};

// What keeps a user on one side of a split, or feeds ring_hash and maglev.
struct HashKey {
  enum class Kind { source_ip, header, cookie, route } kind = Kind::source_ip; // route: rate limits
  std::string name; // the header or cookie name, as written; empty for source_ip
  bool operator==(const HashKey&) const = default;
};

struct WeightedPool {
  std::string pool;
  uint32_t weight = 1;
};

struct Redirect {
  std::string scheme; // empty: the request's
  std::string host;   // empty: the request's (without its port)
  uint16_t port = 0;  // 0: the request's when the scheme is unchanged, else the scheme's default
  bool has_path = false;
  std::string path; // replaces the whole path
  bool has_prefix = false;
  std::string prefix; // replaces the matched path_prefix
  bool has_query = false;
  std::string query; // replaces the query ("" drops it)
  int code = 301;
};

struct FixedResponse {
  int status = 200;
  std::string body;
  std::string content_type = "text/plain";
};

// A header value with %{client_ip}, %{request_id}, %{host} in it, split into parts.
struct HeaderValue {
  enum class Part { text, client_ip, request_id, host };
  std::vector<std::pair<Part, std::string>> parts;
  std::string text; // as written
  std::string line; // "Name: text\r\n" when the value has no variables (sent as one piece)
};

struct HeaderEdits {
  std::vector<std::pair<std::string, HeaderValue>> set; // replaces every field of the name
  std::vector<std::pair<std::string, HeaderValue>> add; // appended
  std::vector<std::string> remove;                      // every field of the name
  bool empty() const { return set.empty() && add.empty() && remove.empty(); }
  // Whether a value refers to %{client_ip}, %{request_id} or %{host}.
  bool uses_variables() const {
    for (const auto* list : {&set, &add})
      for (const auto& [name, value] : *list)
        if (value.line.empty())
          return true;
    return false;
  }
};

// A route's rate limit: GCRA (a token bucket) per key.
struct RateLimit {
  HashKey key;                           // Kind::route: one bucket for the whole route
  uint32_t rate = 0;                     // requests per `per`
  Duration per{std::chrono::seconds(1)}; // 1s or 1min
  uint32_t burst = 0;                    // requests beyond the rate that may come at once
  uint32_t max_keys = 65536;             // distinct keys tracked at once
  // local: each instance counts on its own; cluster: the limit holds for the
  // sum over the instances sharing `cluster.redis`.
  enum class Scope { local, cluster } scope = Scope::local;
  // scope cluster, Redis unreachable: local (rate / cluster.instances on each
  // instance) or open (everything passes).
  enum class OnRedisError { local, open } on_redis_error = OnRedisError::local;
  uint32_t instances = 1; // scope cluster: cluster.instances (the fallback's divisor)
  double per_second() const { return rate / std::chrono::duration<double>(per).count(); }
  bool operator==(const RateLimit&) const = default;
};

struct Route {
  std::string name; // for metrics and the access log; empty: its index
  RouteMatch match;
  std::optional<RateLimit> rate_limit;
  enum class Action { pool, split, redirect, respond } action = Action::pool;
  std::string pool;                // Action::pool
  std::vector<WeightedPool> pools; // Action::split
  bool has_split_key = false;      // else: each request drawn at random
  HashKey split_key;
  Redirect redirect;
  FixedResponse respond;
  // Modifiers (forwarding routes).
  std::string rewrite_prefix; // replaces the matched path_prefix; empty: none
  bool has_rewrite_prefix = false;
  std::string rewrite_host; // Host toward the backend; empty: the client's
  HeaderEdits request_headers;
  HeaderEdits response_headers;
};

struct TlsCertificate {
  std::string cert; // PEM chain file (resolved against the config file's directory)
  std::string key;  // PEM private key file
};

// Certificates ordered from an ACME server (RFC 8555) for a TLS listener.
struct Acme {
  std::string directory;            // the directory URL (https://...)
  std::string email;                // the account's contact; empty: none
  std::vector<std::string> domains; // lower case; one certificate names them all
  std::string storage;              // directory for the account key, keys and certificates
  std::string ca;                   // PEM bundle to trust the directory with; empty: the system's
  enum class Challenge { http_01, tls_alpn_01 } challenge = Challenge::tls_alpn_01;
  bool operator==(const Acme&) const = default;
};

struct ListenerTls {
  bool enabled = false;
  std::vector<TlsCertificate> certificates; // picked by SNI; the first is the default
  enum class Version { tls1_2, tls1_3 } min_version = Version::tls1_2;
  bool watch = false;    // certificate files are loaded again when they change
  std::string client_ca; // PEM bundle client certificates are verified against; empty: none asked
  enum class ClientVerify { required, optional } client_verify = ClientVerify::required;
  std::optional<Acme> acme;
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
  std::vector<Cidr> allow; // access list: with any, only these clients get in
  std::vector<Cidr> deny;  // refused (wins over allow)
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
  bool http2 = false; // ALPN offers h2 alone (a pool with protocol: h2)
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
  // grpc: grpc.health.v1.Health/Check for `service` over the pool's protocol
  // (h2 or h2c); SERVING is a pass.
  enum class Type { http, tcp, grpc } type = Type::http;
  std::string path = "/healthz";
  std::string service; // grpc: the service asked about ("" = the server as a whole)
  std::string host;    // Host header of the check; empty: the backend address
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

// What a pool speaks to its backends: HTTP/1.1, HTTP/2 over its tls (ALPN h2), or
// HTTP/2 over cleartext with prior knowledge.
enum class Protocol { http1, h2, h2c };

struct Pool {
  std::string name;
  Protocol protocol = Protocol::http1;
  Balance balance = Balance::round_robin;
  HashKey hash_key;          // used by ring_hash and maglev only
  std::string sticky_cookie; // cookie that pins a client to a backend; empty = off
  Duration slow_start{0};    // a (re)joining backend ramps its weight up over this; 0 = off
  PoolTimeouts timeouts;
  uint32_t retries = 2;
  // What is retried (idempotent requests whose response has not started).
  bool retry_connect_failure = true;        // connect refused, timed out, TLS handshake failed
  bool retry_reset = true;                  // closed or reset before any response byte
  std::vector<int> retry_statuses;          // of 502, 503, 504: the response is discarded
  bool has_retry_budget = false;            // retries per second <= max(ratio x requests,
  double retry_budget_ratio = 0;            // min_per_second); without a budget, `retries`
  uint32_t retry_budget_min = 0;            // is the only bound
  Duration per_try_timeout{0};              // each attempt, until its response head; 0: none
  uint32_t max_connections_per_backend = 0; // circuit breaker; 0 = unlimited
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
  std::string token_file; // resolved path; empty: no token
  std::string token;      // its content (trailing whitespace cut): every endpoint but
                          // /healthz needs it (Bearer, or Basic with it as the password)
  std::vector<std::string> allowed_hosts; // Host names accepted besides IP literals and
                                          // localhost (lower case)
};

// TLS to Redis (`cluster.tls`).
struct RedisTls {
  bool enabled = false;
  bool verify = true; // check Redis's certificate chain and name
  std::string ca;     // PEM bundle to verify against; empty: the system's trust store
  std::string sni;    // the name sent and verified; empty: the redis host (an IP: verified as such)
  std::string cert;   // a client certificate (Redis's tls-auth-clients), with its key
  std::string key;
  bool operator==(const RedisTls&) const = default;
};

// Several instances as one tier through Redis (`cluster:`).
struct Cluster {
  bool enabled = false;
  std::string host; // a name or an address
  uint16_t port = 6379;
  std::string password_file; // empty: no AUTH
  std::string password;      // read from password_file at load
  std::string key_prefix = "lb:";
  RedisTls tls;
  uint32_t instances = 0; // how many instances share the rate limits; 0: not said
  // Rate limits with scope: cluster while Redis is unreachable, unless a
  // route says otherwise.
  RateLimit::OnRedisError on_redis_error = RateLimit::OnRedisError::local;
  bool operator==(const Cluster&) const = default;
};

struct Config {
  std::string file;     // where it was loaded from
  unsigned workers = 0; // 0 = auto: one per core
  Duration shutdown_timeout{std::chrono::seconds(30)};
  // SIGTERM/SIGINT: /healthz answers 503 at once while every listener keeps
  // serving this long (lame duck), then the drain; 0 = drain at once.
  Duration shutdown_delay{0};
  // The workers' I/O: auto and epoll both mean lb's epoll loop (io_uring was
  // measured and not built in: bench/README.md).
  enum class Io { auto_, epoll } io = Io::auto_;
  // Long bodies and bulk tunnels socket to socket by splice(2) (plain TCP and
  // HTTP/1.1 both sides); false: every byte is copied through lb.
  bool splice = true;
  std::string sticky_secret; // keys the sticky cookie's backend hash; empty = unkeyed
  Admin admin;
  AccessLog access_log;
  Dns dns;
  Cluster cluster;
  std::vector<Listener> listeners;
  std::vector<Pool> pools; // in file order

  const Pool* find_pool(const std::string& name) const;
};

} // namespace lb::config
