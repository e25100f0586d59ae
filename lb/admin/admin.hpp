#pragma once
// The admin listener (admin.listen, loopback by default): metrics, status, the
// status page and the operator's actions (drain, enable, weight). Runs on the main
// thread's io_context, never on a worker; one request per connection.
//
//   GET  /                                           the status page (HTML)
//   GET  /metrics                                    Prometheus text exposition
//   GET  /status                                     JSON state
//   GET  /healthz                                    200 serving, 503 shutting down
//   POST /pools/{pool}/backends/{host:port}/drain    out of rotation
//   POST /pools/{pool}/backends/{host:port}/enable   back into rotation
//   PUT  /pools/{pool}/backends/{host:port}/weight   body: integer 0..1000
//   POST /reload                                     reload the config (if wired)
//
// Every request's Host must be an IP literal, localhost or one of
// admin.allowed_hosts (a name a web page rebinds to 127.0.0.1 is refused with
// 421); with admin.token_file, every endpoint but /healthz needs the token
// (401 otherwise, before anything is looked up).

#include "config/config_types.hpp"
#include "lb/admin/metrics.hpp"
#include "lb/server/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>

namespace lb::admin {

// What POST /reload answers: ok -> 200, else 400; `message` is the body
// (the validation errors when not ok).
struct ReloadResult {
  bool ok = false;
  std::string message;
};
using ReloadHandler = std::function<ReloadResult()>;

// Writes a backend override for the whole tier (`?scope=cluster`): drained
// (1, 0; -1 unchanged) and weight (-1 unchanged). "" on success, else why not.
using ClusterPublisher = std::function<std::string(
    const std::string& pool, const std::string& backend, int drained, int weight)>;

struct Request {
  std::string method;
  std::string target;        // as sent: path and query
  std::string host;          // the Host header
  std::string origin;        // the Origin header (browsers send it on cross-site requests)
  std::string authorization; // the Authorization header
  std::string body;
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::string allow;      // 405: the methods allowed
  bool challenge = false; // 401: WWW-Authenticate asks for the token (a browser prompts)
};

class AdminServer {
public:
  AdminServer(boost::asio::io_context& io, const config::Admin& config, server::Server& server);
  // Binds; false (with `error`) on failure. Logs the bound address.
  bool bind(std::string& error);
  void start();
  void close();
  // /healthz answers 503 from now on (shutting down).
  void set_shutting_down() { shutting_down_ = true; }

  // Hooks for parts wired later (admin thread, before or after start()):
  // lb_health_checks_total's source,
  void set_acme_renewal_counts(AcmeRenewalCounts counts) {
    metrics_.set_acme_renewal_counts(std::move(counts));
  }
  void set_health_check_counts(HealthCheckCounts counts) {
    metrics_.set_health_check_counts(std::move(counts));
  }
  // the tier's Redis link (/status, metrics) and what ?scope=cluster writes,
  void set_cluster(ClusterLinkStatus status, ClusterPublisher publish) {
    cluster_status_ = status;
    metrics_.set_cluster_status(std::move(status));
    cluster_publish_ = std::move(publish);
  }
  // what POST /reload does (unset: 501),
  void set_reload_handler(ReloadHandler reload) { reload_ = std::move(reload); }
  // and lb_config_reloads_total (count every reload, SIGHUP or POST /reload). Any thread.
  void count_reload(bool ok) { metrics_.count_reload(ok); }

  // Answers one parsed request. Admin thread.
  Response handle(const Request& request);

private:
  void do_accept();
  Response backend_action(const Request& request, const std::string& pool,
                          const std::string& backend, const std::string& action);

  boost::asio::io_context& io_;
  config::Admin config_;
  server::Server& server_;
  MetricsCollector metrics_;
  ReloadHandler reload_;
  ClusterLinkStatus cluster_status_;
  ClusterPublisher cluster_publish_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::atomic<bool> shutting_down_{false};
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

} // namespace lb::admin
