// YAML -> validated Config. A Loader walks the document once, fills a Config and collects
// every problem with the position of the node it is about; nothing is thrown out of it.
#include "config/config.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <re2/re2.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <map>
#include <set>
#include <sstream>
#include <string_view>

namespace lb::config {

std::string Address::text() const {
  std::string port_text = std::to_string(port);
  return ipv6 ? "[" + host + "]:" + port_text : host + ":" + port_text;
}

std::string Backend::discovery_key() const {
  switch (kind) {
  case Kind::address:
    return address.text();
  case Kind::dns:
    return "dns:" + name + ":" + std::to_string(address.port);
  case Kind::srv:
    return "srv:" + name;
  }
  return {};
}

bool Cidr::contains(bool v6, const uint8_t* a) const {
  if (v6 != ipv6)
    return false;
  unsigned full = bits / 8;
  if (std::memcmp(a, addr, full) != 0)
    return false;
  unsigned rest = bits % 8;
  return rest == 0 || ((a[full] ^ addr[full]) & (0xff00 >> rest) & 0xff) == 0;
}

const Pool* Config::find_pool(const std::string& name) const {
  for (const auto& pool : pools)
    if (pool.name == name)
      return &pool;
  return nullptr;
}

namespace {

using Names = std::initializer_list<std::string_view>;

// One key and its value in a YAML map, or one item of a list (then key and value are the item).
struct Item {
  std::string name; // the key, or what a list item is ("listener", "backend"), for messages
  YAML::Node key;
  YAML::Node value;
};

bool is_empty(const YAML::Node& node) { return !node.IsDefined() || node.IsNull(); }

bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string describe(const YAML::Node& node) {
  if (node.IsScalar())
    return "'" + node.Scalar() + "'";
  if (node.IsMap())
    return "a map";
  if (node.IsSequence())
    return "a list";
  return "nothing";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" when one candidate is within two edits of `word`, else "".
template <class Candidates>
std::string suggestion(std::string_view word, const Candidates& candidates) {
  std::string_view best;
  size_t best_distance = 3;
  for (std::string_view candidate : candidates) {
    size_t distance = edit_distance(word, candidate);
    if (distance < best_distance && distance < candidate.size()) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best.empty() ? "" : " (did you mean '" + std::string(best) + "'?)";
}

bool contains(Names names, std::string_view word) {
  return std::find(names.begin(), names.end(), word) != names.end();
}

// RFC 9110 token: what a header name may be made of.
bool is_token(std::string_view text) {
  static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string_view::npos;
  });
}

// Names of listeners, pools and regions appear in metric labels, admin URLs
// and lb's own answers (the maintenance page names its pool).
constexpr size_t max_name = 128;
constexpr size_t max_fixed_body = 4096; // respond: {body}
// A route's request_headers (or response_headers) set and add at most this
// many fields, each of at most max_value_parts parts: the head that carries
// them has a bounded gather list.
constexpr size_t max_header_edits = 8;
constexpr size_t max_value_parts = 7;
bool is_name(std::string_view text) {
  return !text.empty() && text.size() <= max_name &&
         std::all_of(text.begin(), text.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
         });
}

// "api.example.com" or "*.example.com"; letters, digits, '-' and '.'.
bool is_host_pattern(std::string_view text) {
  if (text.starts_with("*."))
    text.remove_prefix(2);
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  });
}

std::string format_size(uint64_t bytes) {
  if (bytes != 0 && bytes % (1 << 30) == 0)
    return std::to_string(bytes >> 30) + "GiB";
  if (bytes != 0 && bytes % (1 << 20) == 0)
    return std::to_string(bytes >> 20) + "MiB";
  if (bytes != 0 && bytes % (1 << 10) == 0)
    return std::to_string(bytes >> 10) + "KiB";
  return std::to_string(bytes);
}

// 1 -> "1.0", 1.5 -> "1.5": a range of numbers that may have fractions.
std::string format_number(double value) {
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, ec == std::errc() ? end : buffer);
  return text.find_first_of(".e") == std::string::npos ? text + ".0" : text;
}

std::string format_duration(Duration d) {
  auto ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0)
    return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0)
    return std::to_string(ms / 60'000) + "m";
  if (ms != 0 && ms % 1000 == 0)
    return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// What may follow GET in a request line: no spaces or control bytes.
bool is_request_path(std::string_view text) {
  return text.starts_with('/') &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return c > ' ' && c < 0x7f; });
}

// A Host header value: a name or address, optionally with a port ("app.internal:8080").
bool is_host_header(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
           c == ':' || c == '[' || c == ']';
  });
}

// "200", "200-399" or "200,204,300-399" (spaces allowed around ',' and '-'), appended to
// `ranges`. Returns "" when well formed, else what is wrong with it.
std::string parse_status_ranges(std::string_view text, std::vector<std::pair<int, int>>& ranges) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && s.front() == ' ')
      s.remove_prefix(1);
    while (!s.empty() && s.back() == ' ')
      s.remove_suffix(1);
    return s;
  };
  auto code = [](std::string_view s, int& value) {
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    return !s.empty() && ec == std::errc() && end == s.data() + s.size();
  };
  static constexpr std::string_view malformed =
      "expected status codes like 200, 200-399 or 200,204,300-399";
  while (true) {
    size_t comma = text.find(',');
    std::string_view part = trim(text.substr(0, comma));
    size_t dash = part.find('-');
    int lo = 0;
    int hi = 0;
    if (!code(trim(part.substr(0, dash)), lo))
      return std::string(malformed);
    if (dash == std::string_view::npos)
      hi = lo;
    else if (!code(trim(part.substr(dash + 1)), hi))
      return std::string(malformed);
    if (lo < 100 || lo > 599 || hi < 100 || hi > 599)
      return "status codes are 100..599";
    if (lo > hi)
      return "range " + std::to_string(lo) + "-" + std::to_string(hi) + " ends before it starts";
    ranges.emplace_back(lo, hi);
    if (comma == std::string_view::npos)
      return "";
    text.remove_prefix(comma + 1);
  }
}

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  const char* reason = e ? ERR_reason_error_string(e) : nullptr;
  ERR_clear_error();
  return reason ? reason : "unknown error";
}

// Loads a certificate chain and its key the way the listener will. Returns ""
// when usable, else what is wrong, starting with "cert:" or "key:".
std::string check_certificate(const std::string& cert, const std::string& key) {
  if (::access(cert.c_str(), R_OK) != 0)
    return "cert: cannot read " + cert + ": " + std::strerror(errno);
  if (::access(key.c_str(), R_OK) != 0)
    return "key: cannot read " + key + ": " + std::strerror(errno);
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx)
    return "cert: cannot create a TLS context: " + openssl_error();
  std::string why;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1)
    why = "cert: " + cert + " is not a PEM certificate chain (" + openssl_error() + ")";
  else if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    std::string reason = openssl_error();
    why = reason.find("mismatch") != std::string::npos
              ? "key: " + key + " does not match the certificate in " + cert
              : "key: " + key + " is not a PEM private key (" + reason + ")";
  } else if (SSL_CTX_check_private_key(ctx) != 1)
    why = "key: " + key + " does not match the certificate in " + cert;
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return why;
}

// The admin token from `path`: its content without trailing whitespace. ""
// when it is usable, else what is wrong.
std::string read_token(const std::string& path, std::string& token) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return "cannot read " + path + ": " + std::strerror(errno);
  char buf[1025];
  ssize_t n = ::read(fd, buf, sizeof buf);
  int err = errno;
  ::close(fd);
  if (n < 0)
    return "cannot read " + path + ": " + std::strerror(err);
  if (n == sizeof buf)
    return path + " is longer than 1 KiB: it should hold only the token";
  std::string_view t(buf, static_cast<size_t>(n));
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back())))
    t.remove_suffix(1);
  if (t.size() < 16)
    return path + " holds " + (t.empty() ? "no token" : "a token shorter than 16 characters") +
           " (make one with: openssl rand -hex 32 > " + path + ")";
  if (!std::all_of(t.begin(), t.end(), [](unsigned char c) { return c > ' ' && c < 0x7f; }))
    return path + ": the token must be printable ASCII without spaces";
  token = std::string(t);
  return {};
}

std::string check_ca(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0)
    return "cannot read " + path + ": " + std::strerror(errno);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx)
    return "cannot create a TLS context: " + openssl_error();
  std::string why;
  if (SSL_CTX_load_verify_locations(ctx, path.c_str(), nullptr) != 1)
    why = path + " holds no PEM certificate (" + openssl_error() + ")";
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return why;
}

bool redirect_loops(const Route& route, bool tls);
std::string reserved_field(std::string_view name);

class Loader {
public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  LoadResult load(const std::string& text);

private:
  struct Error {
    int line;
    int column;
    std::string message;
  };

  LoadResult result(std::shared_ptr<Config> config);
  void error(const YAML::Mark& mark, std::string message);

  void error(const YAML::Node& node, std::string message) {
    error(node.Mark(), std::move(message));
  }
  // At the value; at the key when the value is empty (yaml-cpp marks it at the next token).
  void error(const Item& item, std::string message) {
    error(is_empty(item.value) ? item.key : item.value, std::move(message));
  }

  std::optional<std::vector<Item>> map_items(const Item& map);
  std::optional<std::vector<Item>> fields(const Item& map, Names known, Names unsupported = {});
  std::optional<std::vector<Item>> list_items(const Item& list, const std::string& item_name);

  std::optional<std::string> scalar(const Item& item, std::string_view expected);
  std::optional<uint64_t> integer(const Item& item, uint64_t min, uint64_t max);
  std::optional<double> number(const Item& item, double min, double max);
  std::optional<Duration> duration(const Item& item, bool positive);
  std::optional<uint64_t> size(const Item& item, uint64_t min, uint64_t max);
  std::optional<Address> address(const Item& item, bool port_zero_ok);
  std::optional<bool> on_off(const Item& item);
  std::optional<bool> boolean(const Item& item);
  std::optional<std::string> name(const Item& item);

  void top(const YAML::Node& root, Config& config);
  void admin(const Item& item, Admin& admin);
  void access_log(const Item& item, AccessLog& log);
  void dns(const Item& item, Dns& dns);
  void cluster(const Item& item, Cluster& cluster);
  std::optional<RateLimit::OnRedisError> on_redis_error(const Item& f);
  void redis_tls(const Item& item, RedisTls& tls);
  std::optional<std::string> dns_name(const Item& item, std::string_view text);
  void listener(const Item& item, Listener& listener);
  void tls(const Item& item, ListenerTls& tls);
  void acme(const Item& item, Acme& acme);
  void acme_checks(const std::vector<Item>& items, const std::vector<Listener>& listeners);
  std::string resolve(const std::string& path) const;
  void limits(const Item& item, Limits& limits);
  void listener_timeouts(const Item& item, ListenerTimeouts& timeouts);
  void headers(const Item& item, Headers& headers);
  void route(const Item& item, Route& route);
  void route_match(const Item& item, RouteMatch& match);
  void rate_limit(const Item& item, RateLimit& limit);
  void split(const Item& item, Route& route);
  void redirect(const Item& item, Route& route);
  void respond(const Item& item, Route& route);
  void header_edits(const Item& item, HeaderEdits& edits);
  std::optional<HeaderValue> header_value(const Item& item);
  std::optional<std::vector<Cidr>> cidr_list(const Item& item);
  std::optional<std::string> host_name(const Item& item, const std::string& what,
                                       const std::string& example);
  void retry_on(const Item& item, Pool& pool);
  void retry_budget(const Item& item, Pool& pool);
  void pool(const Item& item, Pool& pool);
  void balance(const Item& item, Pool& pool);
  void hash_key(const Item& item, HashKey& key,
                std::string_view expected = "source_ip, header:NAME or cookie:NAME");
  void sticky_cookie(const Item& item, std::string& cookie);
  void pool_timeouts(const Item& item, PoolTimeouts& timeouts);
  void pool_tls(const Item& item, PoolTls& tls);
  bool tls_client_field(const Item& f, bool& verify, std::string& ca, std::string& sni);
  void tls_version(const Item& item, ListenerTls::Version& version);
  void health_check(const Item& item, HealthCheck& check);
  bool expect_status(const Item& item, std::vector<std::pair<int, int>>& ranges);
  void outlier_detection(const Item& item, OutlierDetection& detection);
  void region(const Item& item, Region& region, const Pool& pool, std::set<std::string>& addresses);
  void backends(const Item& item, Region& region, const Pool& pool,
                std::set<std::string>& addresses, const std::string& if_empty);
  void backend(const Item& item, Region& region, const Pool& pool,
               std::set<std::string>& addresses);

  std::string file_;
  std::vector<Error> errors_;
  std::vector<std::string> pool_names_; // known before listeners are read
  std::set<std::string> listener_names_;
  std::map<std::string, std::string> listen_addresses_; // address text -> listener name
  std::optional<Item> admin_listen_;
  // rate_limit items with scope: cluster (checked against the cluster block),
  // and whether they say on_redis_error themselves.
  std::vector<std::pair<Item, bool>> cluster_limits_; // (scope item, on_redis_error said)
};

void Loader::error(const YAML::Mark& mark, std::string message) {
  // yaml-cpp counts from 0 and has no mark at all for some nodes.
  errors_.push_back({std::max(mark.line, 0) + 1, std::max(mark.column, 0) + 1, std::move(message)});
}

LoadResult Loader::result(std::shared_ptr<Config> config) {
  std::stable_sort(errors_.begin(), errors_.end(), [](const Error& a, const Error& b) {
    return a.line != b.line ? a.line < b.line : a.column < b.column;
  });
  LoadResult result;
  for (const auto& e : errors_)
    result.errors.push_back(file_ + ":" + std::to_string(e.line) + ":" + std::to_string(e.column) +
                            ": " + e.message);
  if (result.errors.empty())
    result.config = std::move(config);
  return result;
}

// Finds the first alias (*name) of a YAML text. lb configs have no use for
// anchors and aliases, and nested aliases can make a small file expand into an
// exponentially large one (a "billion laughs"), so they are refused up front.
class AliasFinder : public YAML::EventHandler {
public:
  std::optional<YAML::Mark> alias;
  std::optional<YAML::Mark> second_document;
  int documents = 0;
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents == 2)
      second_document = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override {
    if (!alias)
      alias = mark;
  }
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

LoadResult Loader::load(const std::string& text) {
  auto config = std::make_shared<Config>();
  config->file = file_;
  try {
    {
      // At most two passes: the first document, and whether another follows.
      // (yaml-cpp can report empty documents without end on some garbage, so
      // this never loops until the input is exhausted.)
      std::istringstream stream(text);
      YAML::Parser parser(stream);
      AliasFinder finder;
      for (int i = 0; i < 2 && !finder.alias && parser.HandleNextDocument(finder); ++i) {
      }
      if (finder.alias) {
        error(*finder.alias, "YAML aliases (*name) are not supported in lb configs");
        return result(std::move(config));
      }
      if (finder.second_document) {
        error(*finder.second_document, "only one YAML document is allowed");
        return result(std::move(config));
      }
    }
    top(YAML::Load(text), *config);
  } catch (const YAML::Exception& e) {
    error(e.mark, (dynamic_cast<const YAML::ParserException*>(&e) ? "invalid YAML: " : "") + e.msg);
  } catch (const std::exception& e) {
    error(YAML::Mark(), std::string("cannot load: ") + e.what());
  }
  return result(std::move(config));
}

// ---- structure -------------------------------------------------------------------------------

std::optional<std::vector<Item>> Loader::map_items(const Item& map) {
  if (is_empty(map.value))
    return std::vector<Item>{};
  if (!map.value.IsMap()) {
    error(map, map.name + ": expected a map, got " + describe(map.value));
    return std::nullopt;
  }
  std::vector<Item> items;
  std::set<std::string> seen;
  for (auto it = map.value.begin(); it != map.value.end(); ++it) {
    if (!it->first.IsScalar()) {
      error(it->first, "expected a plain key, got " + describe(it->first));
      continue;
    }
    const std::string& key = it->first.Scalar();
    if (!seen.insert(key).second) {
      error(it->first, "duplicate key '" + key + "'");
      continue;
    }
    items.push_back({key, it->first, it->second});
  }
  return items;
}

// The items of a map whose keys are fixed; unknown and not yet supported keys are errors.
std::optional<std::vector<Item>> Loader::fields(const Item& map, Names known, Names unsupported) {
  auto items = map_items(map);
  if (!items)
    return std::nullopt;
  std::vector<Item> accepted;
  for (auto& item : *items) {
    if (contains(known, item.name)) {
      accepted.push_back(std::move(item));
    } else if (contains(unsupported, item.name)) {
      error(item.key, item.name + ": not supported yet");
    } else {
      error(item.key, "unknown key '" + item.name + "'" + suggestion(item.name, known));
    }
  }
  return accepted;
}

std::optional<std::vector<Item>> Loader::list_items(const Item& list,
                                                    const std::string& item_name) {
  if (is_empty(list.value))
    return std::vector<Item>{};
  if (!list.value.IsSequence()) {
    error(list, list.name + ": expected a list, got " + describe(list.value));
    return std::nullopt;
  }
  std::vector<Item> items;
  for (const auto& node : list.value)
    items.push_back({item_name, node, node});
  return items;
}

// ---- values ----------------------------------------------------------------------------------

std::optional<std::string> Loader::scalar(const Item& item, std::string_view expected) {
  if (item.value.IsScalar())
    return item.value.Scalar();
  error(item, item.name + ": expected " + std::string(expected) + ", got " + describe(item.value));
  return std::nullopt;
}

std::optional<uint64_t> Loader::integer(const Item& item, uint64_t min, uint64_t max) {
  std::string range = std::to_string(min) + ".." + std::to_string(max);
  auto text = scalar(item, "an integer " + range);
  if (!text)
    return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (text->empty() || ec != std::errc() || end != text->data() + text->size()) {
    if (ec == std::errc::result_out_of_range) {
      error(item, item.name + ": must be " + range + ", got '" + *text + "'");
    } else {
      error(item, item.name + ": expected an integer " + range + ", got '" + *text + "'");
    }
    return std::nullopt;
  }
  if (value < min || value > max) {
    error(item, item.name + ": must be " + range + ", got '" + *text + "'");
    return std::nullopt;
  }
  return value;
}

// A decimal number like 1.4 (or a YAML integer); the range is printed with one decimal so
// that the message says fractions are fine.
std::optional<double> Loader::number(const Item& item, double min, double max) {
  std::string range = format_number(min) + ".." + format_number(max);
  auto text = scalar(item, "a number " + range);
  if (!text)
    return std::nullopt;
  double value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (text->empty() || ec != std::errc() || end != text->data() + text->size() ||
      !std::isfinite(value)) {
    error(item, item.name + ": expected a number " + range + ", got '" + *text + "'");
    return std::nullopt;
  }
  if (!(value >= min && value <= max)) {
    error(item, item.name + ": must be " + range + ", got '" + *text + "'");
    return std::nullopt;
  }
  return value;
}

std::optional<Duration> Loader::duration(const Item& item, bool positive) {
  static constexpr std::string_view expected = "a duration like 2s or 250ms";
  auto text = scalar(item, expected);
  if (!text)
    return std::nullopt;
  auto value = parse_duration(*text);
  if (!value) {
    bool bare_number = !text->empty() && text->find_first_not_of("0123456789") == std::string::npos;
    error(item, item.name + ": expected " + std::string(expected) + ", got '" + *text + "'" +
                    (bare_number ? " (add a unit: ms, s, m or h)" : ""));
    return std::nullopt;
  }
  if (positive && value->count() == 0) {
    error(item, item.name + ": must be more than 0s");
    return std::nullopt;
  }
  // Deadlines are computed as now + duration (times a backoff factor): keep
  // every duration far from overflowing.
  if (*value > std::chrono::hours(720)) {
    error(item, item.name + ": must be at most 720h (30 days), got '" + *text + "'");
    return std::nullopt;
  }
  return value;
}

std::optional<uint64_t> Loader::size(const Item& item, uint64_t min, uint64_t max) {
  static constexpr std::string_view expected = "a size like 16KiB, 10MiB or a number of bytes";
  auto text = scalar(item, expected);
  if (!text)
    return std::nullopt;
  auto value = parse_size(*text);
  if (!value) {
    bool decimal_unit = text->find_first_of("KMGkmg") != std::string::npos;
    error(item,
          item.name + ": expected " + std::string(expected) + ", got '" + *text + "'" +
              (decimal_unit ? " (units are KiB, MiB and GiB; KB/MB/GB are not accepted)" : ""));
    return std::nullopt;
  }
  if (*value < min || *value > max) {
    error(item, item.name + ": must be between " + format_size(min) + " and " + format_size(max) +
                    ", got '" + *text + "'");
    return std::nullopt;
  }
  return value;
}

std::optional<Address> Loader::address(const Item& item, bool port_zero_ok) {
  static constexpr std::string_view expected =
      "a numeric address like 127.0.0.1:8080 or [::1]:8080";
  auto text = scalar(item, expected);
  if (!text)
    return std::nullopt;
  auto value = parse_address(*text);
  if (!value) {
    std::string hint;
    bool bracketed = text->starts_with('[');
    if (!bracketed && std::count(text->begin(), text->end(), ':') > 1)
      hint = " (IPv6 addresses go in brackets)";
    else if (!bracketed && text->find_first_of("abcdefghijklmnopqrstuvwxyz"
                                               "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != std::string::npos)
      hint = " (host names are not supported here: use an IP address)";
    error(item, item.name + ": expected " + std::string(expected) + ", got '" + *text + "'" + hint);
    return std::nullopt;
  }
  if (!port_zero_ok && value->port == 0) {
    error(item, item.name + ": port 0 is not allowed for a backend");
    return std::nullopt;
  }
  return value;
}

std::optional<bool> Loader::on_off(const Item& item) {
  auto text = scalar(item, "on or off");
  if (!text)
    return std::nullopt;
  if (*text == "on" || *text == "true")
    return true;
  if (*text == "off" || *text == "false")
    return false;
  error(item, item.name + ": expected on or off, got '" + *text + "'");
  return std::nullopt;
}

std::optional<bool> Loader::boolean(const Item& item) {
  auto text = scalar(item, "true or false");
  if (!text)
    return std::nullopt;
  if (*text == "true" || *text == "on")
    return true;
  if (*text == "false" || *text == "off")
    return false;
  error(item, item.name + ": expected true or false, got '" + *text + "'");
  return std::nullopt;
}

std::optional<std::string> Loader::name(const Item& item) {
  auto text = scalar(item, "a name");
  if (!text)
    return std::nullopt;
  if (!is_name(*text)) {
    error(item, item.name + ": '" + *text +
                    "' is not a valid name (use up to 128 letters, digits, '-', '_' and '.')");
    return std::nullopt;
  }
  return text;
}

// ---- the document ----------------------------------------------------------------------------

void Loader::top(const YAML::Node& root, Config& config) {
  if (is_empty(root)) {
    error(YAML::Mark(), "the config is empty: expected a map with 'listeners' and 'pools'");
    return;
  }
  auto items =
      fields({"config", root, root},
             {"workers", "io", "splice", "shutdown_timeout", "shutdown_delay", "sticky_secret",
              "admin", "access_log", "listeners", "pools", "dns", "cluster"});
  if (!items)
    return;
  const Item* listeners = nullptr;
  const Item* pools = nullptr;
  for (const auto& item : *items) {
    if (item.name == "workers") {
      const std::string text = item.value.IsScalar() ? item.value.Scalar() : "";
      if (text == "auto") {
        config.workers = 0;
      } else if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
        error(item,
              "workers: expected auto or a number of threads 1..1024, got " + describe(item.value));
      } else if (auto n = integer(item, 1, 1024)) {
        config.workers = unsigned(*n);
      }
    } else if (item.name == "io") {
      auto text = scalar(item, "auto or epoll");
      if (!text)
        continue;
      if (*text == "auto")
        config.io = Config::Io::auto_;
      else if (*text == "epoll")
        config.io = Config::Io::epoll;
      else if (*text == "io_uring")
        error(item, "io: io_uring is not built into lb: measured against its epoll loop it saved "
                    "no CPU per request (bench/README.md); use auto or epoll");
      else
        error(item, "io: expected auto or epoll, got '" + *text + "'");
    } else if (item.name == "splice") {
      if (auto on = boolean(item))
        config.splice = *on;
    } else if (item.name == "shutdown_timeout") {
      if (auto d = duration(item, false))
        config.shutdown_timeout = *d;
    } else if (item.name == "shutdown_delay") {
      if (auto d = duration(item, false)) {
        if (*d > std::chrono::hours(1))
          error(item, "shutdown_delay: at most 1h (how long a health check needs to take the "
                      "instance out), got " +
                          describe(item.value));
        else
          config.shutdown_delay = *d;
      }
    } else if (item.name == "sticky_secret") {
      auto text = scalar(item, "a non-empty string");
      if (!text)
        continue;
      if (text->empty())
        error(item, "sticky_secret: must not be empty (leave the key out for no secret)");
      else
        config.sticky_secret = *text;
    } else if (item.name == "admin") {
      admin(item, config.admin);
    } else if (item.name == "access_log") {
      access_log(item, config.access_log);
    } else if (item.name == "dns") {
      dns(item, config.dns);
    } else if (item.name == "cluster") {
      cluster(item, config.cluster);
    } else if (item.name == "listeners") {
      listeners = &item;
    } else if (item.name == "pools") {
      pools = &item;
    }
  }

  if (!listeners)
    error(root, "missing required key 'listeners'");
  if (!pools)
    error(root, "missing required key 'pools'");

  // Pools first, so that routes can name them wherever they are in the file.
  if (auto list = pools ? map_items(*pools) : std::nullopt) {
    if (list->empty())
      error(*pools, "pools: at least one pool is required");
    for (const auto& item : *list)
      pool_names_.push_back(item.name);
    for (const auto& item : *list) {
      config.pools.emplace_back();
      pool(item, config.pools.back());
    }
  }

  if (auto list = listeners ? list_items(*listeners, "listener") : std::nullopt) {
    if (list->empty())
      error(*listeners, "listeners: at least one listener is required");
    for (const auto& item : *list) {
      config.listeners.push_back({});
      listener(item, config.listeners.back());
    }
    acme_checks(*list, config.listeners);
  }

  // Cluster limits: the cluster block's instances and on_redis_error (unless
  // the route says), in the order their items were read.
  size_t k = 0;
  for (auto& l : config.listeners)
    for (auto& r : l.routes) {
      if (!r.rate_limit || r.rate_limit->scope != RateLimit::Scope::cluster ||
          k >= cluster_limits_.size())
        continue;
      const auto& [item, said] = cluster_limits_[k++];
      RateLimit& limit = *r.rate_limit;
      limit.instances = std::max<uint32_t>(1, config.cluster.instances);
      if (!said)
        limit.on_redis_error = config.cluster.on_redis_error;
      if (!config.cluster.enabled)
        error(item, "scope: cluster shares the limit through Redis: add a cluster block "
                    "(cluster: {redis: HOST:PORT, instances: N}), or use scope: local");
      else if (limit.on_redis_error == RateLimit::OnRedisError::local &&
               config.cluster.instances == 0)
        error(item, "scope: cluster with on_redis_error: local applies rate / cluster.instances "
                    "on each instance while Redis is unreachable: set cluster.instances (how "
                    "many lb instances share the limit), or on_redis_error: open");
    }

  if (admin_listen_) {
    auto it = listen_addresses_.find(config.admin.listen.text());
    if (it != listen_addresses_.end())
      error(*admin_listen_,
            "listen: " + it->first + " is already used by listener '" + it->second + "'");
  }
}

void Loader::admin(const Item& item, Admin& admin) {
  auto items = fields(item, {"listen", "token_file", "allowed_hosts"});
  if (!items)
    return;
  const Item* listen = nullptr;
  for (const auto& f : *items) {
    if (f.name == "listen") {
      if (auto a = address(f, true)) {
        admin.listen = *a;
        listen = &f;
        if (a->port != 0)
          admin_listen_ = f;
      }
    } else if (f.name == "token_file") {
      auto text = scalar(f, "a file path");
      if (!text)
        continue;
      admin.token_file = resolve(*text);
      std::string why = read_token(admin.token_file, admin.token);
      if (!why.empty())
        error(f, "token_file: " + why);
    } else if (f.name == "allowed_hosts") {
      auto list = list_items(f, "allowed host");
      for (const auto& h : list.value_or(std::vector<Item>{}))
        if (auto host = host_name(h, "allowed_hosts", "lb1.internal"))
          admin.allowed_hosts.push_back(*host);
    }
  }
  // Off loopback, anyone who reaches the port could drain, re-weight or reload.
  bool loopback = admin.listen.host == "::1" || admin.listen.host.starts_with("127.");
  if (!loopback && admin.token.empty() && admin.token_file.empty())
    error(listen ? *listen : item,
          "admin.listen: " + admin.listen.text() +
              " is not a loopback address: set admin.token_file (every endpoint but /healthz "
              "then needs the token), or listen on 127.0.0.1");
}

// cluster.tls: true | false | { ca, sni, verify, cert, key }
void Loader::redis_tls(const Item& item, RedisTls& tls) {
  if (item.value.IsScalar()) {
    if (auto on = boolean(item))
      tls.enabled = *on;
    return;
  }
  tls.enabled = true;
  if (is_empty(item.value))
    return; // `tls: {}`: verified against the system's trust store
  auto items = fields(item, {"verify", "ca", "sni", "cert", "key"});
  if (!items)
    return;
  const Item* cert_item = nullptr;
  const Item* key_item = nullptr;
  for (const auto& f : *items) {
    if (tls_client_field(f, tls.verify, tls.ca, tls.sni))
      continue;
    if (f.name == "cert" || f.name == "key") {
      auto text = scalar(f, "a file path");
      if (!text)
        continue;
      (f.name == "cert" ? tls.cert : tls.key) = resolve(*text);
      (f.name == "cert" ? cert_item : key_item) = &f;
    }
  }
  if (!cert_item != !key_item)
    error(cert_item ? *cert_item : *key_item,
          "tls: cert and key go together (a client certificate for Redis's tls-auth-clients)");
  else if (cert_item) {
    std::string why = check_certificate(tls.cert, tls.key);
    if (!why.empty())
      error(why.rfind("key:", 0) == 0 ? *key_item : *cert_item, why);
  }
}

std::optional<RateLimit::OnRedisError> Loader::on_redis_error(const Item& f) {
  auto text = scalar(f, "local or open");
  if (!text)
    return std::nullopt;
  if (*text == "local")
    return RateLimit::OnRedisError::local;
  if (*text == "open")
    return RateLimit::OnRedisError::open;
  error(f, "on_redis_error: expected local (rate / cluster.instances on each instance) or open "
           "(let everything through), got '" +
               *text + "'");
  return std::nullopt;
}

// cluster: { redis: HOST:PORT, password_file: FILE, key_prefix: "lb:", instances: N,
//            on_redis_error: local | open }
void Loader::cluster(const Item& item, Cluster& cluster) {
  auto items =
      fields(item, {"redis", "password_file", "key_prefix", "instances", "on_redis_error", "tls"});
  if (!items)
    return;
  cluster.enabled = true;
  bool has_redis = false;
  for (const auto& f : *items) {
    if (f.name == "redis") {
      auto text = scalar(f, "HOST:PORT of the Redis server");
      if (!text)
        continue;
      has_redis = true;
      size_t colon = text->rfind(':');
      std::string host = colon == std::string::npos ? *text : text->substr(0, colon);
      std::string port = colon == std::string::npos ? "6379" : text->substr(colon + 1);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
      bool port_ok = !port.empty() && port.size() <= 5 &&
                     port.find_first_not_of("0123456789") == std::string::npos &&
                     std::stoul(port) >= 1 && std::stoul(port) <= 65535;
      if (host.empty() || host.find_first_of(" /@") != std::string::npos || !port_ok)
        error(f, "redis: expected HOST:PORT like 10.0.0.7:6379 or redis.internal:6379, got '" +
                     *text + "'");
      else {
        cluster.host = host;
        cluster.port = static_cast<uint16_t>(std::stoul(port));
      }
    } else if (f.name == "password_file") {
      auto text = scalar(f, "a file path");
      if (!text)
        continue;
      cluster.password_file = resolve(*text);
      int fd = ::open(cluster.password_file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        error(f,
              "password_file: cannot read " + cluster.password_file + ": " + std::strerror(errno));
        continue;
      }
      char buf[513];
      ssize_t n = ::read(fd, buf, sizeof buf);
      ::close(fd);
      std::string_view pw(buf, n > 0 ? static_cast<size_t>(n) : 0);
      while (!pw.empty() && std::isspace(static_cast<unsigned char>(pw.back())))
        pw.remove_suffix(1);
      if (pw.empty() || n == static_cast<ssize_t>(sizeof buf))
        error(f, "password_file: " + cluster.password_file +
                     (pw.empty() ? " is empty" : " is longer than 512 bytes"));
      else
        cluster.password = std::string(pw);
    } else if (f.name == "key_prefix") {
      auto text = scalar(f, "a key prefix like lb:");
      if (!text)
        continue;
      if (text->empty() || text->size() > 64 ||
          !std::all_of(text->begin(), text->end(),
                       [](unsigned char c) { return c > ' ' && c < 0x7f; }))
        error(f, "key_prefix: expected up to 64 printable characters without spaces, got '" +
                     *text + "'");
      else
        cluster.key_prefix = *text;
    } else if (f.name == "instances") {
      if (auto n = integer(f, 1, 1000))
        cluster.instances = static_cast<uint32_t>(*n);
    } else if (f.name == "on_redis_error") {
      if (auto e = on_redis_error(f))
        cluster.on_redis_error = *e;
    } else if (f.name == "tls") {
      redis_tls(f, cluster.tls);
    }
  }
  if (!has_redis)
    error(item.key, "cluster: needs redis (HOST:PORT of the Redis server)");
}

void Loader::dns(const Item& item, Dns& dns) {
  auto items = fields(item, {"servers", "min_ttl", "max_ttl"});
  if (!items)
    return;
  const Item* min_item = nullptr;
  for (const auto& f : *items) {
    if (f.name == "servers") {
      auto list = list_items(f, "server");
      if (!list)
        continue;
      for (const auto& server : *list) {
        // A bare address means the DNS port, 53.
        std::string text = server.value.IsScalar() ? server.value.Scalar() : std::string();
        std::optional<Address> bare;
        if (!text.empty() && !parse_address(text))
          bare = parse_address(text.find(':') != std::string::npos ? "[" + text + "]:53"
                                                                   : text + ":53");
        if (bare)
          dns.servers.push_back(*bare);
        else if (auto a = address(server, false))
          dns.servers.push_back(*a);
      }
    } else if (auto d = duration(f, true)) {
      if (f.name == "min_ttl") {
        dns.min_ttl = *d;
        min_item = &f;
      } else {
        dns.max_ttl = *d;
      }
    }
  }
  if (min_item && dns.min_ttl > dns.max_ttl)
    error(*min_item, "min_ttl: " + format_duration(dns.min_ttl) + " is more than max_ttl " +
                         format_duration(dns.max_ttl));
}

// A DNS name as a dns: or srv: backend names it.
std::optional<std::string> Loader::dns_name(const Item& item, std::string_view text) {
  bool ok = !text.empty() && text.size() <= 253 && text.front() != '.' && text.front() != '-';
  for (char c : text)
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_');
  if (ok && text.find("..") != std::string_view::npos)
    ok = false;
  if (!ok) {
    error(item, item.name + ": '" + std::string(text) + "' is not a valid DNS name");
    return std::nullopt;
  }
  std::string name(text);
  if (name.ends_with('.'))
    name.pop_back();
  return name;
}

void Loader::access_log(const Item& item, AccessLog& log) {
  auto items = fields(item, {"path", "format"});
  if (!items)
    return;
  for (const auto& f : *items) {
    auto text =
        scalar(f, f.name == "path" ? "stdout, stderr, off or a file path" : "json or combined");
    if (!text)
      continue;
    if (f.name == "path") {
      if (text->empty())
        error(f, "path: expected stdout, stderr, off or a file path, got ''");
      else
        log.path = *text;
    } else if (*text == "json") {
      log.format = AccessLog::Format::json;
    } else if (*text == "combined") {
      log.format = AccessLog::Format::combined;
    } else {
      error(f, "format: expected json or combined, got '" + *text + "'" +
                   suggestion(*text, Names{"json", "combined"}));
    }
  }
}

// ---- listeners -------------------------------------------------------------------------------

void Loader::listener(const Item& item, Listener& listener) {
  auto items = fields(item, {"name", "listen", "limits", "timeouts", "headers", "routes",
                             "proxy_protocol", "tls", "http2", "allow", "deny"});
  if (!items)
    return;
  std::set<std::string> present;
  const Item* name_item = nullptr;   // set when valid
  const Item* listen_item = nullptr; // set when valid
  std::vector<Item> route_items;     // the routes' nodes, as listener.routes
  for (const auto& f : *items) {
    present.insert(f.name);
    if (f.name == "name") {
      if (auto n = name(f)) {
        listener.name = *n;
        name_item = &f;
      }
    } else if (f.name == "listen") {
      if (auto a = address(f, true)) {
        listener.listen = *a;
        listen_item = &f;
      }
    } else if (f.name == "proxy_protocol") {
      if (auto on = boolean(f))
        listener.proxy_protocol = *on;
    } else if (f.name == "http2") {
      if (auto on = boolean(f))
        listener.http2 = *on;
    } else if (f.name == "tls") {
      tls(f, listener.tls);
    } else if (f.name == "limits") {
      limits(f, listener.limits);
    } else if (f.name == "timeouts") {
      listener_timeouts(f, listener.timeouts);
    } else if (f.name == "headers") {
      headers(f, listener.headers);
    } else if (f.name == "allow" || f.name == "deny") {
      if (auto list = cidr_list(f))
        (f.name == "allow" ? listener.allow : listener.deny) = *list;
    } else if (f.name == "routes") {
      auto routes = list_items(f, "route");
      if (routes && routes->empty())
        error(f, "listener has no routes");
      for (const auto& r : routes.value_or(std::vector<Item>{})) {
        listener.routes.push_back({});
        route(r, listener.routes.back());
        route_items.push_back(r);
      }
    }
  }
  // (After the loop: the listener's TLS and request id header are known only now.)
  std::set<std::string> route_names;
  for (size_t i = 0; i < listener.routes.size(); ++i) {
    const Route& r = listener.routes[i];
    if (!r.name.empty() && !route_names.insert(r.name).second)
      error(route_items[i].key, "route name '" + r.name + "' is used twice in this listener");
    if (r.match.client_cert && listener.tls.client_ca.empty())
      error(route_items[i].key, "match.client_cert: the listener asks for no client certificate: "
                                "set tls.client_ca on it");
    if (r.action == Route::Action::redirect && redirect_loops(r, listener.tls.enabled))
      error(route_items[i].key,
            "redirect: sends the request to where it already is (same scheme, host, port and "
            "path): a client would follow it forever; change at least one part");
    const std::string& id = listener.headers.request_id;
    // The request id goes to the backend as lb has it: request rules cannot change it.
    bool named = false;
    for (const auto& n : r.request_headers.remove)
      named |= iequal(n, id);
    for (const auto* list : {&r.request_headers.set, &r.request_headers.add})
      for (const auto& [n, v] : *list)
        named |= iequal(n, id);
    if (!id.empty() && named)
      error(route_items[i].key, "request_headers: " + id +
                                    " is the listener's request id header, set by lb itself "
                                    "(see the listener's headers: {request_id: ...})");
  }
  if (!present.count("name"))
    error(item.key, "missing required key 'name'");
  if (!present.count("listen"))
    error(item.key, "missing required key 'listen'");
  if (!present.count("routes"))
    error(item.key, "listener has no routes");

  if (name_item && !listener_names_.insert(listener.name).second)
    error(*name_item, "duplicate listener name '" + listener.name + "'");
  // Port 0 asks the kernel for a free port: two of them do not collide.
  if (listen_item && listener.listen.port != 0) {
    auto [it, fresh] = listen_addresses_.emplace(listener.listen.text(), listener.name);
    if (!fresh)
      error(*listen_item,
            "listen: " + it->first + " is already used by listener '" + it->second + "'");
  }
}

// Relative certificate paths are relative to the config file, so a config and its
// certificates can move together.
std::string Loader::resolve(const std::string& path) const {
  if (path.empty() || path.front() == '/')
    return path;
  size_t slash = file_.rfind('/');
  return slash == std::string::npos ? path : file_.substr(0, slash + 1) + path;
}

// tls: { certificates: [ { cert: FILE, key: FILE }, ... ], min_version: "1.2" }
void Loader::tls_version(const Item& item, ListenerTls::Version& version) {
  auto v = scalar(item, "\"1.2\" or \"1.3\"");
  if (!v)
    return;
  if (*v == "1.2")
    version = ListenerTls::Version::tls1_2;
  else if (*v == "1.3")
    version = ListenerTls::Version::tls1_3;
  else
    error(item, "min_version: expected \"1.2\" or \"1.3\", got '" + *v + "'");
}

// Each certificate and key is loaded here, so `lb check` reports a missing file,
// a bad PEM or a key that does not match its certificate at the YAML node.
void Loader::tls(const Item& item, ListenerTls& tls) {
  auto items =
      fields(item, {"certificates", "min_version", "watch", "client_ca", "client_verify", "acme"});
  if (!items)
    return;
  size_t errors_before = errors_.size();
  tls.enabled = true;
  bool any = false;
  bool verify_given = false;
  const Item* verify_item = nullptr;
  for (const auto& f : *items) {
    if (f.name == "min_version") {
      tls_version(f, tls.min_version);
      continue;
    }
    if (f.name == "watch") {
      if (auto on = boolean(f))
        tls.watch = *on;
      continue;
    }
    if (f.name == "client_ca") {
      if (auto text = scalar(f, "a PEM file of CA certificates")) {
        tls.client_ca = resolve(*text);
        if (std::string why = check_ca(tls.client_ca); !why.empty())
          error(f, "client_ca: " + why);
      }
      continue;
    }
    if (f.name == "client_verify") {
      verify_given = true;
      verify_item = &f;
      if (auto text = scalar(f, "required or optional")) {
        if (*text == "required")
          tls.client_verify = ListenerTls::ClientVerify::required;
        else if (*text == "optional")
          tls.client_verify = ListenerTls::ClientVerify::optional;
        else
          error(f, "client_verify: expected required or optional, got '" + *text + "'");
      }
      continue;
    }
    if (f.name == "acme") {
      tls.acme.emplace();
      acme(f, *tls.acme);
      any = true;
      continue;
    }
    auto list = list_items(f, "certificate");
    for (const auto& c : list.value_or(std::vector<Item>{})) {
      auto parts = fields(c, {"cert", "key"});
      if (!parts)
        continue;
      TlsCertificate cert;
      const Item* cert_item = nullptr;
      const Item* key_item = nullptr;
      for (const auto& p : *parts) {
        auto text = scalar(p, "a file path");
        if (!text)
          continue;
        (p.name == "cert" ? cert.cert : cert.key) = resolve(*text);
        (p.name == "cert" ? cert_item : key_item) = &p;
      }
      if (!cert_item || !key_item) {
        error(c.key, "a certificate needs both 'cert' and 'key'");
        continue;
      }
      std::string why = check_certificate(cert.cert, cert.key);
      if (!why.empty()) {
        error(why.rfind("key", 0) == 0 ? *key_item : *cert_item, why);
        continue;
      }
      tls.certificates.push_back(cert);
      any = true;
    }
  }
  if (verify_given && tls.client_ca.empty())
    error(*verify_item, "client_verify: needs client_ca (the CA bundle client certificates are "
                        "verified against)");
  if (!any && errors_.size() == errors_before)
    error(item, "tls: needs at least one certificate (certificates: [{cert: FILE, key: FILE}]) "
                "or acme: {...}");
}

// What one listener's acme block cannot know: HTTP-01 is answered on a plain
// listener, and two listeners cannot order into the same files.
void Loader::acme_checks(const std::vector<Item>& items, const std::vector<Listener>& listeners) {
  bool plain = std::any_of(listeners.begin(), listeners.end(),
                           [](const Listener& l) { return !l.tls.enabled; });
  std::map<std::string, std::string> files; // storage + first domain -> listener
  for (size_t i = 0; i < listeners.size() && i < items.size(); ++i) {
    const Listener& l = listeners[i];
    if (!l.tls.acme || l.tls.acme->domains.empty())
      continue;
    const Acme& a = *l.tls.acme;
    if (a.challenge == Acme::Challenge::http_01 && !plain)
      error(items[i].key, "acme: challenge http-01 is answered on a listener without tls (the "
                          "ACME server connects to port 80): add one, or use tls-alpn-01");
    auto [it, fresh] = files.emplace(a.storage + "/" + a.domains[0], l.name);
    if (!fresh)
      error(items[i].key, "acme: listener '" + it->second + "' already orders " + a.domains[0] +
                              " into " + a.storage + ": give this listener its own storage");
  }
}

// acme: { directory: URL, email: ADDRESS, domains: [NAME, ...], storage: DIR, ca: FILE,
//         challenge: http-01 | tls-alpn-01 }
void Loader::acme(const Item& item, Acme& acme) {
  auto items = fields(item, {"directory", "email", "domains", "storage", "ca", "challenge"});
  if (!items)
    return;
  size_t errors_before = errors_.size();
  bool has_directory = false, has_storage = false, has_domains = false;
  for (const auto& f : *items) {
    if (f.name == "directory") {
      auto text = scalar(f, "the ACME directory URL (https://...)");
      if (!text)
        continue;
      has_directory = true;
      if (!text->starts_with("https://") || text->size() <= 8)
        error(f, "directory: expected an https:// URL (the ACME server's directory), got '" +
                     *text + "'");
      else
        acme.directory = *text;
    } else if (f.name == "email") {
      auto text = scalar(f, "an e-mail address");
      if (!text)
        continue;
      size_t at = text->find('@');
      if (at == std::string::npos || at == 0 || at + 1 >= text->size() ||
          text->find_first_of(" \t\r\n,<>\"") != std::string::npos)
        error(f, "email: expected an e-mail address like ops@example.com, got '" + *text + "'");
      else
        acme.email = *text;
    } else if (f.name == "domains") {
      has_domains = true;
      std::vector<Item> names;
      if (f.value.IsScalar())
        names.push_back(f);
      else if (auto list = list_items(f, "domain"))
        names = *list;
      for (const auto& n : names) {
        if (n.value.IsScalar() && n.value.as<std::string>().starts_with("*.")) {
          error(n, "domains: '" + n.value.as<std::string>() +
                       "': a wildcard needs the DNS-01 challenge, which lb does not answer; "
                       "list each name");
          continue;
        }
        if (auto host = host_name(n, "domains", "www.example.com")) {
          if (std::find(acme.domains.begin(), acme.domains.end(), *host) != acme.domains.end())
            error(n, "domains: '" + *host + "' is listed twice");
          else
            acme.domains.push_back(*host);
        }
      }
    } else if (f.name == "storage") {
      auto text = scalar(f, "a directory");
      if (!text)
        continue;
      has_storage = true;
      acme.storage = resolve(*text);
    } else if (f.name == "ca") {
      auto text = scalar(f, "a PEM file of CA certificates");
      if (!text)
        continue;
      acme.ca = resolve(*text);
      if (std::string why = check_ca(acme.ca); !why.empty())
        error(f, "ca: " + why);
    } else if (f.name == "challenge") {
      auto text = scalar(f, "http-01 or tls-alpn-01");
      if (!text)
        continue;
      if (*text == "http-01")
        acme.challenge = Acme::Challenge::http_01;
      else if (*text == "tls-alpn-01")
        acme.challenge = Acme::Challenge::tls_alpn_01;
      else
        error(f, "challenge: expected http-01 or tls-alpn-01, got '" + *text + "'");
    }
  }
  if (!has_directory)
    error(item.key, "acme: needs directory (the ACME server's directory URL)");
  if (!has_storage)
    error(item.key, "acme: needs storage (a directory for the account key and the certificates)");
  if (!has_domains)
    error(item.key, "acme: needs domains (the names the certificate is for)");
  else if (acme.domains.empty() && errors_.size() == errors_before)
    error(item.key, "acme: domains: needs at least one name");
}

// The CA bundle is loaded here, so `lb check` reports a missing or bad file at its node.
// `verify`, `ca` or `sni` of a block lb connects out with (a pool's tls,
// the cluster's); false for any other field.
bool Loader::tls_client_field(const Item& f, bool& verify, std::string& ca, std::string& sni) {
  if (f.name == "verify") {
    if (auto b = boolean(f))
      verify = *b;
  } else if (f.name == "ca") {
    if (auto text = scalar(f, "a file path")) {
      ca = resolve(*text);
      if (std::string why = check_ca(ca); !why.empty())
        error(f, "ca: " + why);
    }
  } else if (f.name == "sni") {
    if (auto text = scalar(f, "a host name"))
      if (auto name = dns_name(f, *text))
        sni = *name;
  } else {
    return false;
  }
  return true;
}

void Loader::pool_tls(const Item& item, PoolTls& tls) {
  tls.enabled = true;
  if (is_empty(item.value))
    return; // `tls: {}` or `tls:`: HTTPS, verified against the system's trust store
  auto items = fields(item, {"verify", "ca", "sni", "min_version"});
  if (!items)
    return;
  for (const auto& f : *items) {
    if (tls_client_field(f, tls.verify, tls.ca, tls.sni))
      continue;
    if (f.name == "min_version") {
      tls_version(f, tls.min_version);
    }
  }
}

void Loader::limits(const Item& item, Limits& limits) {
  auto items = fields(
      item, {"max_header_bytes", "max_body_bytes", "max_connections", "max_concurrent_streams"});
  if (!items)
    return;
  for (const auto& f : *items) {
    if (f.name == "max_header_bytes") {
      if (auto n = size(f, 1 << 10, 1 << 20))
        limits.max_header_bytes = *n;
    } else if (f.name == "max_body_bytes") {
      if (auto n = size(f, 0, UINT64_MAX))
        limits.max_body_bytes = *n;
    } else if (f.name == "max_connections") {
      if (auto n = integer(f, 1, 100'000'000))
        limits.max_connections = *n;
    } else if (f.name == "max_concurrent_streams") {
      if (auto n = integer(f, 1, 10'000))
        limits.max_concurrent_streams = static_cast<uint32_t>(*n);
    }
  }
}

void Loader::listener_timeouts(const Item& item, ListenerTimeouts& timeouts) {
  auto items = fields(item, {"header", "idle", "tunnel"});
  if (!items)
    return;
  for (const auto& f : *items) {
    auto d = duration(f, true);
    if (!d)
      continue;
    (f.name == "header" ? timeouts.header
     : f.name == "idle" ? timeouts.idle
                        : timeouts.tunnel) = *d;
  }
}

void Loader::headers(const Item& item, Headers& headers) {
  auto items = fields(item, {"forwarded_for", "request_id", "via"});
  if (!items)
    return;
  for (const auto& f : *items) {
    if (f.name == "forwarded_for") {
      auto text = scalar(f, "append, replace or off");
      if (!text)
        continue;
      if (*text == "append")
        headers.forwarded_for = Headers::ForwardedFor::append;
      else if (*text == "replace")
        headers.forwarded_for = Headers::ForwardedFor::replace;
      else if (*text == "off" || *text == "false")
        headers.forwarded_for = Headers::ForwardedFor::off;
      else
        error(f, "forwarded_for: expected append, replace or off, got '" + *text + "'");
    } else if (f.name == "request_id") {
      auto text = scalar(f, "a header name or off");
      if (!text)
        continue;
      if (*text == "off" || *text == "false")
        headers.request_id.clear();
      else if (std::string why = reserved_field(*text); !why.empty())
        error(f, "request_id: " + *text + why);
      else if (is_token(*text) && text->size() <= max_name)
        headers.request_id = *text;
      else
        error(f, "request_id: expected a header name (up to 128 characters) or off, got '" + *text +
                     "'");
    } else if (f.name == "via") {
      if (auto on = on_off(f))
        headers.via = *on;
    }
  }
}

// "10.0.0.0/8", "2001:db8::/32" or one address (a /32 or /128).
std::optional<Cidr> parse_cidr(std::string_view text) {
  Cidr c;
  c.text = std::string(text);
  std::string addr(text.substr(0, text.find('/')));
  c.ipv6 = addr.find(':') != std::string::npos;
  if (::inet_pton(c.ipv6 ? AF_INET6 : AF_INET, addr.c_str(), c.addr) != 1)
    return std::nullopt;
  unsigned max_bits = c.ipv6 ? 128 : 32;
  c.bits = static_cast<uint8_t>(max_bits);
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    std::string_view bits = text.substr(slash + 1);
    unsigned n = 0;
    auto [end, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), n);
    if (bits.empty() || ec != std::errc() || end != bits.data() + bits.size() || n > max_bits)
      return std::nullopt;
    c.bits = static_cast<uint8_t>(n);
  }
  // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range: client
  // addresses are kept that way.
  static constexpr uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (c.ipv6 && c.bits >= 96 && std::memcmp(c.addr, mapped, 12) == 0) {
    std::memmove(c.addr, c.addr + 12, 4);
    std::memset(c.addr + 4, 0, 12);
    c.ipv6 = false;
    c.bits = static_cast<uint8_t>(c.bits - 96);
  }
  // The network address: host bits cleared (so "10.1.2.3/8" is 10.0.0.0/8).
  for (unsigned i = 0; i < 16; ++i) {
    unsigned keep = c.bits > i * 8 ? std::min(8u, c.bits - i * 8) : 0;
    c.addr[i] &= static_cast<uint8_t>(keep == 8 ? 0xff : (0xff00 >> keep) & 0xff);
  }
  return c;
}

// One host name (no wildcard), in lower case; `example` shows the form.
std::optional<std::string> Loader::host_name(const Item& item, const std::string& what,
                                             const std::string& example) {
  auto text = scalar(item, "a host name");
  if (!text)
    return std::nullopt;
  std::string host = *text;
  std::transform(host.begin(), host.end(), host.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  if (!host.empty() && is_host_pattern(host) && !host.starts_with("*."))
    return host;
  error(item, what + ": expected a host name like " + example + ", got '" + *text + "'");
  return std::nullopt;
}

std::optional<std::vector<Cidr>> Loader::cidr_list(const Item& item) {
  // One range may be written without the list.
  std::vector<Item> items;
  if (item.value.IsScalar())
    items.push_back(item);
  else if (auto list = list_items(item, item.name))
    items = *list;
  else
    return std::nullopt;
  std::vector<Cidr> out;
  bool ok = true;
  for (const auto& i : items) {
    auto text = scalar(i, "an address range like 10.0.0.0/8 or 2001:db8::/32");
    if (!text) {
      ok = false;
      continue;
    }
    if (auto c = parse_cidr(*text)) {
      out.push_back(*c);
    } else {
      error(i, item.name + ": '" + *text +
                   "' is not an address range (like 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32)");
      ok = false;
    }
  }
  if (ok && out.empty())
    error(item, item.name + ": expected at least one address range");
  return out;
}

// A header value for request_headers/response_headers: text with %{client_ip},
// %{request_id} and %{host}.
std::optional<HeaderValue> Loader::header_value(const Item& item) {
  auto text = scalar(item, "a header value");
  if (!text)
    return std::nullopt;
  HeaderValue v;
  v.text = *text;
  std::string_view rest = *text;
  for (unsigned char c : rest)
    if ((c < ' ' && c != '\t') || c == 0x7f) {
      error(item, item.name + ": a header value cannot hold control characters");
      return std::nullopt;
    }
  while (!rest.empty()) {
    size_t at = rest.find("%{");
    if (at != 0) {
      size_t n = std::min(at, rest.size());
      v.parts.push_back({HeaderValue::Part::text, std::string(rest.substr(0, n))});
      rest.remove_prefix(n);
      continue;
    }
    size_t close = rest.find('}');
    std::string_view var = rest.substr(2, close == std::string_view::npos ? 0 : close - 2);
    static constexpr std::string_view vars[] = {"client_ip", "request_id", "host"};
    if (close == std::string_view::npos || !contains({"client_ip", "request_id", "host"}, var)) {
      error(item, item.name + ": unknown variable '" +
                      std::string(rest.substr(0, close == std::string_view::npos ? rest.size()
                                                                                 : close + 1)) +
                      "' (known: %{client_ip}, %{request_id}, %{host})" + suggestion(var, vars));
      return std::nullopt;
    }
    v.parts.push_back({var == "client_ip"    ? HeaderValue::Part::client_ip
                       : var == "request_id" ? HeaderValue::Part::request_id
                                             : HeaderValue::Part::host,
                       ""});
    rest.remove_prefix(close + 1);
  }
  if (v.parts.size() > max_value_parts) {
    error(item, item.name + ": a value has at most " + std::to_string(max_value_parts) +
                    " parts (runs of text and variables)");
    return std::nullopt;
  }
  return v;
}

// Fields that frame the message or that lb sets itself (the `headers:` block
// governs X-Forwarded-* and Via): a header rule cannot touch them. Returns
// where to turn instead ("" when the field is free).
std::string reserved_field(std::string_view name) {
  static constexpr std::pair<std::string_view, std::string_view> reserved[] = {
      {"host", " (use rewrite: {host: ...})"},
      {"content-length", ""},
      {"transfer-encoding", ""},
      {"connection", ""},
      {"keep-alive", ""},
      {"upgrade", ""},
      {"te", ""},
      {"trailer", ""},
      {"proxy-connection", ""},
      {"x-forwarded-for", " (see the listener's headers: {forwarded_for: ...})"},
      {"x-forwarded-proto", ""},
      {"x-forwarded-host", ""},
      {"x-forwarded-client-cert", " (set from a verified client certificate: tls.client_ca)"},
      {"via", " (see the listener's headers: {via: off})"}};
  for (auto [r, hint] : reserved)
    if (r.size() == name.size() && std::equal(r.begin(), r.end(), name.begin(), [](char a, char b) {
          return a == std::tolower(static_cast<unsigned char>(b));
        }))
      return " is set by lb itself and cannot be changed here" + std::string(hint);
  return {};
}

// { set: {NAME: VALUE}, add: {NAME: VALUE}, remove: [NAME] }
void Loader::header_edits(const Item& item, HeaderEdits& edits) {
  auto items = fields(item, {"set", "add", "remove"});
  if (!items)
    return;
  auto check_name = [&](const YAML::Node& at, const std::string& name) {
    if (!is_token(name)) {
      error(at, item.name + ": '" + name + "' is not a valid header name");
      return false;
    }
    if (std::string why = reserved_field(name); !why.empty()) {
      error(at, item.name + ": " + name + why);
      return false;
    }
    return true;
  };
  for (const auto& f : *items) {
    if (f.name == "remove") {
      std::vector<Item> names;
      if (f.value.IsScalar())
        names.push_back(f);
      else if (auto list = list_items(f, "remove"))
        names = *list;
      for (const auto& n : names)
        if (auto text = scalar(n, "a header name"); text && check_name(n.value, *text))
          edits.remove.push_back(*text);
      continue;
    }
    auto& out = f.name == "set" ? edits.set : edits.add;
    for (const auto& h : map_items(f).value_or(std::vector<Item>{})) {
      if (!check_name(h.key, h.name))
        continue;
      if (edits.set.size() + edits.add.size() == max_header_edits) {
        error(h.key, item.name + ": at most " + std::to_string(max_header_edits) +
                         " fields set or added per route");
        break;
      }
      if (auto v = header_value(h)) {
        bool literal = std::all_of(v->parts.begin(), v->parts.end(), [](const auto& part) {
          return part.first == HeaderValue::Part::text;
        });
        if (literal)
          v->line = h.name + ": " + v->text + "\r\n";
        out.emplace_back(h.name, std::move(*v));
      }
    }
  }
}

// redirect: { scheme, host, port, path, prefix, query, code }
void Loader::redirect(const Item& item, Route& route) {
  auto items = fields(item, {"scheme", "host", "port", "path", "prefix", "query", "code"});
  if (!items)
    return;
  Redirect& r = route.redirect;
  for (const auto& f : *items) {
    if (f.name == "scheme") {
      auto text = scalar(f, "http or https");
      if (text && (*text == "http" || *text == "https"))
        r.scheme = *text;
      else if (text)
        error(f, "scheme: expected http or https, got '" + *text + "'");
    } else if (f.name == "host") {
      if (auto host = host_name(f, "host", "www.example.com"))
        r.host = *host;
    } else if (f.name == "port") {
      if (auto n = integer(f, 1, 65535))
        r.port = static_cast<uint16_t>(*n);
    } else if (f.name == "path" || f.name == "prefix") {
      auto text = scalar(f, "a path starting with '/'");
      if (!text)
        continue;
      if (!is_request_path(*text) || text->find('?') != std::string::npos) {
        error(f, f.name + ": expected a path starting with '/' (no spaces, no '?'), got '" + *text +
                     "'");
        continue;
      }
      (f.name == "path" ? r.has_path : r.has_prefix) = true;
      (f.name == "path" ? r.path : r.prefix) = *text;
    } else if (f.name == "query") {
      auto text = scalar(f, "a query string like a=b&c=d");
      if (!text)
        continue;
      bool printable = std::all_of(text->begin(), text->end(),
                                   [](unsigned char c) { return c > ' ' && c < 0x7f && c != '#'; });
      if (!printable || text->starts_with("?")) {
        error(f, "query: expected a query string like a=b&c=d (without '?'), got '" + *text + "'");
        continue;
      }
      r.has_query = true;
      r.query = *text;
    } else if (f.name == "code") {
      auto n = integer(f, 301, 308);
      if (n && (*n == 301 || *n == 302 || *n == 303 || *n == 307 || *n == 308))
        r.code = static_cast<int>(*n);
      else if (n)
        error(f, "code: expected 301, 302, 303, 307 or 308, got '" + f.value.Scalar() + "'");
    }
  }
  if (r.has_path && r.has_prefix)
    error(item, "redirect: has both 'path' and 'prefix': give one");
}

// respond: { status, body, content_type }
void Loader::respond(const Item& item, Route& route) {
  auto items = fields(item, {"status", "body", "content_type"});
  if (!items)
    return;
  bool has_status = false;
  for (const auto& f : *items) {
    if (f.name == "status") {
      has_status = true;
      if (auto n = integer(f, 200, 599)) {
        if (*n == 204 || *n == 205 || *n == 304)
          error(f, "status: " + std::to_string(*n) + " has no body: use another status");
        else
          route.respond.status = static_cast<int>(*n);
      }
    } else if (f.name == "body") {
      auto text = scalar(f, "a string");
      if (text && text->size() > max_fixed_body)
        error(f, "body: must be at most 4KiB, got " + std::to_string(text->size()) + " bytes");
      else if (text)
        route.respond.body = *text;
    } else if (f.name == "content_type") {
      auto text = scalar(f, "a media type like text/plain");
      bool ok = text && !text->empty() && text->size() <= max_name &&
                std::all_of(text->begin(), text->end(),
                            [](unsigned char c) { return c >= ' ' && c < 0x7f; });
      if (ok)
        route.respond.content_type = *text;
      else if (text)
        error(f, "content_type: expected a media type like text/plain, got '" + *text + "'");
    }
  }
  if (!has_status)
    error(item.key, "respond: missing required key 'status'");
}

// pools: [ {pool: NAME, weight: N}, ... ]
void Loader::split(const Item& item, Route& route) {
  auto list = list_items(item, "pool of the split");
  if (!list)
    return;
  if (list->empty()) {
    error(item, "pools: expected a list of {pool: NAME, weight: N}");
    return;
  }
  uint64_t total = 0;
  bool ok = true;
  for (const auto& entry : *list) {
    auto parts = fields(entry, {"pool", "weight"});
    if (!parts) {
      ok = false;
      continue;
    }
    WeightedPool wp;
    bool has_pool = false;
    for (const auto& p : *parts) {
      if (p.name == "pool") {
        auto text = scalar(p, "a pool name");
        if (!text) {
          ok = false;
          continue;
        }
        has_pool = true;
        wp.pool = *text;
        if (std::find(pool_names_.begin(), pool_names_.end(), *text) == pool_names_.end()) {
          error(p, "pool '" + *text + "' is not defined" + suggestion(*text, pool_names_));
          ok = false;
        }
      } else if (auto n = integer(p, 0, 1'000'000)) {
        wp.weight = static_cast<uint32_t>(*n);
      } else {
        ok = false;
      }
    }
    if (!has_pool) {
      error(entry.key, "missing required key 'pool'");
      ok = false;
    }
    total += wp.weight;
    route.pools.push_back(wp);
  }
  if (ok && total == 0)
    error(item, "pools: the weights sum to 0: no request could go anywhere");
}

void Loader::route(const Item& item, Route& route) {
  auto items = fields(item, {"name", "match", "pool", "pools", "split_key", "redirect", "respond",
                             "rewrite", "request_headers", "response_headers", "rate_limit"});
  if (!items)
    return;
  std::vector<const Item*> actions;
  const Item* split_key = nullptr;
  std::vector<const Item*> modifiers;
  const Item* rewrite = nullptr;
  for (const auto& f : *items) {
    if (f.name == "match") {
      route_match(f, route.match);
    } else if (f.name == "name") {
      if (auto n = name(f))
        route.name = *n;
    } else if (f.name == "rate_limit") {
      route.rate_limit.emplace();
      rate_limit(f, *route.rate_limit);
    } else if (f.name == "pool") {
      actions.push_back(&f);
      route.action = Route::Action::pool;
      auto text = scalar(f, "a pool name");
      if (!text)
        continue;
      route.pool = *text;
      if (std::find(pool_names_.begin(), pool_names_.end(), *text) == pool_names_.end())
        error(f, "pool '" + *text + "' is not defined" + suggestion(*text, pool_names_));
    } else if (f.name == "pools") {
      actions.push_back(&f);
      route.action = Route::Action::split;
      split(f, route);
    } else if (f.name == "redirect") {
      actions.push_back(&f);
      route.action = Route::Action::redirect;
      redirect(f, route);
    } else if (f.name == "respond") {
      actions.push_back(&f);
      route.action = Route::Action::respond;
      respond(f, route);
    } else if (f.name == "split_key") {
      split_key = &f;
      route.has_split_key = true;
      hash_key(f, route.split_key);
    } else if (f.name == "rewrite") {
      modifiers.push_back(&f);
      rewrite = &f;
      auto parts = fields(f, {"path_prefix", "host"});
      for (const auto& p : parts.value_or(std::vector<Item>{})) {
        auto text = scalar(p, p.name == "host" ? "a host name" : "a path starting with '/'");
        if (!text)
          continue;
        if (p.name == "host") {
          if (is_host_header(*text))
            route.rewrite_host = *text;
          else
            error(p, "host: expected a host name like internal.example.com, got '" + *text + "'");
        } else if (!is_request_path(*text) || text->find('?') != std::string::npos) {
          error(p, "path_prefix: expected a path starting with '/' (no spaces, no '?'), got '" +
                       *text + "'");
        } else {
          route.rewrite_prefix = *text;
          route.has_rewrite_prefix = true;
        }
      }
    } else {
      modifiers.push_back(&f);
      header_edits(f, f.name == "request_headers" ? route.request_headers : route.response_headers);
    }
  }
  if (actions.empty()) {
    error(item.key, "route has no action: give one of pool, pools, redirect or respond");
    return;
  }
  if (actions.size() > 1) {
    error(actions[1]->key, "route has two actions ('" + actions[0]->name + "' and '" +
                               actions[1]->name + "'): give exactly one");
    route.action = Route::Action::pool; // (reported: no further checks as a redirect)
    return;
  }
  bool forwarding = route.action == Route::Action::pool || route.action == Route::Action::split;
  if (split_key && route.action != Route::Action::split)
    error(split_key->key, "split_key applies to a split (pools: [...]) only");
  for (const Item* m : modifiers)
    if (!forwarding)
      error(m->key, m->name + " applies to routes that forward (pool or pools), not to " +
                        actions[0]->name);
  if (rewrite && route.has_rewrite_prefix && route.match.path_prefix.empty())
    error(rewrite->key, "rewrite: path_prefix replaces the matched path_prefix: the route needs "
                        "match: {path_prefix: ...}");
  if (route.action == Route::Action::redirect && route.redirect.has_prefix &&
      route.match.path_prefix.empty())
    error(actions[0]->key, "redirect: prefix replaces the matched path_prefix: the route needs "
                           "match: {path_prefix: ...}");
}

// rate_limit: { key: source_ip | header:NAME | cookie:NAME | route, rate: 100/s | 6000/min,
//               burst: N, scope: local | cluster, on_redis_error: local | open, max_keys: N }
void Loader::rate_limit(const Item& item, RateLimit& limit) {
  auto items = fields(item, {"key", "rate", "burst", "scope", "on_redis_error", "max_keys"});
  if (!items)
    return;
  bool has_rate = false;
  const Item* scope_item = nullptr;
  const Item* on_error_item = nullptr;
  for (const auto& f : *items) {
    if (f.name == "key") {
      if (f.value.IsScalar() && f.value.Scalar() == "route")
        limit.key = {HashKey::Kind::route, ""};
      else
        hash_key(f, limit.key, "source_ip, header:NAME, cookie:NAME or route");
    } else if (f.name == "rate") {
      auto text = scalar(f, "a rate like 100/s or 6000/min");
      if (!text)
        continue;
      has_rate = true;
      size_t slash = text->find('/');
      std::string count = text->substr(0, slash);
      std::string unit = slash == std::string::npos ? "" : text->substr(slash + 1);
      bool digits = !count.empty() && count.size() <= 7 &&
                    count.find_first_not_of("0123456789") == std::string::npos;
      uint64_t n = digits ? std::stoull(count) : 0;
      if (unit == "s" || unit == "sec" || unit == "second")
        limit.per = std::chrono::seconds(1);
      else if (unit == "m" || unit == "min" || unit == "minute")
        limit.per = std::chrono::minutes(1);
      else
        unit.clear();
      if (!digits || unit.empty() || n == 0 || n > 1000000)
        error(f, "rate: expected a rate like 100/s or 6000/min (1..1000000 per second or "
                 "minute), got '" +
                     *text + "'");
      else
        limit.rate = static_cast<uint32_t>(n);
    } else if (f.name == "burst") {
      if (auto n = integer(f, 0, 1000000))
        limit.burst = static_cast<uint32_t>(*n);
    } else if (f.name == "max_keys") {
      if (auto n = integer(f, 1, 16777216))
        limit.max_keys = static_cast<uint32_t>(*n);
    } else if (f.name == "scope") {
      auto text = scalar(f, "local or cluster");
      if (!text)
        continue;
      if (*text == "cluster") {
        limit.scope = RateLimit::Scope::cluster;
        scope_item = &f;
      } else if (*text == "local")
        limit.scope = RateLimit::Scope::local;
      else
        error(f, "scope: expected local or cluster, got '" + *text + "'");
    } else if (f.name == "on_redis_error") {
      if (auto e = on_redis_error(f)) {
        limit.on_redis_error = *e;
        on_error_item = &f;
      }
    }
  }
  if (on_error_item && limit.scope != RateLimit::Scope::cluster)
    error(*on_error_item,
          "on_redis_error: only with scope: cluster (a local limit never asks Redis)");
  if (scope_item)
    cluster_limits_.push_back({*scope_item, on_error_item != nullptr});
  if (!has_rate)
    error(item.key, "rate_limit: needs rate (like 100/s or 6000/min)");
}

void Loader::route_match(const Item& item, RouteMatch& match) {
  auto items = fields(item, {"host", "path", "path_prefix", "path_regex", "method", "header",
                             "query", "source", "client_cert"});
  if (!items)
    return;
  for (const auto& f : *items) {
    if (f.name == "host") {
      auto text = scalar(f, "a host name like api.example.com or *.example.com");
      if (!text)
        continue;
      std::string host = *text;
      std::transform(host.begin(), host.end(), host.begin(),
                     [](unsigned char c) { return char(std::tolower(c)); });
      if (is_host_pattern(host))
        match.host = host;
      else
        error(f, "host: expected a host name like api.example.com or *.example.com, got '" + *text +
                     "'");
    } else if (f.name == "path_prefix" || f.name == "path") {
      auto text = scalar(f, "a path starting with '/'");
      if (!text)
        continue;
      // (A path_prefix with a '?' is matched against the path and the query.)
      if (is_request_path(*text) &&
          (f.name == "path_prefix" || text->find('?') == std::string::npos))
        (f.name == "path" ? match.path : match.path_prefix) = *text;
      else
        error(f, f.name + ": expected a path starting with '/' (no spaces" +
                     (f.name == "path" ? ", no '?'" : "") + "), got '" + *text + "'");
    } else if (f.name == "path_regex") {
      auto text = scalar(f, "a regular expression (RE2)");
      if (!text)
        continue;
      RE2::Options options;
      options.set_log_errors(false);
      RE2 re(*text, options);
      if (text->empty())
        error(f, "path_regex: must not be empty");
      else if (!re.ok())
        error(f, "path_regex: '" + *text + "' is not a valid RE2 expression: " + re.error());
      else
        match.path_regex = *text;
    } else if (f.name == "method") {
      std::vector<Item> methods;
      if (f.value.IsScalar())
        methods.push_back(f);
      else if (auto list = list_items(f, "method"))
        methods = *list;
      for (const auto& m : methods) {
        auto text = scalar(m, "a method like GET");
        if (!text)
          continue;
        if (is_token(*text) && text->size() <= 32)
          match.methods.push_back(*text);
        else
          error(m, "method: '" + *text + "' is not a method name (like GET or POST)");
      }
      if (methods.empty())
        error(f, "method: expected a method or a list of methods");
    } else if (f.name == "header") {
      auto headers = map_items(f);
      for (const auto& h : headers.value_or(std::vector<Item>{})) {
        if (!is_token(h.name)) {
          error(h.key, "header: '" + h.name + "' is not a valid header name");
        } else if (auto value = scalar(h, "a header value or present")) {
          if (*value == "present")
            match.header_present.push_back(h.name);
          else
            match.headers.emplace_back(h.name, *value);
        }
      }
    } else if (f.name == "query") {
      auto params = map_items(f);
      for (const auto& q : params.value_or(std::vector<Item>{})) {
        if (auto value = scalar(q, "a parameter value"))
          match.query.emplace_back(q.name, *value);
      }
    } else if (f.name == "source") {
      if (auto list = cidr_list(f))
        match.source = *list;
    } else if (f.name == "client_cert") {
      if (auto on = boolean(f))
        match.client_cert = *on;
    }
  }
}

// A redirect that sends a request to where it already is: the client would follow it forever.
bool redirect_loops(const Route& route, bool tls) {
  const Redirect& r = route.redirect;
  // A 303 sends the client back with a GET: a route only for other methods
  // does not take it again.
  const auto& methods = route.match.methods;
  if (r.code == 303 && !methods.empty() &&
      std::find(methods.begin(), methods.end(), "GET") == methods.end())
    return false;
  std::string scheme = tls ? "https" : "http";
  bool same_scheme = r.scheme.empty() || r.scheme == scheme;
  bool same_host = r.host.empty() || (!route.match.host.empty() && r.host == route.match.host);
  bool same_port = r.port == 0 && same_scheme;
  bool same_path = (!r.has_path || (!route.match.path.empty() && r.path == route.match.path)) &&
                   (!r.has_prefix || r.prefix == route.match.path_prefix);
  return same_scheme && same_host && same_port && same_path && !r.has_query;
}

// ---- pools -----------------------------------------------------------------------------------

void Loader::pool(const Item& item, Pool& pool) {
  pool.name = item.name;
  if (!is_name(item.name))
    error(item.key, "pool name '" + item.name +
                        "' is not valid (use up to 128 letters, digits, '-', '_' and '.')");
  auto items = fields(item, {"balance",
                             "hash_key",
                             "sticky_cookie",
                             "slow_start",
                             "timeouts",
                             "retries",
                             "max_connections_per_backend",
                             "queue_timeout",
                             "maintenance",
                             "fail_open",
                             "health_check",
                             "outlier_detection",
                             "overprovisioning",
                             "backends",
                             "regions",
                             "tls",
                             "retry_on",
                             "retry_budget",
                             "per_try_timeout",
                             "protocol"});
  if (!items)
    return;
  const Item* protocol_item = nullptr;
  const Item* backend_list = nullptr;
  const Item* region_list = nullptr;
  bool balance_refused = false;
  const Item* hash_key_item = nullptr;
  const Item* queue_timeout_item = nullptr;
  const Item* per_try_item = nullptr;
  bool has_max_connections = false;
  for (const auto& f : *items) {
    if (f.name == "balance") {
      size_t before = errors_.size();
      balance(f, pool);
      balance_refused = errors_.size() != before;
    } else if (f.name == "hash_key") {
      hash_key_item = &f;
      hash_key(f, pool.hash_key);
    } else if (f.name == "sticky_cookie") {
      sticky_cookie(f, pool.sticky_cookie);
    } else if (f.name == "slow_start") {
      if (auto d = duration(f, false))
        pool.slow_start = *d;
    } else if (f.name == "timeouts") {
      pool_timeouts(f, pool.timeouts);
    } else if (f.name == "tls") {
      pool_tls(f, pool.tls);
    } else if (f.name == "protocol") {
      protocol_item = &f;
      auto text = scalar(f, "http1, h2 or h2c");
      if (!text)
        continue;
      if (*text == "http1")
        pool.protocol = Protocol::http1;
      else if (*text == "h2")
        pool.protocol = Protocol::h2;
      else if (*text == "h2c")
        pool.protocol = Protocol::h2c;
      else
        error(f, "protocol: expected http1, h2 or h2c, got '" + *text + "'");
    } else if (f.name == "retries") {
      if (auto n = integer(f, 0, 10))
        pool.retries = uint32_t(*n);
    } else if (f.name == "retry_on") {
      retry_on(f, pool);
    } else if (f.name == "retry_budget") {
      retry_budget(f, pool);
    } else if (f.name == "per_try_timeout") {
      per_try_item = &f;
      if (auto d = duration(f, true))
        pool.per_try_timeout = *d;
    } else if (f.name == "max_connections_per_backend") {
      has_max_connections = true;
      if (auto n = integer(f, 1, 10'000'000))
        pool.max_connections_per_backend = uint32_t(*n);
    } else if (f.name == "queue_timeout") {
      queue_timeout_item = &f;
      if (auto d = duration(f, false))
        pool.queue_timeout = *d;
    } else if (f.name == "maintenance") {
      if (auto on = boolean(f))
        pool.maintenance = *on;
    } else if (f.name == "overprovisioning") {
      if (auto x = number(f, 1.0, 10.0))
        pool.overprovisioning = *x;
    } else if (f.name == "fail_open") {
      if (auto on = boolean(f))
        pool.fail_open = *on;
    } else if (f.name == "health_check") {
      health_check(f, pool.health_check);
    } else if (f.name == "outlier_detection") {
      outlier_detection(f, pool.outlier_detection);
    } else if (f.name == "backends") {
      backend_list = &f;
    } else if (f.name == "regions") {
      region_list = &f;
    }
  }
  // A balance that was refused has been reported already: no second error about it.
  if (hash_key_item && !balance_refused && !hashing(pool.balance))
    error(hash_key_item->key, "hash_key applies to balance ring_hash or maglev only");
  if (queue_timeout_item && !has_max_connections)
    error(queue_timeout_item->key, "queue_timeout needs max_connections_per_backend");
  if (pool.protocol == Protocol::h2 && !pool.tls.enabled)
    error(protocol_item->key, "protocol: h2 needs the pool's tls (ALPN h2); HTTP/2 without TLS "
                              "is h2c");
  if (pool.protocol == Protocol::h2c && pool.tls.enabled)
    error(protocol_item->key, "protocol: h2c is HTTP/2 without TLS; with the pool's tls use h2");
  pool.tls.http2 = pool.protocol == Protocol::h2;
  if (pool.health_check.enabled && pool.health_check.type == HealthCheck::Type::grpc &&
      pool.protocol == Protocol::http1)
    error(item.key, "pool '" + pool.name +
                        "': health_check type grpc needs protocol h2 or h2c (gRPC is HTTP/2)");
  if (per_try_item && pool.per_try_timeout > pool.timeouts.response)
    error(*per_try_item, "per_try_timeout: " + format_duration(pool.per_try_timeout) +
                             " is longer than timeouts.response (" +
                             format_duration(pool.timeouts.response) +
                             "), which bounds every attempt together");

  std::set<std::string> addresses; // to find a backend listed twice
  if (backend_list && region_list) {
    error(region_list->key, "a pool has either 'backends' or 'regions', not both");
  } else if (backend_list) {
    Region shorthand;
    shorthand.name = "default";
    pool.regions.push_back(shorthand);
    backends(*backend_list, pool.regions.back(), pool, addresses,
             "pool '" + pool.name + "' has no backends");
  } else if (region_list) {
    auto regions = list_items(*region_list, "region");
    if (regions && regions->empty())
      error(*region_list, "pool '" + pool.name + "' has no backends");
    for (const auto& r : regions.value_or(std::vector<Item>{})) {
      pool.regions.push_back({});
      region(r, pool.regions.back(), pool, addresses);
    }
  } else {
    error(item.key, "pool '" + pool.name + "' has no backends");
  }
}

// retry_on: [connect_failure, reset, 502, 503, 504]
void Loader::retry_on(const Item& item, Pool& pool) {
  static constexpr std::string_view known[] = {"connect_failure", "reset", "502", "503", "504"};
  std::vector<Item> items;
  if (item.value.IsScalar())
    items.push_back(item);
  else if (auto list = list_items(item, "retry_on"))
    items = *list;
  else
    return;
  pool.retry_connect_failure = pool.retry_reset = false;
  pool.retry_statuses.clear();
  for (const auto& i : items) {
    auto text = scalar(i, "connect_failure, reset, 502, 503 or 504");
    if (!text)
      continue;
    if (*text == "connect_failure")
      pool.retry_connect_failure = true;
    else if (*text == "reset")
      pool.retry_reset = true;
    else if (*text == "502" || *text == "503" || *text == "504")
      pool.retry_statuses.push_back(std::stoi(*text));
    else
      error(i, "retry_on: expected connect_failure, reset, 502, 503 or 504, got '" + *text + "'" +
                   suggestion(*text, known));
  }
}

// retry_budget: { ratio: 0.2, min_per_second: 3 }
void Loader::retry_budget(const Item& item, Pool& pool) {
  auto items = fields(item, {"ratio", "min_per_second"});
  if (!items)
    return;
  pool.has_retry_budget = true;
  pool.retry_budget_ratio = 0.2;
  pool.retry_budget_min = 3;
  for (const auto& f : *items) {
    if (f.name == "ratio") {
      if (auto x = number(f, 0.0, 1.0))
        pool.retry_budget_ratio = *x;
    } else if (auto n = integer(f, 0, 1'000'000)) {
      pool.retry_budget_min = static_cast<uint32_t>(*n);
    }
  }
}

void Loader::balance(const Item& item, Pool& pool) {
  static constexpr std::string_view expected =
      "round_robin, least_conn, random_two, ring_hash or maglev";
  auto text = scalar(item, expected);
  if (!text)
    return;
  for (size_t i = 0; i < std::size(balance_names); ++i)
    if (*text == balance_names[i]) {
      pool.balance = static_cast<Balance>(i);
      return;
    }
  error(item, "balance: expected " + std::string(expected) + ", got '" + *text + "'" +
                  suggestion(*text, balance_names));
}

// source_ip, header:NAME or cookie:NAME.
void Loader::hash_key(const Item& item, HashKey& key, std::string_view expected) {
  auto text = scalar(item, expected);
  if (!text)
    return;
  std::string_view value = *text;
  if (value == "source_ip") {
    key = {HashKey::Kind::source_ip, ""};
  } else if (value.starts_with("header:")) {
    std::string_view header = value.substr(7);
    if (is_token(header))
      key = {HashKey::Kind::header, std::string(header)};
    else
      error(item, item.name + ": '" + std::string(header) + "' is not a valid header name");
  } else if (value.starts_with("cookie:")) {
    std::string_view cookie = value.substr(7);
    if (is_token(cookie))
      key = {HashKey::Kind::cookie, std::string(cookie)};
    else
      error(item, item.name + ": '" + std::string(cookie) + "' is not a valid cookie name");
  } else {
    error(item, item.name + ": expected " + std::string(expected) + ", got '" + *text + "'");
  }
}

// off (or false) or a cookie name: an RFC 6265 cookie-name, which is an RFC 9110 token.
void Loader::sticky_cookie(const Item& item, std::string& cookie) {
  static constexpr std::string_view expected = "off or a cookie name like lb_sticky";
  auto text = scalar(item, expected);
  if (!text)
    return;
  if (*text == "off" || *text == "false")
    cookie.clear();
  else if (*text == "on" || *text == "true") // a valid token, but surely not meant as a name
    error(item, "sticky_cookie: expected " + std::string(expected) + ", got '" + *text + "'");
  else if (is_token(*text))
    cookie = *text;
  else
    error(item, "sticky_cookie: '" + *text + "' is not a valid cookie name");
}

void Loader::pool_timeouts(const Item& item, PoolTimeouts& timeouts) {
  auto items = fields(item, {"connect", "response", "idle"});
  if (!items)
    return;
  for (const auto& f : *items) {
    auto d = duration(f, true);
    if (!d)
      continue;
    if (f.name == "connect")
      timeouts.connect = *d;
    else if (f.name == "response")
      timeouts.response = *d;
    else
      timeouts.idle = *d;
  }
}

// The presence of the map turns the check on: `health_check: { type: tcp }` is a whole check.
void Loader::health_check(const Item& item, HealthCheck& check) {
  check.enabled = true;
  auto items = fields(item, {"type", "path", "host", "interval", "timeout", "healthy_threshold",
                             "unhealthy_threshold", "expect_status", "service"});
  if (!items)
    return;
  const Item* timeout_item = nullptr;
  std::vector<const Item*> http_only;
  const Item* service_item = nullptr;
  for (const auto& f : *items) {
    if (f.name == "type") {
      auto text = scalar(f, "http, tcp or grpc");
      if (!text)
        continue;
      if (*text == "http")
        check.type = HealthCheck::Type::http;
      else if (*text == "tcp")
        check.type = HealthCheck::Type::tcp;
      else if (*text == "grpc")
        check.type = HealthCheck::Type::grpc;
      else
        error(f, "type: expected http, tcp or grpc, got '" + *text + "'");
    } else if (f.name == "service") {
      service_item = &f;
      auto text = scalar(f, "a gRPC service name like pkg.Service, or \"\"");
      if (!text)
        continue;
      bool ok = text->size() <= 200;
      for (char c : *text)
        ok &= std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
              c == '/';
      if (ok)
        check.service = *text;
      else
        error(f, "service: expected a gRPC service name like pkg.Service, got '" + *text + "'");
    } else if (f.name == "path") {
      http_only.push_back(&f);
      auto text = scalar(f, "a path starting with '/'");
      if (!text)
        continue;
      if (is_request_path(*text))
        check.path = *text;
      else
        error(f, "path: expected a path starting with '/', got '" + *text + "'");
    } else if (f.name == "host") {
      http_only.push_back(&f);
      auto text = scalar(f, "a host name like app.internal");
      if (!text)
        continue;
      if (is_host_header(*text))
        check.host = *text;
      else
        error(f, "host: expected a host name like app.internal, got '" + *text + "'");
    } else if (f.name == "interval") {
      if (auto d = duration(f, true))
        check.interval = *d;
    } else if (f.name == "timeout") {
      if (auto d = duration(f, true)) {
        check.timeout = *d;
        timeout_item = &f;
      }
    } else if (f.name == "healthy_threshold") {
      if (auto n = integer(f, 1, 100))
        check.healthy_threshold = uint32_t(*n);
    } else if (f.name == "unhealthy_threshold") {
      if (auto n = integer(f, 1, 100))
        check.unhealthy_threshold = uint32_t(*n);
    } else if (f.name == "expect_status") {
      http_only.push_back(&f);
      std::vector<std::pair<int, int>> ranges;
      if (expect_status(f, ranges))
        check.expect_status = std::move(ranges);
    }
  }
  if (check.type == HealthCheck::Type::tcp)
    for (const Item* f : http_only)
      error(f->key, f->name + ": applies to type http only (a tcp check only connects)");
  if (check.type == HealthCheck::Type::grpc)
    for (const Item* f : http_only)
      error(f->key, f->name + ": applies to type http only (a grpc check asks for `service`)");
  if (service_item && check.type != HealthCheck::Type::grpc)
    error(service_item->key, "service: applies to type grpc only");
  // A check must end before the next one is due. Without an explicit timeout, a short
  // interval shortens the default timeout rather than making the config invalid.
  if (!timeout_item)
    check.timeout = std::min(check.timeout, check.interval);
  else if (check.timeout > check.interval)
    error(*timeout_item, "timeout: must not be more than interval (" +
                             format_duration(check.interval) + "), got '" +
                             timeout_item->value.Scalar() + "'");
}

// A scalar ("200-399", or a YAML integer) or a list of them. Returns false after an error.
bool Loader::expect_status(const Item& item, std::vector<std::pair<int, int>>& ranges) {
  std::vector<Item> parts;
  if (item.value.IsSequence()) {
    auto list = list_items(item, "expect_status");
    if (!list)
      return false;
    if (list->empty()) {
      error(item, "expect_status: at least one status code is required");
      return false;
    }
    parts = std::move(*list);
  } else {
    parts.push_back(item);
  }
  bool ok = true;
  for (const auto& part : parts) {
    auto text = scalar(part, "status codes like 200, 200-399 or 200,204,300-399");
    if (!text) {
      ok = false;
      continue;
    }
    std::string problem = parse_status_ranges(*text, ranges);
    if (!problem.empty()) {
      error(part, "expect_status: " + problem + ", got '" + *text + "'");
      ok = false;
    }
  }
  return ok;
}

void Loader::outlier_detection(const Item& item, OutlierDetection& detection) {
  detection.enabled = true;
  auto items = fields(item, {"consecutive_failures", "ejection_time"});
  if (!items)
    return;
  for (const auto& f : *items) {
    if (f.name == "consecutive_failures") {
      if (auto n = integer(f, 1, 1000))
        detection.consecutive_failures = uint32_t(*n);
    } else if (f.name == "ejection_time") {
      if (auto d = duration(f, true))
        detection.ejection_time = *d;
    }
  }
}

void Loader::region(const Item& item, Region& region, const Pool& pool,
                    std::set<std::string>& addresses) {
  auto items = fields(item, {"name", "priority", "weight", "backends"});
  if (!items)
    return;
  bool has_name = false;
  bool has_backends = false;
  auto no_backends = [&] {
    return region.name.empty() ? std::string("region has no backends")
                               : "region '" + region.name + "' has no backends";
  };
  for (const auto& f : *items) {
    if (f.name == "name") {
      has_name = true;
      auto n = name(f);
      if (!n)
        continue;
      region.name = *n;
      bool taken = std::any_of(pool.regions.begin(), pool.regions.end() - 1,
                               [&](const Region& other) { return other.name == *n; });
      if (taken)
        error(f, "duplicate region name '" + *n + "' in pool '" + pool.name + "'");
    } else if (f.name == "priority") {
      if (auto n = integer(f, 0, 1000))
        region.priority = uint32_t(*n);
    } else if (f.name == "weight") {
      if (auto n = integer(f, 1, 10000))
        region.weight = uint32_t(*n);
    } else if (f.name == "backends") {
      has_backends = true;
      backends(f, region, pool, addresses, no_backends());
    }
  }
  if (!has_name)
    error(item.key, "missing required key 'name'");
  if (!has_backends)
    error(item.key, no_backends());
}

void Loader::backends(const Item& item, Region& region, const Pool& pool,
                      std::set<std::string>& addresses, const std::string& if_empty) {
  auto list = list_items(item, "backend");
  if (!list)
    return;
  if (list->empty())
    error(item, if_empty);
  for (const auto& b : *list)
    backend(b, region, pool, addresses);
}

void Loader::backend(const Item& item, Region& region, const Pool& pool,
                     std::set<std::string>& addresses) {
  Backend backend;
  std::optional<Item> address_item;
  const Item* kind_item = nullptr;
  if (item.value.IsScalar()) { // shorthand: "10.0.0.1:8080"
    address_item = item;
  } else {
    if (!item.value.IsMap()) {
      error(item, "backend: expected an address like 10.0.0.1:8080 or a map with 'address', "
                  "'dns' or 'srv', got " +
                      describe(item.value));
      return;
    }
    auto items = fields(item, {"address", "dns", "srv", "weight"});
    if (!items)
      return;
    const Item* weight_item = nullptr;
    int kinds = 0;
    for (const auto& f : *items) {
      if (f.name == "address" || f.name == "dns" || f.name == "srv") {
        if (++kinds > 1) {
          error(f.key, f.name + ": a backend is one of 'address', 'dns' or 'srv'");
          continue;
        }
        kind_item = &f;
      } else if (f.name == "weight") {
        weight_item = &f;
        if (auto n = integer(f, 1, 1000))
          backend.weight = uint32_t(*n);
      }
    }
    if (kinds == 0) {
      error(item.key, "missing required key 'address' (or 'dns' or 'srv')");
      return;
    }
    if (kinds > 1 || !kind_item)
      return;
    if (kind_item->name == "address") {
      address_item = *kind_item;
    } else if (kind_item->name == "dns") {
      backend.kind = Backend::Kind::dns;
      auto text = scalar(*kind_item, "a host name and port like app.internal:8080");
      if (!text)
        return;
      size_t colon = text->rfind(':');
      uint64_t port = 0;
      std::string_view port_text = colon == std::string::npos
                                       ? std::string_view()
                                       : std::string_view(*text).substr(colon + 1);
      bool port_ok = !port_text.empty() && port_text.size() <= 5 &&
                     port_text.find_first_not_of("0123456789") == std::string_view::npos;
      if (port_ok)
        port = std::stoull(std::string(port_text));
      if (!port_ok || port == 0 || port > 65535) {
        error(*kind_item,
              "dns: expected a host name and port like app.internal:8080, got '" + *text + "'");
        return;
      }
      auto name = dns_name(*kind_item, std::string_view(*text).substr(0, colon));
      if (!name)
        return;
      backend.name = *name;
      backend.address.host = *name;
      backend.address.port = static_cast<uint16_t>(port);
    } else {
      backend.kind = Backend::Kind::srv;
      if (weight_item)
        error(weight_item->key, "weight: an srv backend takes its weights from the SRV records");
      auto text = scalar(*kind_item, "an SRV name like _http._tcp.app.internal");
      if (!text)
        return;
      auto name = dns_name(*kind_item, *text);
      if (!name)
        return;
      backend.name = *name;
    }
    if (backend.kind != Backend::Kind::address) {
      if (!addresses.insert(backend.discovery_key()).second)
        error(*kind_item,
              "duplicate backend " + backend.discovery_key() + " in pool '" + pool.name + "'");
      region.backends.push_back(backend);
      return;
    }
  }
  if (!address_item)
    return;
  auto a = address(*address_item, false);
  if (!a)
    return;
  backend.address = *a;
  if (!addresses.insert(a->text()).second)
    error(*address_item, "duplicate backend " + a->text() + " in pool '" + pool.name + "'");
  region.backends.push_back(backend);
}

} // namespace

LoadResult load_string(const std::string& text, const std::string& name) {
  return Loader(name).load(text);
}

LoadResult load_file(const std::string& path) {
  // A config is small; the cap keeps `lb check -c /dev/zero` from eating the memory.
  constexpr size_t max_bytes = 16 << 20;
  std::string text;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  bool ok = fd >= 0;
  while (ok) {
    if (text.size() > max_bytes) {
      ok = false;
      errno = EFBIG;
      break;
    }
    char buffer[16384];
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      ok = n == 0;
      break;
    }
    text.append(buffer, size_t(n));
  }
  if (!ok) {
    int saved = errno;
    if (fd >= 0)
      ::close(fd);
    LoadResult result;
    result.errors.push_back(path + ": cannot read: " + std::strerror(saved));
    return result;
  }
  ::close(fd);
  return Loader(path).load(text);
}

} // namespace lb::config
