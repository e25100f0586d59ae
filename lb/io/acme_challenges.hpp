#pragma once
// ACME challenges lb answers while an order is being validated (RFC 8555
// §8.3 HTTP-01, RFC 8737 TLS-ALPN-01): the ACME client puts them here, the
// workers answer from here. One process-wide table; workers look only after
// one relaxed load says something is pending, so requests pay nothing when
// no order is under way.

#include "config/config_types.hpp"

#include <openssl/ssl.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lb::io {

class AcmeChallenges {
public:
  static AcmeChallenges& instance();

  // HTTP-01: GET /.well-known/acme-challenge/TOKEN answers the key authorization.
  void put_http(const std::string& token, const std::string& key_authorization);
  void remove_http(const std::string& token);
  static bool http_pending() { return http_count_.load(std::memory_order_relaxed) > 0; }
  std::optional<std::string> http_answer(std::string_view token) const;

  // TLS-ALPN-01: a handshake for `domain` offering ALPN "acme-tls/1" gets this
  // certificate (self-signed, with the acmeIdentifier extension). Takes a reference to both.
  void put_alpn(const std::string& domain, X509* cert, EVP_PKEY* key);
  // The same, with a new key and certificate made for `key_authorization`
  // (RFC 8737 §3); "" or why not.
  std::string put_alpn_authorization(const std::string& domain,
                                     const std::string& key_authorization);
  void remove_alpn(const std::string& domain);
  static bool alpn_pending() { return alpn_count_.load(std::memory_order_relaxed) > 0; }
  // Puts `domain`'s challenge certificate on `ssl`; false when there is none.
  bool use_alpn_certificate(SSL* ssl, std::string_view domain) const;

  AcmeChallenges(const AcmeChallenges&) = delete;
  AcmeChallenges& operator=(const AcmeChallenges&) = delete;

private:
  AcmeChallenges() = default;
  ~AcmeChallenges();
  struct Alpn {
    X509* cert = nullptr;
    EVP_PKEY* key = nullptr;
  };
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::string> http_;
  std::unordered_map<std::string, Alpn> alpn_;
  static inline std::atomic<int> http_count_{0};
  static inline std::atomic<int> alpn_count_{0};
};

// Where an ACME listener's key and certificate chain are kept: STORAGE/FIRST-DOMAIN.pem.
config::TlsCertificate acme_certificate_files(const config::Acme& acme);
// Those files, when both exist (the first order has completed); else none.
std::vector<config::TlsCertificate> acme_stored_certificates(const config::Acme& acme);

// The path prefix of HTTP-01 challenges.
inline constexpr std::string_view acme_challenge_path = "/.well-known/acme-challenge/";

} // namespace lb::io
