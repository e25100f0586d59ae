#include "lb/io/tls.hpp"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace lb::io {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  const char* reason = e ? ERR_reason_error_string(e) : nullptr;
  ERR_clear_error();
  return reason ? reason : "unknown error";
}

// DNS names of a certificate: subjectAltName entries, else the common name.
std::vector<std::string> names_of(X509* cert) {
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
int on_alpn(SSL*, const unsigned char** out, unsigned char* out_len, const unsigned char* in,
            unsigned int in_len, void* arg) {
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

} // namespace

std::unique_ptr<TlsServer> TlsServer::create(const config::ListenerTls& config, bool http2,
                                             std::string& error) {
  std::unique_ptr<TlsServer> server(new TlsServer);
  for (const auto& c : config.certificates) {
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
    if (SSL_CTX_use_certificate_chain_file(ctx, c.cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, c.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      error = "cannot use " + c.cert + " / " + c.key + ": " + openssl_error();
      return nullptr;
    }
    static char h2_marker;
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, http2 ? &h2_marker : nullptr);
    server->entries_.back().names = names_of(SSL_CTX_get0_certificate(ctx));
  }
  if (server->entries_.empty()) {
    error = "no certificate";
    return nullptr;
  }
  SSL_CTX_set_tlsext_servername_callback(server->entries_[0].ctx, on_server_name);
  SSL_CTX_set_tlsext_servername_arg(server->entries_[0].ctx, server.get());
  return server;
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
