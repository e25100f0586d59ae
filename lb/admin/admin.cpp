#include "lb/admin/admin.hpp"

#include "lb/admin/status.hpp"
#include "lb/admin/status_page_html.hpp"
#include "lb/http/parser.hpp"
#include "lb/io/log.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <boost/asio/steady_timer.hpp>

#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>
#include <optional>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <memory>
#include <string_view>
#include <vector>

namespace lb::admin {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr size_t max_head_bytes = 16 * 1024;
constexpr size_t max_body_bytes = 1024;
constexpr auto request_timeout = std::chrono::seconds(10);
constexpr uint32_t max_weight = 1000;

const char* reason(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 411:
    return "Length Required";
  case 421:
    return "Misdirected Request";
  case 413:
    return "Content Too Large";
  case 431:
    return "Request Header Fields Too Large";
  case 501:
    return "Not Implemented";
  case 503:
    return "Service Unavailable";
  default:
    return "Error";
  }
}

Response text(int status, std::string body) {
  return {status, "text/plain; charset=utf-8", std::move(body) + "\n", {}};
}

Response json_response(int status, const nlohmann::ordered_json& doc) {
  return {status,
          "application/json",
          doc.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n",
          {}};
}

Response method_not_allowed(const char* allow) {
  return {405, "text/plain; charset=utf-8", std::string("method not allowed: use ") + allow + "\n",
          allow};
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

// "/pools/web/backends/%5B%3A%3A1%5D%3A80/drain" -> {"pools", "web", "backends", "[::1]:80",
// "drain"}: split at '/', then each segment percent-decoded. False on a bad escape.
bool split_path(std::string_view path, std::vector<std::string>& segments) {
  if (path.empty() || path.front() != '/')
    return false;
  path.remove_prefix(1);
  for (;;) {
    size_t slash = path.find('/');
    std::string_view raw = path.substr(0, slash);
    std::string& out = segments.emplace_back();
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] != '%') {
        out += raw[i];
        continue;
      }
      int hi = i + 2 < raw.size() ? hex_digit(raw[i + 1]) : -1;
      int lo = i + 2 < raw.size() ? hex_digit(raw[i + 2]) : -1;
      if (hi < 0 || lo < 0)
        return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (slash == std::string_view::npos)
      return true;
    path.remove_prefix(slash + 1);
  }
}

// The backend of `pool` that `address` names: its label ("10.0.0.1:80", "[::1]:80"), or
// any spelling of the same address and port ("[0:0::1]:80"). -1 when none.
int find_backend(const upstream::Pool& pool, const std::string& address) {
  int b = pool.find(address);
  if (b >= 0)
    return b;
  size_t colon = address.rfind(':');
  if (colon == std::string::npos)
    return -1;
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  auto [end, ec] =
      std::from_chars(address.data() + colon + 1, address.data() + address.size(), port);
  if (ec != std::errc() || end != address.data() + address.size() || port > 65535)
    return -1;
  error_code bad;
  auto ip = asio::ip::make_address(host, bad);
  if (bad)
    return -1;
  asio::ip::tcp::endpoint endpoint(ip, static_cast<uint16_t>(port));
  for (size_t i = 0; i < pool.backends().size(); ++i)
    if (pool.backends()[i].endpoint == endpoint)
      return static_cast<int>(i);
  return -1;
}

// One admin connection: read one request (head up to 16 KiB, body up to 1 KiB with
// Content-Length), answer, close. Admin traffic is rare and small: this favours
// clarity over speed. Lives while a handler holds it.
class AdminConnection : public std::enable_shared_from_this<AdminConnection> {
public:
  AdminConnection(asio::ip::tcp::socket socket, AdminServer& server)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), server_(server),
        parser_(http::Parser::Kind::request), buffer_(max_head_bytes + max_body_bytes) {}

  void start() {
    timer_.expires_after(request_timeout);
    timer_.async_wait([self = shared_from_this()](const error_code& ec) {
      if (ec)
        return;
      if (!self->answered_)
        return self->answer(text(408, "request not received in time"));
      error_code ignored;
      self->socket_.close(ignored);
    });
    do_read();
  }

private:
  void do_read() {
    socket_.async_read_some(
        asio::buffer(buffer_.data() + used_, buffer_.size() - used_),
        [self = shared_from_this()](const error_code& ec, size_t n) { self->on_read(ec, n); });
  }

  void on_read(const error_code& ec, size_t n) {
    if (answered_)
      return; // the 408 is on its way; its write closes
    if (ec)
      return close();
    const char* p = buffer_.data() + used_;
    used_ += n;
    if (!body_start_) {
      auto result = parser_.feed(p, buffer_.data() + used_);
      if (result.event == http::Parser::Event::error)
        return answer(
            text(400, std::string("bad request: ") +
                          (parser_.error_reason() ? parser_.error_reason() : "malformed")));
      if (result.event == http::Parser::Event::need_more) {
        if (used_ > max_head_bytes)
          return answer(text(431, "request head larger than 16 KiB"));
        return do_read();
      }
      body_start_ = static_cast<size_t>(result.stop - buffer_.data());
      const http::Head& head = parser_.head();
      if (body_start_ > max_head_bytes)
        return answer(text(431, "request head larger than 16 KiB"));
      if (head.chunked)
        return answer(text(411, "send the body with Content-Length"));
      if (head.content_length > max_body_bytes)
        return answer(text(413, "request body larger than 1 KiB"));
      request_.method = std::string(head.method.view());
      request_.target = std::string(head.target.view());
      for (unsigned i = 0; i < head.count; ++i) {
        std::string_view name = head.headers[i].name.view();
        if (http::iequals(name, "host"))
          request_.host = std::string(head.headers[i].value.view());
        if (http::iequals(name, "origin"))
          request_.origin = std::string(head.headers[i].value.view());
        if (http::iequals(name, "authorization"))
          request_.authorization = std::string(head.headers[i].value.view());
      }
      body_end_ = body_start_ + head.content_length;
    }
    if (used_ < body_end_)
      return do_read();
    request_.body.assign(buffer_.data() + body_start_, body_end_ - body_start_);
    bool head_only = request_.method == "HEAD";
    if (head_only)
      request_.method = "GET";
    Response r = server_.handle(request_);
    answer(std::move(r), head_only);
  }

  void answer(Response r, bool head_only = false) {
    answered_ = true;
    out_ = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) +
           "\r\nContent-Type: " + r.content_type +
           "\r\nContent-Length: " + std::to_string(r.body.size()) +
           "\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff" +
           (r.allow.empty() ? "" : "\r\nAllow: " + r.allow) +
           (r.challenge ? "\r\nWWW-Authenticate: Bearer realm=\"lb admin\"\r\n"
                          "WWW-Authenticate: Basic realm=\"lb admin\", charset=\"UTF-8\""
                        : "") +
           "\r\nConnection: close\r\n\r\n";
    if (!head_only)
      out_ += r.body;
    asio::async_write(socket_, asio::buffer(out_),
                      [self = shared_from_this()](const error_code&, size_t) { self->close(); });
  }

  void close() {
    error_code ignored;
    timer_.cancel();
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
    socket_.close(ignored);
  }

  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;
  AdminServer& server_;
  http::Parser parser_;
  std::vector<char> buffer_;
  size_t used_ = 0;
  size_t body_start_ = 0; // 0 while the head is incomplete
  size_t body_end_ = 0;
  bool answered_ = false;
  Request request_;
  std::string out_;
};

} // namespace

AdminServer::AdminServer(asio::io_context& io, const config::Admin& config, server::Server& server)
    : io_(io), config_(config), server_(server), metrics_(server), acceptor_(io) {}

bool AdminServer::bind(std::string& error) {
  asio::ip::tcp::endpoint endpoint(asio::ip::make_address(config_.listen.host),
                                   config_.listen.port);
  error_code ec;
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec)
    acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec)
    acceptor_.bind(endpoint, ec);
  if (!ec)
    acceptor_.listen(64, ec);
  if (ec) {
    error = ec.message();
    return false;
  }
  auto bound = acceptor_.local_endpoint(ec);
  config::Address shown = config_.listen;
  shown.port = bound.port();
  io::log("admin listening on %s", shown.text().c_str());
  return true;
}

void AdminServer::start() { do_accept(); }

void AdminServer::close() {
  error_code ec;
  acceptor_.close(ec);
}

void AdminServer::do_accept() {
  acceptor_.async_accept([this](const error_code& ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open())
      return;
    if (!ec) {
      std::make_shared<AdminConnection>(std::move(socket), *this)->start();
      return do_accept();
    }
    // Out of descriptors or similar: try again shortly rather than spin.
    auto retry = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(100));
    retry->async_wait([this, retry](const error_code& e) {
      if (!e && acceptor_.is_open())
        do_accept();
    });
  });
}

namespace {

// Whether a Host value names this listener the way only its operator would:
// an IP literal, localhost, or a name the config allows. A name a web page
// rebinds to 127.0.0.1 (DNS rebinding) is none of these.
bool host_allowed(std::string_view host, const config::Admin& admin) {
  if (host.empty())
    return true; // (HTTP/1.0: no Host, and no browser behind it)
  if (host.front() == '[') {
    size_t close = host.find(']');
    if (close == std::string_view::npos)
      return false;
    error_code bad;
    asio::ip::make_address_v6(std::string(host.substr(1, close - 1)), bad);
    return !bad;
  }
  std::string name(host.substr(0, host.rfind(':')));
  for (char& c : name)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (name == "localhost")
    return true;
  error_code bad;
  asio::ip::make_address_v4(name, bad);
  if (!bad)
    return true;
  return std::find(admin.allowed_hosts.begin(), admin.allowed_hosts.end(), name) !=
         admin.allowed_hosts.end();
}

bool same_secret(std::string_view a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// "Bearer TOKEN", or "Basic base64(user:TOKEN)" (any user name: a browser asks for both).
bool authorized(std::string_view header, const std::string& token) {
  size_t space = header.find(' ');
  if (space == std::string_view::npos)
    return false;
  std::string_view scheme = header.substr(0, space);
  std::string_view value = header.substr(space + 1);
  while (!value.empty() && value.front() == ' ')
    value.remove_prefix(1);
  if (http::iequals(scheme, "bearer"))
    return same_secret(value, token);
  if (!http::iequals(scheme, "basic") || value.empty() || value.size() > 2048 ||
      value.size() % 4 != 0)
    return false;
  std::string decoded(value.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(decoded.data()),
                          reinterpret_cast<const unsigned char*>(value.data()),
                          static_cast<int>(value.size()));
  if (n < 0)
    return false;
  decoded.resize(static_cast<size_t>(n));
  // (EVP_DecodeBlock keeps the padding's zero bytes.)
  size_t pad = value.size() - value.find_last_not_of('=') - 1;
  decoded.resize(decoded.size() - std::min(pad, decoded.size()));
  size_t colon = decoded.find(':');
  return colon != std::string::npos &&
         same_secret(std::string_view(decoded).substr(colon + 1), token);
}

} // namespace

Response AdminServer::handle(const Request& request) {
  // The newest config's admin settings (a reload may change the token).
  std::shared_ptr<const proxy::Runtime> runtime = server_.runtime();
  const config::Admin& admin = runtime ? runtime->config->admin : config_;
  if (!host_allowed(request.host, admin))
    return text(421, "this admin listener does not answer to the host '" + request.host +
                         "': use its IP address, localhost, or a name in admin.allowed_hosts");
  std::string_view target = request.target;
  std::string_view path = target.substr(0, target.find('?'));
  if (!admin.token.empty() && path != "/healthz" &&
      !authorized(request.authorization, admin.token)) {
    Response r = text(401, "authentication required: send Authorization: Bearer TOKEN (the "
                           "content of admin.token_file), or log in with it as the password");
    r.challenge = true;
    return r;
  }
  std::vector<std::string> segments;
  if (!split_path(path, segments))
    return text(400, "bad request target: " + std::string(target));
  const bool get = request.method == "GET";
  // A web page elsewhere must not drive the admin API through an operator's browser
  // (a cross-site form POST needs no preflight): actions from a browser must come
  // from this origin, i.e. the status page. Clients that send no Origin (curl,
  // scripts) are not affected.
  if (!get && !request.origin.empty() && request.origin != "http://" + request.host &&
      request.origin != "https://" + request.host)
    return text(403, "cross-origin request refused (Origin " + request.origin + ")");

  if (path == "/" || path == "/index.html") {
    if (!get)
      return method_not_allowed("GET, HEAD");
    return {200, "text/html; charset=utf-8", status_page_html, {}};
  }
  if (path == "/metrics") {
    if (!get)
      return method_not_allowed("GET, HEAD");
    return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_.text(), {}};
  }
  if (path == "/status") {
    if (!get)
      return method_not_allowed("GET, HEAD");
    double uptime =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    std::optional<ClusterLink> link;
    if (cluster_status_)
      link = cluster_status_();
    return {200,
            "application/json",
            status_json(server_, uptime, shutting_down_, link ? &*link : nullptr),
            {}};
  }
  if (path == "/healthz") {
    if (!get)
      return method_not_allowed("GET, HEAD");
    if (shutting_down_)
      return text(503, "shutting down");
    return text(200, "ok");
  }
  if (path == "/reload") {
    if (request.method != "POST")
      return method_not_allowed("POST");
    if (!reload_)
      return text(501, "reload is not supported yet");
    // Draining workers would not adopt new listeners' sockets: nothing changes now.
    if (shutting_down_)
      return text(503, "shutting down: reload refused");
    ReloadResult result = reload_();
    return text(result.ok ? 200 : 400, result.message);
  }
  if (segments.size() == 5 && segments[0] == "pools" && segments[2] == "backends")
    return backend_action(request, segments[1], segments[3], segments[4]);
  return text(404, "no such admin endpoint: " + std::string(path) +
                       " (try /, /status, /metrics, /healthz, "
                       "/pools/{pool}/backends/{host:port}/drain|enable|weight, /reload)");
}

Response AdminServer::backend_action(const Request& request, const std::string& pool_name,
                                     const std::string& address, const std::string& action) {
  const bool weight = action == "weight";
  if (action != "drain" && action != "enable" && !weight)
    return text(404, "no backend action '" + action + "': drain, enable or weight");
  if (weight ? request.method != "PUT" : request.method != "POST")
    return method_not_allowed(weight ? "PUT" : "POST");
  // ?scope=cluster: for every instance sharing the cluster's Redis; else this one.
  std::string_view query;
  if (size_t q = request.target.find('?'); q != std::string::npos)
    query = std::string_view(request.target).substr(q + 1);
  bool cluster = false;
  for (std::string_view rest = query; !rest.empty();) {
    std::string_view param = rest.substr(0, rest.find('&'));
    rest.remove_prefix(std::min(rest.size(), param.size() + 1));
    if (param == "scope=cluster")
      cluster = true;
    else if (param != "scope=local" && !param.empty())
      return text(400, "unknown parameter '" + std::string(param) +
                           "': the only one is scope=local (default) or scope=cluster");
  }
  if (cluster && !cluster_publish_)
    return text(400, "scope=cluster needs a cluster: {redis: HOST:PORT} block in the config");

  std::shared_ptr<const proxy::Runtime> runtime = server_.runtime();
  upstream::Pool* pool = nullptr;
  for (const auto& p : runtime->pools)
    if (p->name() == pool_name)
      pool = p.get();
  if (!pool)
    return text(404, "no pool named '" + pool_name + "'");
  int b = find_backend(*pool, address);
  if (b < 0) {
    std::string known;
    size_t listed = 0;
    for (const auto& backend : pool->backends()) {
      if (listed++ == 10) {
        known += ", ...";
        break;
      }
      known += (known.empty() ? "" : ", ") + backend.label;
    }
    return text(404, "pool '" + pool_name + "' has no backend '" + address +
                         "' (its backends: " + known + ")");
  }
  const std::string& label = pool->backends()[static_cast<size_t>(b)].label;

  if (weight) {
    std::string_view body = request.body;
    while (!body.empty() && std::isspace(static_cast<unsigned char>(body.front())))
      body.remove_prefix(1);
    while (!body.empty() && std::isspace(static_cast<unsigned char>(body.back())))
      body.remove_suffix(1);
    uint32_t value = 0;
    auto [end, ec] = std::from_chars(body.data(), body.data() + body.size(), value);
    if (body.empty() || ec != std::errc() || end != body.data() + body.size() || value > max_weight)
      return text(400,
                  "weight: the body must be an integer 0..1000, got '" + std::string(body) + "'");
    if (cluster) {
      std::string why = cluster_publish_(pool_name, label, -1, static_cast<int>(value));
      if (!why.empty())
        return text(503, "scope=cluster: " + why);
    }
    pool->set_weight(static_cast<size_t>(b), value);
    io::log("admin: pool %s backend %s weight set to %u%s", pool_name.c_str(), label.c_str(), value,
            cluster ? " for the cluster" : "");
  } else {
    bool drain = action == "drain";
    if (cluster) {
      std::string why = cluster_publish_(pool_name, label, drain ? 1 : 0, -1);
      if (!why.empty())
        return text(503, "scope=cluster: " + why);
    }
    pool->set_drained(static_cast<size_t>(b), drain);
    io::log("admin: pool %s backend %s %s%s", pool_name.c_str(), label.c_str(),
            drain ? "drained" : "enabled", cluster ? " for the cluster" : "");
  }
  const upstream::BackendState& st = pool->state(static_cast<size_t>(b));
  const upstream::Selection& selection = pool->selection();
  return json_response(
      200, {{"pool", pool_name},
            {"backend", label},
            {"scope", cluster ? "cluster" : "local"},
            {"drained", st.drained.load()},
            {"weight", st.weight.load()},
            {"in_rotation", static_cast<size_t>(b) < selection.effective_weight.size() &&
                                selection.effective_weight[static_cast<size_t>(b)] > 0}});
}

} // namespace lb::admin
