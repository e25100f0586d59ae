#include "lb/cluster/tls_pipe.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

namespace lb::cluster {

namespace {

std::string tls_error() {
  unsigned long e = ERR_get_error();
  char text[256] = "unknown error";
  if (e)
    ERR_error_string_n(e, text, sizeof text);
  ERR_clear_error();
  return text;
}

// By the near end's fd. Never destroyed: a relay thread may still end while
// the process exits.
std::mutex& reasons_mutex = *new std::mutex;
std::map<int, std::string>& reasons = *new std::map<int, std::string>;

void set_reason(int near, const std::string& why) {
  std::lock_guard lock(reasons_mutex);
  reasons[near] = why;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A non-blocking TCP connection to host:port, connected within `timeout_ms`.
int connect_tcp(const std::string& host, uint16_t port, int timeout_ms, std::string& error) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list); rc != 0) {
    error = host + ": " + gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  error = "no address";
  for (addrinfo* a = list; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      error = std::strerror(errno);
      ::close(fd);
      fd = -1;
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, timeout_ms) != 1 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
      error = err ? std::strerror(err) : "connection timed out";
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(list);
  return fd;
}

// Waits until `ssl`'s socket is ready for what the last call wanted, until `deadline`.
bool wait_for(SSL* ssl, int rc, int fd, int64_t deadline) {
  int e = SSL_get_error(ssl, rc);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
    return false;
  int left = static_cast<int>(deadline - now_ms());
  pollfd p{fd, static_cast<short>(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
  return left > 0 && ::poll(&p, 1, left) == 1;
}

bool send_all(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Moves bytes between hiredis's socket (`local`, blocking) and TLS (`tcp`,
// non-blocking) until either ends; then frees everything.
void relay(SSL_CTX* ctx, SSL* ssl, int tcp, int local, int near) {
  std::string to_tls; // read from hiredis, not yet taken by SSL_write
  char buf[16384];
  bool write_wants_read = false;
  for (;;) {
    if (SSL_pending(ssl) == 0) {
      pollfd p[2] = {{tcp, POLLIN, 0}, {local, 0, 0}};
      if (!to_tls.empty() && !write_wants_read)
        p[0].events |= POLLOUT;
      if (to_tls.empty())
        p[1].events = POLLIN;
      if (::poll(p, 2, -1) < 0) {
        if (errno == EINTR)
          continue;
        break;
      }
      if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = ::read(local, buf, sizeof buf);
        if (n <= 0)
          break; // hiredis let go of its end
        to_tls.assign(buf, static_cast<size_t>(n));
      }
    }
    // Redis -> hiredis: whatever TLS has.
    bool closed = false;
    for (;;) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n > 0) {
        if (!send_all(local, buf, static_cast<size_t>(n))) {
          closed = true;
          break;
        }
        write_wants_read = false;
        continue;
      }
      int e = SSL_get_error(ssl, n);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        closed = true;
        // (Stored before hiredis can see its end close.)
        set_reason(near, e == SSL_ERROR_ZERO_RETURN ? "Redis closed the TLS connection"
                         : e == SSL_ERROR_SSL       ? tls_error()
                                                    : "the TLS connection broke");
      }
      break;
    }
    if (closed)
      break;
    // hiredis -> Redis.
    while (!to_tls.empty()) {
      int n = SSL_write(ssl, to_tls.data(), static_cast<int>(to_tls.size()));
      if (n > 0) {
        to_tls.erase(0, static_cast<size_t>(n));
        continue;
      }
      int e = SSL_get_error(ssl, n);
      if (e == SSL_ERROR_WANT_READ)
        write_wants_read = true;
      else if (e != SSL_ERROR_WANT_WRITE)
        closed = true;
      break;
    }
    if (closed)
      break;
  }
  ERR_clear_error();
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ::close(tcp);
  ::close(local);
}

} // namespace

std::string tls_pipe_reason(int fd) {
  std::lock_guard lock(reasons_mutex);
  auto it = reasons.find(fd);
  if (it == reasons.end())
    return {};
  std::string why = std::move(it->second);
  reasons.erase(it);
  return why;
}

int tls_pipe(const config::Cluster& config, int timeout_ms, std::string& error) {
  const config::RedisTls& t = config.tls;
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    error = "TLS: " + tls_error();
    return -1;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  bool ok = t.ca.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                         : SSL_CTX_load_verify_locations(ctx, t.ca.c_str(), nullptr) == 1;
  if (ok && !t.cert.empty())
    ok = SSL_CTX_use_certificate_chain_file(ctx, t.cert.c_str()) == 1 &&
         SSL_CTX_use_PrivateKey_file(ctx, t.key.c_str(), SSL_FILETYPE_PEM) == 1;
  if (!ok) {
    error = "TLS: " + tls_error();
    SSL_CTX_free(ctx);
    return -1;
  }
  SSL_CTX_set_verify(ctx, t.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  int tcp = connect_tcp(config.host, config.port, timeout_ms, error);
  if (tcp < 0) {
    SSL_CTX_free(ctx);
    return -1;
  }
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, tcp);
  // The name sent and verified: sni, else the host (an address: verified as one).
  const std::string& name = t.sni.empty() ? config.host : t.sni;
  in6_addr ip{};
  bool is_ip =
      ::inet_pton(AF_INET, name.c_str(), &ip) == 1 || ::inet_pton(AF_INET6, name.c_str(), &ip) == 1;
  if (!is_ip)
    SSL_set_tlsext_host_name(ssl, name.c_str());
  if (t.verify) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (is_ip)
      X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    else
      X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0);
  }
  int64_t deadline = now_ms() + timeout_ms;
  int rc;
  while ((rc = SSL_connect(ssl)) != 1)
    if (!wait_for(ssl, rc, tcp, deadline)) {
      long verify = SSL_get_verify_result(ssl);
      error = "TLS handshake with " + config.host + ":" + std::to_string(config.port) + ": " +
              (verify != X509_V_OK    ? X509_verify_cert_error_string(verify)
               : now_ms() >= deadline ? std::string("timed out")
                                      : tls_error());
      SSL_free(ssl);
      SSL_CTX_free(ctx);
      ::close(tcp);
      return -1;
    }
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    error = std::string("socketpair: ") + std::strerror(errno);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ::close(tcp);
    return -1;
  }
  {
    std::lock_guard lock(reasons_mutex);
    reasons.erase(pair[0]); // an earlier pipe's, with the same number
  }
  std::thread(relay, ctx, ssl, tcp, pair[1], pair[0]).detach();
  return pair[0];
}

} // namespace lb::cluster
