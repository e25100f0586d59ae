#include "lb/io/acme_challenges.hpp"

#include "lb/io/tls.hpp"

#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstring>

namespace lb::io {

namespace {

// The TLS-ALPN-01 certificate's acmeIdentifier extension (RFC 8737 §3):
// critical, the SHA-256 of the key authorization as a DER OCTET STRING.
X509_EXTENSION* acme_identifier(const std::string& key_authorization) {
  unsigned char der[34] = {0x04, 0x20};
  unsigned int n = 0;
  EVP_Digest(key_authorization.data(), key_authorization.size(), der + 2, &n, EVP_sha256(),
             nullptr);
  ASN1_OBJECT* oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
  ASN1_OCTET_STRING* value = ASN1_OCTET_STRING_new();
  X509_EXTENSION* ext = nullptr;
  if (n == 32 && oid && value && ASN1_OCTET_STRING_set(value, der, sizeof der) == 1)
    ext = X509_EXTENSION_create_by_OBJ(nullptr, oid, 1, value);
  ASN1_OBJECT_free(oid);
  ASN1_OCTET_STRING_free(value);
  return ext;
}

} // namespace

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

std::string AcmeChallenges::put_alpn_authorization(const std::string& domain,
                                                   const std::string& key_authorization) {
  EVP_PKEY* key = new_ec_key();
  X509_EXTENSION* ext = acme_identifier(key_authorization);
  X509* cert = key && ext ? self_signed_certificate(key, domain, 1, ext) : nullptr;
  X509_EXTENSION_free(ext);
  if (!cert) {
    EVP_PKEY_free(key);
    return "cannot make the TLS-ALPN-01 certificate: " + openssl_error();
  }
  put_alpn(domain, cert, key);
  X509_free(cert);
  EVP_PKEY_free(key);
  return {};
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
