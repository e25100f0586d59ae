#include "lb/admin/admin.hpp"

#include "lb/io/log.hpp"
#include "lb/version.hpp"

#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include <memory>

namespace lb::admin {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

struct Response {
  int status;
  std::string content_type;
  std::string body;
};

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// One admin connection: read a request head, answer, close. Admin traffic is
// rare and small, so this favours clarity over speed.
class AdminConnection : public std::enable_shared_from_this<AdminConnection> {
 public:
  AdminConnection(asio::ip::tcp::socket socket, const std::atomic<bool>& shutting_down)
      : socket_(std::move(socket)), buffer_(16 * 1024), shutting_down_(shutting_down) {}

  void start() {
    asio::async_read_until(socket_, buffer_, "\r\n\r\n",
                           [self = shared_from_this()](const error_code& ec, size_t n) {
                             self->on_read(ec, n);
                           });
  }

 private:
  void on_read(const error_code& ec, size_t n) {
    if (ec) return;
    std::string head(asio::buffers_begin(buffer_.data()),
                     asio::buffers_begin(buffer_.data()) + static_cast<std::ptrdiff_t>(n));
    size_t sp1 = head.find(' ');
    size_t sp2 = sp1 == std::string::npos ? sp1 : head.find(' ', sp1 + 1);
    Response r{400, "text/plain", "bad request\n"};
    if (sp2 != std::string::npos) {
      std::string method = head.substr(0, sp1);
      std::string path = head.substr(sp1 + 1, sp2 - sp1 - 1);
      r = handle(method, path);
    }
    out_ = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) +
           "\r\nContent-Type: " + r.content_type +
           "\r\nContent-Length: " + std::to_string(r.body.size()) +
           "\r\nConnection: close\r\n\r\n" + r.body;
    asio::async_write(socket_, asio::buffer(out_),
                      [self = shared_from_this()](const error_code&, size_t) {
                        error_code ignored;
                        self->socket_.shutdown(asio::socket_base::shutdown_both, ignored);
                      });
  }

  Response handle(const std::string& method, const std::string& path) {
    if (path == "/healthz") {
      if (method != "GET" && method != "HEAD") return {405, "text/plain", "use GET\n"};
      if (shutting_down_) return {503, "text/plain", "shutting down\n"};
      return {200, "text/plain", "ok\n"};
    }
    return {404, "text/plain", "no such admin endpoint: " + path + "\n"};
  }

  asio::ip::tcp::socket socket_;
  asio::streambuf buffer_;
  const std::atomic<bool>& shutting_down_;
  std::string out_;
};

}  // namespace

AdminServer::AdminServer(asio::io_context& io, const config::Admin& config)
    : io_(io), config_(config), acceptor_(io) {}

bool AdminServer::bind(std::string& error) {
  asio::ip::tcp::endpoint endpoint(asio::ip::make_address(config_.listen.host),
                                   config_.listen.port);
  error_code ec;
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(64, ec);
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
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) std::make_shared<AdminConnection>(std::move(socket), shutting_down_)->start();
    do_accept();
  });
}

}  // namespace lb::admin
