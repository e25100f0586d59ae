#pragma once
// The admin listener (admin.listen, loopback by default): operational endpoints
// for operators and outer load balancers. Runs on the main thread's io_context,
// never on a worker.

#include "config/config_types.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <string>

namespace lb::admin {

class AdminServer {
 public:
  AdminServer(boost::asio::io_context& io, const config::Admin& config);
  // Binds; false (with `error`) on failure. Logs the bound address.
  bool bind(std::string& error);
  void start();
  void close();
  // /healthz answers 503 from now on (shutting down).
  void set_shutting_down() { shutting_down_ = true; }

 private:
  void do_accept();

  boost::asio::io_context& io_;
  config::Admin config_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::atomic<bool> shutting_down_{false};
};

}  // namespace lb::admin
