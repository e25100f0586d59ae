#include "lb/io/tls.hpp"

#include "lb/io/acme_challenges.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>

namespace lb::io {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

} // namespace

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  const char* reason = e ? ERR_reason_error_string(e) : nullptr;
  ERR_clear_error();
  return reason ? reason : "unknown error";
}

std::vector<std::string> certificate_names(X509* cert) {
  std::vector<std::string> names;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
      if (n->type != GEN_DNS)
        continue;
      const unsigned char* data = ASN1_STRING_get0_data(n->d.dNSName);
      int len = ASN1_STRING_length(n->d.dNSName);
      names.push_back(
          lower(std::string(reinterpret_cast<const char*>(data), static_cast<size_t>(len))));
    }
    GENERAL_NAMES_free(sans);
  }
  if (names.empty()) {
    char cn[256];
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0)
      names.push_back(lower(cn));
  }
  return names;
}

namespace {

bool matches(const std::string& pattern, const std::string& name) {
  if (pattern == name)
    return true;
  // "*.example.com" covers exactly one label: "www.example.com", not "example.com".
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    size_t dot = name.find('.');
    return dot != std::string::npos && dot > 0 && name.substr(dot) == pattern.substr(1);
  }
  return false;
}

// ALPN: h2 first where the listener speaks HTTP/2 (lb's preference, whatever
// order the client lists them in), then HTTP/1.1; clients offering only
// others go without ALPN. `arg` is non-null for an HTTP/2 listener.
// Set on a connection whose ClientHello is an ACME TLS-ALPN-01 validation.
int acme_index() {
  static int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

constexpr std::string_view acme_tls_alpn = "acme-tls/1";

int on_alpn(SSL* ssl, const unsigned char** out, unsigned char* out_len, const unsigned char* in,
            unsigned int in_len, void* arg) {
  if (SSL_get_ex_data(ssl, acme_index())) {
    static const unsigned char acme[] = "\x0a"
                                        "acme-tls/1";
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, out_len, acme, sizeof acme - 1, in, in_len) ==
        OPENSSL_NPN_NEGOTIATED) {
      *out = selected;
      return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  static const unsigned char h2_and_http11[] = "\x02h2\x08http/1.1";
  const unsigned char* ours = arg ? h2_and_http11 : h2_and_http11 + 3;
  unsigned ours_len = static_cast<unsigned>(sizeof h2_and_http11 - 1 - (arg ? 0 : 3));
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, out_len, ours, ours_len, in, in_len) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// Client certificates: verified against the listener's client_ca; `required`
// refuses a handshake without one, `optional` lets it in (a certificate that
// does not verify is refused either way).
bool set_client_verify(SSL_CTX* ctx, const config::ListenerTls& config, std::string& error) {
  if (config.client_ca.empty())
    return true;
  if (SSL_CTX_load_verify_locations(ctx, config.client_ca.c_str(), nullptr) != 1) {
    error = "cannot load client_ca " + config.client_ca + ": " + openssl_error();
    return false;
  }
  STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.client_ca.c_str());
  if (names)
    SSL_CTX_set_client_CA_list(ctx, names);
  int mode = SSL_VERIFY_PEER;
  if (config.client_verify == config::ListenerTls::ClientVerify::required)
    mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  SSL_CTX_set_verify(ctx, mode, nullptr);
  return true;
}

// A ClientHello extension's bytes, as a view (empty when absent).
std::string_view hello_extension(SSL* ssl, unsigned type) {
  const unsigned char* p = nullptr;
  size_t n = 0;
  if (SSL_client_hello_get0_ext(ssl, type, &p, &n) != 1)
    return {};
  return {reinterpret_cast<const char*>(p), n};
}

// The host name of a ClientHello's server_name extension (RFC 6066 §3).
std::string hello_server_name(SSL* ssl) {
  std::string_view e = hello_extension(ssl, TLSEXT_TYPE_server_name);
  // list length (2), then entries: type (1), length (2), name
  if (e.size() < 5)
    return {};
  e.remove_prefix(2);
  while (e.size() >= 3) {
    auto type = static_cast<unsigned char>(e[0]);
    size_t len = (static_cast<unsigned char>(e[1]) << 8) | static_cast<unsigned char>(e[2]);
    e.remove_prefix(3);
    if (len > e.size())
      return {};
    if (type == TLSEXT_NAMETYPE_host_name)
      return lower(std::string(e.substr(0, len)));
    e.remove_prefix(len);
  }
  return {};
}

bool hello_offers_acme(SSL* ssl) {
  std::string_view e = hello_extension(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation);
  if (e.size() < 2)
    return false;
  e.remove_prefix(2);
  while (!e.empty()) {
    size_t len = static_cast<unsigned char>(e[0]);
    e.remove_prefix(1);
    if (len > e.size())
      return false;
    if (e.substr(0, len) == acme_tls_alpn)
      return true;
    e.remove_prefix(len);
  }
  return false;
}

time_t asn1_time_to_epoch(const ASN1_TIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
    return 0;
  return timegm(&tm);
}

// Values of X-Forwarded-Client-Cert that are written unquoted must not carry
// its separators; control characters are never written.
bool plain_value(std::string_view v) {
  if (v.empty())
    return false;
  for (unsigned char c : v)
    if (c <= ' ' || c >= 0x7f || c == ',' || c == ';' || c == '"' || c == '=')
      return false;
  return true;
}

} // namespace

int64_t not_after(const X509* cert) { return asn1_time_to_epoch(X509_get0_notAfter(cert)); }
int64_t not_before(const X509* cert) { return asn1_time_to_epoch(X509_get0_notBefore(cert)); }

EVP_PKEY* new_ec_key() { return EVP_EC_gen("P-256"); }

X509* self_signed_certificate(EVP_PKEY* key, const std::string& name, int days,
                              X509_EXTENSION* extension) {
  X509* cert = X509_new();
  if (!cert)
    return nullptr;
  bool ok = X509_set_version(cert, 2) == 1;
  unsigned char serial[16];
  ok &= RAND_bytes(serial, sizeof serial) == 1;
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  ok &= bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != nullptr;
  BN_free(bn);
  ok &= X509_gmtime_adj(X509_getm_notBefore(cert), -60) != nullptr;
  ok &= X509_gmtime_adj(X509_getm_notAfter(cert), 86400L * days) != nullptr;
  X509_NAME* subject = X509_get_subject_name(cert);
  ok &= X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1,
                                   0) == 1;
  ok &= X509_set_issuer_name(cert, subject) == 1;
  ok &= X509_set_pubkey(cert, key) == 1;
  GENERAL_NAMES* sans = GENERAL_NAMES_new();
  GENERAL_NAME* san = GENERAL_NAME_new();
  ASN1_IA5STRING* dns = ASN1_IA5STRING_new();
  ok &= sans && san && dns && ASN1_STRING_set(dns, name.data(), static_cast<int>(name.size())) == 1;
  if (san && dns) {
    GENERAL_NAME_set0_value(san, GEN_DNS, dns);
    dns = nullptr;
  }
  if (sans && san) {
    sk_GENERAL_NAME_push(sans, san);
    san = nullptr;
  }
  ok &= sans && X509_add1_ext_i2d(cert, NID_subject_alt_name, sans, 0, X509V3_ADD_DEFAULT) == 1;
  GENERAL_NAMES_free(sans);
  GENERAL_NAME_free(san);
  ASN1_IA5STRING_free(dns);
  if (extension)
    ok &= X509_add_ext(cert, extension, -1) == 1;
  ok &= X509_sign(cert, key, EVP_sha256()) > 0;
  if (!ok) {
    ERR_clear_error();
    X509_free(cert);
    return nullptr;
  }
  return cert;
}

std::unique_ptr<TlsServer> TlsServer::create(const config::ListenerTls& config, bool http2,
                                             const std::vector<config::TlsCertificate>& acme,
                                             std::string& error) {
  std::unique_ptr<TlsServer> server(new TlsServer);
  std::vector<config::TlsCertificate> all = config.certificates;
  all.insert(all.end(), acme.begin(), acme.end());
  // An ACME listener without its certificate yet (the first order is under
  // way) serves a placeholder, so that it can start and answer TLS-ALPN-01.
  bool placeholder = all.empty() && config.acme && !config.acme->domains.empty();
  if (placeholder)
    all.push_back({});
  for (const auto& c : all) {
    Entry e;
    e.ctx = SSL_CTX_new(TLS_server_method());
    if (!e.ctx) {
      error = "cannot create a TLS context: " + openssl_error();
      return nullptr;
    }
    server->entries_.push_back(e); // freed by the destructor from here on
    SSL_CTX* ctx = e.ctx;
    SSL_CTX_set_min_proto_version(ctx, config.min_version == config::ListenerTls::Version::tls1_3
                                           ? TLS1_3_VERSION
                                           : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    // Partial writes and moving buffers suit the gather writes. Not
    // SSL_MODE_RELEASE_BUFFERS, which frees and allocates the record buffers
    // around every record (5% of the CPU per request on keep-alive GETs): the
    // session calls SSL_free_buffers when a connection goes idle instead.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(ctx, reinterpret_cast<const unsigned char*>("lb"), 2);
    if (placeholder) {
      EVP_PKEY* key = new_ec_key();
      X509* cert = key ? self_signed_certificate(key, config.acme->domains[0], 7) : nullptr;
      bool ok =
          cert && SSL_CTX_use_certificate(ctx, cert) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1;
      X509_free(cert);
      EVP_PKEY_free(key);
      if (!ok) {
        error = "cannot make a placeholder certificate: " + openssl_error();
        return nullptr;
      }
    } else if (SSL_CTX_use_certificate_chain_file(ctx, c.cert.c_str()) != 1 ||
               SSL_CTX_use_PrivateKey_file(ctx, c.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
               SSL_CTX_check_private_key(ctx) != 1) {
      error = "cannot use " + c.cert + " / " + c.key + ": " + openssl_error();
      return nullptr;
    }
    if (!set_client_verify(ctx, config, error))
      return nullptr;
    static char h2_marker;
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, http2 ? &h2_marker : nullptr);
    X509* leaf = SSL_CTX_get0_certificate(ctx);
    server->entries_.back().names = certificate_names(leaf);
    bool from_acme = server->served_.size() >= config.certificates.size() && !placeholder;
    server->served_.push_back(
        {server->entries_.back().names, not_after(leaf), placeholder, from_acme});
  }
  if (server->entries_.empty()) {
    error = "no certificate";
    return nullptr;
  }
  SSL_CTX_set_tlsext_servername_callback(server->entries_[0].ctx, on_server_name);
  SSL_CTX_set_tlsext_servername_arg(server->entries_[0].ctx, server.get());
  if (config.acme)
    SSL_CTX_set_client_hello_cb(server->entries_[0].ctx, on_client_hello, nullptr);
  return server;
}

// A TLS-ALPN-01 validation (RFC 8737): ALPN acme-tls/1 alone, for a name
// with a pending challenge, gets the challenge certificate (and nothing else).
int TlsServer::on_client_hello(SSL* ssl, int*, void*) {
  if (!AcmeChallenges::alpn_pending() || !hello_offers_acme(ssl))
    return SSL_CLIENT_HELLO_SUCCESS;
  AcmeChallenges& challenges = AcmeChallenges::instance();
  std::string name = hello_server_name(ssl);
  // The challenge certificate alone (use_alpn_certificate clears the
  // listener's), and no client certificate asked of the CA's validator.
  if (!name.empty() && challenges.use_alpn_certificate(ssl, name)) {
    static char marker;
    SSL_set_ex_data(ssl, acme_index(), &marker);
    SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

bool TlsServer::acme_challenge(SSL* ssl) { return SSL_get_ex_data(ssl, acme_index()) != nullptr; }

std::string TlsServer::client_cert_details(SSL* ssl) {
  X509* peer = SSL_get0_peer_certificate(ssl);
  if (!peer || SSL_get_verify_result(ssl) != X509_V_OK)
    return {};
  std::string out = "Hash=";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (X509_digest(peer, EVP_sha256(), md, &md_len) != 1)
    return {};
  static const char hex[] = "0123456789abcdef";
  for (unsigned i = 0; i < md_len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  // The subject in RFC 2253 form (control characters escaped), quoted.
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (X509_NAME_print_ex(bio, X509_get_subject_name(peer), 0,
                           XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
      char* data = nullptr;
      long n = BIO_get_mem_data(bio, &data);
      out += ";Subject=\"";
      for (long i = 0; i < n; ++i) {
        unsigned char c = static_cast<unsigned char>(data[i]);
        if (c < ' ' || c == 0x7f)
          continue;
        if (c == '"' || c == '\\')
          out += '\\';
        out += static_cast<char>(c);
      }
      out += '"';
    }
    BIO_free(bio);
  }
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(peer, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int kind : {GEN_URI, GEN_DNS})
      for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
        const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
        if (n->type != kind)
          continue;
        const ASN1_IA5STRING* v = kind == GEN_URI ? n->d.uniformResourceIdentifier : n->d.dNSName;
        std::string_view text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(v)),
                              static_cast<size_t>(ASN1_STRING_length(v)));
        if (!plain_value(text))
          continue;
        out += kind == GEN_URI ? ";URI=" : ";DNS=";
        out += text;
      }
    GENERAL_NAMES_free(sans);
  }
  return out;
}

TlsServer::~TlsServer() {
  for (auto& e : entries_)
    SSL_CTX_free(e.ctx);
}

const TlsServer::Entry* TlsServer::find(const std::string& server_name) const {
  std::string name = lower(server_name);
  for (const auto& e : entries_)
    for (const auto& pattern : e.names)
      if (matches(pattern, name))
        return &e;
  return nullptr;
}

int TlsServer::on_server_name(SSL* ssl, int*, void* arg) {
  const auto* server = static_cast<const TlsServer*>(arg);
  if (SSL_get_ex_data(ssl, acme_index()))
    return SSL_TLSEXT_ERR_OK; // keeps the challenge certificate
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name)
    return SSL_TLSEXT_ERR_OK; // no SNI: the default certificate
  const Entry* e = server->find(name);
  if (e && e->ctx != SSL_get_SSL_CTX(ssl))
    SSL_set_SSL_CTX(ssl, e->ctx);
  return SSL_TLSEXT_ERR_OK; // unknown names get the default certificate
}

SSL* TlsServer::accept(int fd) const {
  SSL* ssl = SSL_new(entries_[0].ctx);
  if (!ssl)
    return nullptr;
  SSL_set_fd(ssl, fd);
  SSL_set_accept_state(ssl);
  return ssl;
}

std::unique_ptr<TlsClient> TlsClient::create(const config::PoolTls& config, std::string& error) {
  std::unique_ptr<TlsClient> client(new TlsClient);
  client->verify_ = config.verify;
  client->sni_ = config.sni;
  SSL_CTX* ctx = client->ctx_ = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    error = "cannot create a TLS context: " + openssl_error();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx, config.min_version == config::ListenerTls::Version::tls1_3
                                         ? TLS1_3_VERSION
                                         : TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  // As on the server side: pooled connections give their buffers back on the sweep.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  static const unsigned char http11[] = "\x08http/1.1";
  static const unsigned char h2[] = "\x02h2";
  if (config.http2)
    SSL_CTX_set_alpn_protos(ctx, h2, sizeof h2 - 1);
  else
    SSL_CTX_set_alpn_protos(ctx, http11, sizeof http11 - 1);
  if (config.verify) {
    int ok = config.ca.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                               : SSL_CTX_load_verify_locations(ctx, config.ca.c_str(), nullptr);
    if (ok != 1) {
      error = "cannot load " +
              (config.ca.empty() ? std::string("the system's trust store") : config.ca) + ": " +
              openssl_error();
      return nullptr;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  return client;
}

TlsClient::~TlsClient() { SSL_CTX_free(ctx_); }

SSL* TlsClient::connect(int fd, const std::string& host, const std::string& ip) const {
  SSL* ssl = SSL_new(ctx_);
  if (!ssl)
    return nullptr;
  const std::string& name = !sni_.empty() ? sni_ : host;
  bool ok = SSL_set_fd(ssl, fd) == 1;
  if (ok && !name.empty())
    ok = SSL_set_tlsext_host_name(ssl, name.c_str()) == 1;
  if (ok && verify_) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = !name.empty() ? X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size()) == 1
                       : X509_VERIFY_PARAM_set1_ip_asc(param, ip.c_str()) == 1;
  }
  if (!ok) {
    ERR_clear_error();
    SSL_free(ssl);
    return nullptr;
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

std::string TlsClient::failure(SSL* ssl) {
  long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    ERR_clear_error();
    return std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
  }
  return openssl_error();
}

} // namespace lb::io
