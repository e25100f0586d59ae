#pragma once
// Server-side TLS for one listener (OpenSSL): one context per certificate,
// chosen by SNI against each certificate's names (the first is the default),
// the configured minimum version, ALPN "h2" (HTTP/2 listeners) and "http/1.1", session resumption
// with tickets. Built once per listener off the hot path; SSL_new from any thread.

#include "config/config_types.hpp"

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

namespace lb::io {

class TlsServer {
public:
  // nullptr (with `error`) when a certificate or key cannot be used.
  // `http2`: ALPN offers h2 before http/1.1.
  static std::unique_ptr<TlsServer> create(const config::ListenerTls& config, bool http2,
                                           std::string& error);
  ~TlsServer();
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  // A new server-side connection on `fd`, or nullptr.
  SSL* accept(int fd) const;

private:
  TlsServer() = default;
  struct Entry {
    SSL_CTX* ctx = nullptr;
    std::vector<std::string> names; // lower case DNS names; "*.example.com" wildcards
  };
  const Entry* find(const std::string& server_name) const;
  static int on_server_name(SSL* ssl, int* alert, void* arg);

  std::vector<Entry> entries_;
};

// Client-side TLS toward one pool's backends (pool `tls:`): the trust store
// (the pool's `ca` or the system's), verification of the chain and of the
// backend's name or address, the minimum version, ALPN "http/1.1".
class TlsClient {
public:
  // nullptr (with `error`) when the CA bundle cannot be used.
  static std::unique_ptr<TlsClient> create(const config::PoolTls& config, std::string& error);
  ~TlsClient();
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  // A new client-side connection on `fd` to a backend called `host` (a DNS
  // name, or empty) at `ip`: SNI is the pool's `sni`, else `host`; what is
  // verified is that name, else the IP address. nullptr on failure.
  SSL* connect(int fd, const std::string& host, const std::string& ip) const;
  // Why a handshake failed, after SSL_do_handshake said so.
  static std::string failure(SSL* ssl);

private:
  TlsClient() = default;
  SSL_CTX* ctx_ = nullptr;
  bool verify_ = true;
  std::string sni_;
};

} // namespace lb::io
