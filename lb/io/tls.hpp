#pragma once
// Server-side TLS for one listener (OpenSSL): one context per certificate,
// chosen by SNI against each certificate's names (the first is the default),
// the configured minimum version, ALPN "h2" (HTTP/2 listeners) and "http/1.1", session resumption
// with tickets, client certificates verified against `client_ca` (mTLS), and
// ACME's TLS-ALPN-01 challenge handshakes. Built once per listener off the hot
// path (a reload or a certificate change builds a new one: connections keep
// the one they started with); SSL_new from any thread.

#include "config/config_types.hpp"

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

namespace lb::io {

class TlsServer {
public:
  // nullptr (with `error`) when a certificate or key cannot be used.
  // `http2`: ALPN offers h2 before http/1.1. `acme`: certificates ordered by
  // ACME, served beside the configured ones (after them). A listener with
  // `acme` and no certificate yet serves a self-signed one for its first
  // domain until the order completes.
  static std::unique_ptr<TlsServer> create(const config::ListenerTls& config, bool http2,
                                           const std::vector<config::TlsCertificate>& acme,
                                           std::string& error);
  ~TlsServer();
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  // A new server-side connection on `fd`, or nullptr.
  SSL* accept(int fd) const;

  // After the handshake: whether it was an ACME TLS-ALPN-01 validation (the
  // connection has nothing more to do and is closed).
  static bool acme_challenge(SSL* ssl);
  // After the handshake: the client's verified certificate as
  // X-Forwarded-Client-Cert's value (Envoy's format: Hash, Subject, URI, DNS),
  // or "" when it sent none (or it did not verify).
  static std::string client_cert_details(SSL* ssl);

  struct Served {
    std::vector<std::string> names; // as matched against SNI
    int64_t not_after = 0;          // seconds since the epoch
    bool self_signed_placeholder = false;
    bool acme = false; // ordered by ACME (else a configured file)
  };
  // The certificates this listener serves, for lb_certificate_expiry_seconds.
  const std::vector<Served>& served() const { return served_; }

private:
  TlsServer() = default;
  struct Entry {
    SSL_CTX* ctx = nullptr;
    std::vector<std::string> names; // lower case DNS names; "*.example.com" wildcards
  };
  const Entry* find(const std::string& server_name) const;
  static int on_server_name(SSL* ssl, int* alert, void* arg);
  static int on_client_hello(SSL* ssl, int* alert, void* arg);

  std::vector<Entry> entries_;
  std::vector<Served> served_;
};

// A self-signed certificate for `name` with `key` (P-256), valid from now for
// `days`; `extension`, when given, is added (critical). nullptr on failure.
X509* self_signed_certificate(EVP_PKEY* key, const std::string& name, int days,
                              X509_EXTENSION* extension = nullptr);
// A new P-256 key, or nullptr.
EVP_PKEY* new_ec_key();
// DNS names of a certificate, lower case: subjectAltName entries, else the common name.
std::vector<std::string> certificate_names(X509* cert);
// The reason of OpenSSL's last error, clearing the error queue.
std::string openssl_error();
// notAfter of `cert` in seconds since the epoch (0 when unreadable).
int64_t not_after(const X509* cert);
int64_t not_before(const X509* cert);

// Client-side TLS toward one pool's backends (pool `tls:`): the trust store
// (the pool's `ca` or the system's), verification of the chain and of the
// backend's name or address, the minimum version, ALPN "http/1.1" (or "h2"
// for a pool that speaks HTTP/2).
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
