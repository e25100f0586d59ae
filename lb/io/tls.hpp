#pragma once
// Server-side TLS for one listener (OpenSSL): one context per certificate,
// chosen by SNI against each certificate's names (the first is the default),
// the configured minimum version, ALPN "http/1.1", session resumption with
// tickets. Built once per listener off the hot path; SSL_new from any thread.

#include "config/config_types.hpp"

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

namespace lb::io {

class TlsServer {
 public:
  // nullptr (with `error`) when a certificate or key cannot be used.
  static std::unique_ptr<TlsServer> create(const config::ListenerTls& config, std::string& error);
  ~TlsServer();
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  // A new server-side connection on `fd`, or nullptr.
  SSL* accept(int fd) const;

 private:
  TlsServer() = default;
  struct Entry {
    SSL_CTX* ctx = nullptr;
    std::vector<std::string> names;  // lower case DNS names; "*.example.com" wildcards
  };
  const Entry* find(const std::string& server_name) const;
  static int on_server_name(SSL* ssl, int* alert, void* arg);

  std::vector<Entry> entries_;
};

}  // namespace lb::io
