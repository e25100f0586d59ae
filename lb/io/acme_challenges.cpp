#include "lb/io/acme_challenges.hpp"

#include <unistd.h>

namespace lb::io {

AcmeChallenges& AcmeChallenges::instance() {
  static AcmeChallenges* challenges = new AcmeChallenges; // lives as long as the process
  return *challenges;
}

AcmeChallenges::~AcmeChallenges() {
  for (auto& [name, a] : alpn_) {
    X509_free(a.cert);
    EVP_PKEY_free(a.key);
  }
}

void AcmeChallenges::put_http(const std::string& token, const std::string& key_authorization) {
  std::lock_guard lock(mutex_);
  http_[token] = key_authorization;
  http_count_.store(static_cast<int>(http_.size()), std::memory_order_relaxed);
}

void AcmeChallenges::remove_http(const std::string& token) {
  std::lock_guard lock(mutex_);
  http_.erase(token);
  http_count_.store(static_cast<int>(http_.size()), std::memory_order_relaxed);
}

std::optional<std::string> AcmeChallenges::http_answer(std::string_view token) const {
  std::lock_guard lock(mutex_);
  auto it = http_.find(std::string(token));
  if (it == http_.end())
    return std::nullopt;
  return it->second;
}

void AcmeChallenges::put_alpn(const std::string& domain, X509* cert, EVP_PKEY* key) {
  X509_up_ref(cert);
  EVP_PKEY_up_ref(key);
  std::lock_guard lock(mutex_);
  Alpn& a = alpn_[domain];
  X509_free(a.cert);
  EVP_PKEY_free(a.key);
  a = {cert, key};
  alpn_count_.store(static_cast<int>(alpn_.size()), std::memory_order_relaxed);
}

void AcmeChallenges::remove_alpn(const std::string& domain) {
  std::lock_guard lock(mutex_);
  auto it = alpn_.find(domain);
  if (it == alpn_.end())
    return;
  X509_free(it->second.cert);
  EVP_PKEY_free(it->second.key);
  alpn_.erase(it);
  alpn_count_.store(static_cast<int>(alpn_.size()), std::memory_order_relaxed);
}

bool AcmeChallenges::use_alpn_certificate(SSL* ssl, std::string_view domain) const {
  std::lock_guard lock(mutex_);
  auto it = alpn_.find(std::string(domain));
  if (it == alpn_.end())
    return false;
  SSL_certs_clear(ssl); // no chain of the listener's, no certificate of another key type
  return SSL_use_certificate(ssl, it->second.cert) == 1 &&
         SSL_use_PrivateKey(ssl, it->second.key) == 1;
}

config::TlsCertificate acme_certificate_files(const config::Acme& acme) {
  // Key and chain in one file, replaced by one rename: never a key of one
  // order with the certificate of another.
  std::string file =
      acme.storage + "/" + (acme.domains.empty() ? "certificate" : acme.domains[0]) + ".pem";
  return {file, file};
}

std::vector<config::TlsCertificate> acme_stored_certificates(const config::Acme& acme) {
  config::TlsCertificate files = acme_certificate_files(acme);
  if (::access(files.cert.c_str(), R_OK) != 0)
    return {};
  return {files};
}

} // namespace lb::io
