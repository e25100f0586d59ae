#include "lb/acme/acme.hpp"

#include "lb/io/acme_challenges.hpp"
#include "lb/io/log.hpp"
#include "lb/io/tls.hpp"

#include <nlohmann/json.hpp>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

namespace lb::acme {

using json = nlohmann::json;

using io::openssl_error;

namespace {

constexpr int io_timeout_ms = 10000;
constexpr size_t max_response = 1 << 20;

std::string b64url(const unsigned char* p, size_t n) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t(p[i]) << 16) | (uint32_t(p[i + 1]) << 8) | p[i + 2];
    out += alphabet[v >> 18];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  if (i + 1 == n) {
    uint32_t v = uint32_t(p[i]) << 16;
    out += alphabet[v >> 18];
    out += alphabet[(v >> 12) & 63];
  } else if (i + 2 == n) {
    uint32_t v = (uint32_t(p[i]) << 16) | (uint32_t(p[i + 1]) << 8);
    out += alphabet[v >> 18];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
  }
  return out;
}

std::string b64url(std::string_view s) {
  return b64url(reinterpret_cast<const unsigned char*>(s.data()), s.size());
}

// How long one instance may hold the tier's lock on an order (it lets go
// when the order ends; a crashed instance's lock expires).
constexpr std::chrono::seconds order_lock_ttl{600};

// A whole file ("" when it cannot be read).
std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return in ? out.str() : std::string();
}

std::string hex(std::string_view bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string sha256(std::string_view s) {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(s.data(), s.size(), md, &n, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), n);
}

std::string format_time(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---- Files -------------------------------------------------------------------

// Writes `data` to `path` through a temporary file and a rename, mode 0600.
bool write_private(const std::string& path, const std::string& data, std::string& error) {
  // A fresh name nobody else can have made (O_EXCL, no symlink followed).
  char suffix[32];
  std::snprintf(
      suffix, sizeof suffix, ".%d.%lx.tmp", static_cast<int>(::getpid()),
      static_cast<unsigned long>(std::hash<std::thread::id>()(std::this_thread::get_id())));
  std::string tmp = path + suffix;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    error = "cannot write " + tmp + ": " + std::strerror(errno);
    return false;
  }
  bool ok = ::fchmod(fd, 0600) == 0;
  size_t done = 0;
  while (ok && done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    ok = n > 0;
    if (ok)
      done += static_cast<size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  if (!ok)
    error = "cannot write " + tmp + ": " + std::strerror(errno);
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    error = "cannot rename " + tmp + ": " + std::strerror(errno);
    ok = false;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return false;
  }
  // The rename itself must survive a crash.
  std::string dir = path.substr(0, path.rfind('/') == std::string::npos ? 0 : path.rfind('/'));
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

// The storage directory: made 0700 when missing; refused when others may
// write to it (they could swap the key files) or it belongs to someone else.
bool check_storage(const std::string& dir, std::string& error) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    error = "cannot create " + dir + ": " + std::strerror(errno);
    return false;
  }
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    error = dir + " is not a directory";
    return false;
  }
  if (st.st_uid != ::geteuid()) {
    error = dir + " belongs to another user: lb keeps private keys there";
    return false;
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    error =
        dir + " is writable by other users (chmod 700 " + dir + "): lb keeps private keys there";
    return false;
  }
  return true;
}

std::string key_pem(EVP_PKEY* key) {
  std::string out;
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr) == 1) {
      char* data = nullptr;
      long n = BIO_get_mem_data(bio, &data);
      out.assign(data, static_cast<size_t>(n));
    }
    BIO_free(bio);
  }
  return out;
}

EVP_PKEY* read_key(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f)
    return nullptr;
  EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  ERR_clear_error();
  return key;
}

X509* read_cert(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f)
    return nullptr;
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  ERR_clear_error();
  return cert;
}

// ---- HTTPS requests ------------------------------------------------------------

struct Url {
  std::string host;
  std::string port = "443";
  std::string path = "/";
};

bool parse_url(const std::string& text, Url& url) {
  if (!text.starts_with("https://"))
    return false;
  std::string rest = text.substr(8);
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  url.path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos)
      return false;
    url.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':')
      url.port = authority.substr(close + 2);
  } else {
    size_t colon = authority.rfind(':');
    url.host = authority.substr(0, colon);
    if (colon != std::string::npos)
      url.port = authority.substr(colon + 1);
  }
  return !url.host.empty() && !url.port.empty();
}

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers; // lower-case names
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// The socket of the request in flight, which stop() shuts down so that a
// blocked read or connect returns at once.
class InFlight {
public:
  void set(int fd) {
    std::lock_guard lock(mutex_);
    fd_ = fd;
    if (aborted_ && fd >= 0)
      ::shutdown(fd, SHUT_RDWR);
  }
  void abort() {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    if (fd_ >= 0)
      ::shutdown(fd_, SHUT_RDWR);
  }

private:
  std::mutex mutex_;
  int fd_ = -1;
  bool aborted_ = false;
};

int connect_to(const Url& url, std::string& error, InFlight& in_flight) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  int rc = ::getaddrinfo(url.host.c_str(), url.port.c_str(), &hints, &list);
  if (rc != 0) {
    error = "cannot resolve " + url.host + ": " + gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = list; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0)
      continue;
    in_flight.set(fd);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      error = "cannot connect to " + url.host + ":" + url.port + ": " + std::strerror(errno);
      in_flight.set(-1);
      ::close(fd);
      fd = -1;
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, io_timeout_ms) != 1 ||
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      error = "cannot connect to " + url.host + ":" + url.port + ": " +
              (err ? std::strerror(err) : "timed out");
      in_flight.set(-1);
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(list);
  if (fd >= 0) {
    int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    timeval tv{io_timeout_ms / 1000, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  return fd;
}

bool decode_chunked(std::string_view in, std::string& out) {
  out.clear();
  for (;;) {
    size_t eol = in.find("\r\n");
    if (eol == std::string_view::npos)
      return false;
    size_t size = 0;
    std::string_view line = in.substr(0, eol);
    size_t i = 0;
    for (; i < line.size() && std::isxdigit(static_cast<unsigned char>(line[i])); ++i)
      size = size * 16 + static_cast<size_t>(std::isdigit(static_cast<unsigned char>(line[i]))
                                                 ? line[i] - '0'
                                                 : (std::tolower(line[i]) - 'a' + 10));
    if (i == 0 || size > max_response)
      return false;
    in.remove_prefix(eol + 2);
    if (size == 0)
      return true;
    if (in.size() < size + 2)
      return false;
    out.append(in.substr(0, size));
    in.remove_prefix(size + 2);
  }
}

class Https {
public:
  explicit Https(InFlight& in_flight) : in_flight_(in_flight) {}
  ~Https() { SSL_CTX_free(ctx_); }
  bool init(const std::string& ca, std::string& error) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (!ctx_) {
      error = "cannot create a TLS context: " + openssl_error();
      return false;
    }
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    int ok = ca.empty() ? SSL_CTX_set_default_verify_paths(ctx_)
                        : SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
    if (ok != 1) {
      error = "cannot load " + (ca.empty() ? std::string("the system's trust store") : ca) + ": " +
              openssl_error();
      return false;
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    return true;
  }

  bool request(const std::string& method, const std::string& url_text,
               const std::string& content_type, const std::string& body, const std::string& accept,
               Response& response, std::string& error) {
    Url url;
    if (!parse_url(url_text, url)) {
      error = "not an https URL: " + url_text;
      return false;
    }
    int fd = connect_to(url, error, in_flight_);
    if (fd < 0)
      return false;
    SSL* ssl = SSL_new(ctx_);
    bool ok = ssl && SSL_set_fd(ssl, fd) == 1;
    if (ok) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
      if (X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str()) != 1) {
        ERR_clear_error();
        SSL_set_tlsext_host_name(ssl, url.host.c_str());
        X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), url.host.size());
      }
    }
    if (ok && SSL_connect(ssl) != 1) {
      long verify = SSL_get_verify_result(ssl);
      error = "TLS handshake with " + url.host + ":" + url.port + " failed: " +
              (verify != X509_V_OK ? std::string("certificate verify failed: ") +
                                         X509_verify_cert_error_string(verify)
                                   : openssl_error());
      ok = false;
    }
    std::string raw;
    if (ok) {
      std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
      if (url.port != "443")
        host += ":" + url.port;
      std::string req = method + " " + url.path + " HTTP/1.1\r\nHost: " + host +
                        "\r\nUser-Agent: lb-acme\r\nConnection: close\r\n";
      if (!accept.empty())
        req += "Accept: " + accept + "\r\n";
      if (!content_type.empty())
        req += "Content-Type: " + content_type + "\r\n";
      if (method == "POST")
        req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
      req += "\r\n" + body;
      ok = SSL_write(ssl, req.data(), static_cast<int>(req.size())) == static_cast<int>(req.size());
      if (!ok)
        error = "cannot send to " + url.host + ": " + openssl_error();
    }
    if (ok) {
      char buf[16384];
      for (;;) {
        int n = SSL_read(ssl, buf, sizeof buf);
        if (n <= 0)
          break;
        raw.append(buf, static_cast<size_t>(n));
        if (raw.size() > max_response) {
          error = "the response from " + url.host + " is larger than 1 MiB";
          ok = false;
          break;
        }
      }
      ERR_clear_error();
    }
    if (ssl) {
      SSL_shutdown(ssl);
      SSL_free(ssl);
    }
    in_flight_.set(-1);
    ::close(fd);
    if (!ok)
      return false;
    return parse(raw, method == "HEAD", url_text, response, error);
  }

private:
  static bool parse(const std::string& raw, bool head, const std::string& url, Response& response,
                    std::string& error) {
    size_t end = raw.find("\r\n\r\n");
    if (end == std::string::npos || raw.compare(0, 9, "HTTP/1.1 ") != 0 || raw.size() < 12) {
      error = "no HTTP response from " + url;
      return false;
    }
    response = {};
    response.status = std::atoi(raw.c_str() + 9);
    size_t pos = raw.find("\r\n") + 2;
    while (pos < end) {
      size_t eol = raw.find("\r\n", pos);
      std::string line = raw.substr(pos, eol - pos);
      pos = eol + 2;
      size_t colon = line.find(':');
      if (colon == std::string::npos)
        continue;
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return char(std::tolower(c)); });
      size_t v = line.find_first_not_of(" \t", colon + 1);
      std::string value = v == std::string::npos ? "" : line.substr(v);
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
        value.pop_back();
      response.headers[name] = value;
    }
    std::string_view rest(raw);
    rest.remove_prefix(end + 4);
    if (head)
      return true;
    if (response.header("transfer-encoding").find("chunked") != std::string::npos) {
      if (!decode_chunked(rest, response.body)) {
        error = "a malformed chunked body from " + url;
        return false;
      }
    } else if (std::string cl = response.header("content-length"); !cl.empty()) {
      size_t n = std::strtoull(cl.c_str(), nullptr, 10);
      if (n > rest.size()) {
        error = "a truncated body from " + url;
        return false;
      }
      response.body = std::string(rest.substr(0, n));
    } else {
      response.body = std::string(rest);
    }
    return true;
  }

  InFlight& in_flight_;
  SSL_CTX* ctx_ = nullptr;
};

// ---- JWS (RFC 7515) with ES256 ---------------------------------------------------

std::string coordinate(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1)
    return {};
  unsigned char buf[32];
  int n = BN_bn2binpad(bn, buf, sizeof buf);
  BN_free(bn);
  return n == 32 ? b64url(buf, sizeof buf) : std::string();
}

// The account key as a JWK, members in the order RFC 7638 hashes them.
std::string jwk_of(EVP_PKEY* key) {
  return R"({"crv":"P-256","kty":"EC","x":")" + coordinate(key, OSSL_PKEY_PARAM_EC_PUB_X) +
         R"(","y":")" + coordinate(key, OSSL_PKEY_PARAM_EC_PUB_Y) + "\"}";
}

// ES256: the ECDSA signature as r || s, 32 bytes each (RFC 7518 §3.4).
bool sign_es256(EVP_PKEY* key, std::string_view input, std::string& out) {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  size_t len = 0;
  std::string der;
  bool ok = md && EVP_DigestSignInit(md, nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestSign(md, nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()),
                           input.size()) == 1;
  if (ok) {
    der.resize(len);
    ok = EVP_DigestSign(md, reinterpret_cast<unsigned char*>(der.data()), &len,
                        reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
    der.resize(len);
  }
  EVP_MD_CTX_free(md);
  if (!ok)
    return false;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
  if (!sig)
    return false;
  unsigned char raw[64];
  bool fits = BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 &&
              BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32;
  ECDSA_SIG_free(sig);
  if (!fits)
    return false;
  out = b64url(raw, sizeof raw);
  return true;
}

// A CSR naming `domains` (the first also as the common name), signed with `key`.
std::string csr_der(EVP_PKEY* key, const std::vector<std::string>& domains) {
  X509_REQ* req = X509_REQ_new();
  if (!req)
    return {};
  bool ok = X509_REQ_set_version(req, 0) == 1 && X509_REQ_set_pubkey(req, key) == 1;
  // A common name holds at most 64 characters; the subjectAltName is what counts.
  if (domains[0].size() <= 64) {
    X509_NAME* name = X509_REQ_get_subject_name(req);
    ok = ok && X509_NAME_add_entry_by_txt(
                   name, "CN", MBSTRING_ASC,
                   reinterpret_cast<const unsigned char*>(domains[0].c_str()), -1, -1, 0) == 1;
  }
  std::string sans;
  for (const auto& d : domains)
    sans += (sans.empty() ? "DNS:" : ",DNS:") + d;
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, sans.c_str());
  bool pushed = exts && ext && sk_X509_EXTENSION_push(exts, ext) > 0;
  if (!pushed)
    X509_EXTENSION_free(ext); // (the stack owns it once pushed)
  ok = ok && pushed && X509_REQ_add_extensions(req, exts) == 1;
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  ok = ok && X509_REQ_sign(req, key, EVP_sha256()) > 0;
  std::string out;
  if (ok) {
    int n = i2d_X509_REQ(req, nullptr);
    if (n > 0) {
      out.resize(static_cast<size_t>(n));
      auto* p = reinterpret_cast<unsigned char*>(out.data());
      i2d_X509_REQ(req, &p);
    }
  }
  X509_REQ_free(req);
  ERR_clear_error();
  return out;
}

} // namespace

// ---- One listener's client --------------------------------------------------------

class Manager::Client {
public:
  Client(std::string listener, config::Acme acme, std::function<void()> on_certificate,
         std::shared_ptr<SharedStorage> shared)
      : listener_(std::move(listener)), acme_(std::move(acme)),
        on_certificate_(std::move(on_certificate)), shared_(std::move(shared)) {
    // FIRST-DOMAIN@HASH: the hash of the directory and every domain, so that
    // listeners ordering other names (or from another CA) share nothing.
    std::vector<std::string> sorted = acme_.domains;
    std::sort(sorted.begin(), sorted.end());
    std::string what = acme_.directory;
    for (const auto& d : sorted)
      what += "\n" + d;
    share_name_ = acme_.domains[0] + "@" + hex(sha256(what)).substr(0, 12);
    thread_ = std::thread([this] { run(); });
  }
  ~Client() {
    stop();
    EVP_PKEY_free(account_key_);
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    in_flight_.abort();
    wake_.notify_all();
    if (thread_.joinable())
      thread_.join();
  }

  const std::string& listener() const { return listener_; }
  const config::Acme& settings() const { return acme_; }
  RenewalCount count() const { return {listener_, succeeded_.load(), failed_.load()}; }

private:
  // Sleeps until `deadline` (seconds since the epoch) or stop; false on stop.
  bool sleep_until(int64_t deadline) {
    std::unique_lock lock(mutex_);
    auto until = std::chrono::system_clock::time_point(std::chrono::seconds(deadline));
    wake_.wait_until(lock, until, [&] { return stopping_; });
    return !stopping_;
  }
  bool sleep_ms(int ms) {
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopping_; });
    return !stopping_;
  }
  bool stopping() {
    std::lock_guard lock(mutex_);
    return stopping_;
  }

  static int64_t now() { return static_cast<int64_t>(std::time(nullptr)); }

  // When the stored certificate is due for renewal (0: none usable, order now),
  // and when it expires.
  int64_t due(int64_t& expires, int64_t* lifetime = nullptr) {
    expires = 0;
    config::TlsCertificate files = io::acme_certificate_files(acme_);
    X509* cert = read_cert(files.cert);
    EVP_PKEY* key = read_key(files.key);
    int64_t at = 0;
    if (cert && key && X509_check_private_key(cert, key) == 1) {
      std::vector<std::string> names = io::certificate_names(cert);
      bool covers = std::all_of(acme_.domains.begin(), acme_.domains.end(), [&](const auto& d) {
        return std::find(names.begin(), names.end(), d) != names.end();
      });
      int64_t from = io::not_before(cert);
      expires = io::not_after(cert);
      if (covers && expires > from)
        at = from + (expires - from) * 2 / 3;
      if (lifetime)
        *lifetime = expires - from;
    }
    ERR_clear_error();
    X509_free(cert);
    EVP_PKEY_free(key);
    return at;
  }

  void run() {
    int failures = 0;
    while (!stopping()) {
      if (shared_)
        take_shared();
      int64_t expires = 0, lifetime = 0;
      int64_t at = due(expires, &lifetime);
      if (at > now()) {
        if (failures == 0 && !announced_) {
          io::log("listener %s: acme: certificate for %s stored, expires %s, renews at %s",
                  listener_.c_str(), acme_.domains[0].c_str(), format_time(expires).c_str(),
                  format_time(at).c_str());
          announced_ = true;
        }
        if (!sleep_until(at))
          return;
        continue;
      }
      std::string error;
      holding_ = false; // the tier's lock on this order
      if (shared_) {
        int got = shared_->lock(share_name_, order_lock_ttl, error);
        if (got > 0) {
          // The holder before may have stored its certificate and let go
          // just now: look again before ordering.
          take_shared();
          if (due(expires, &lifetime) > now()) {
            shared_->unlock(share_name_);
            continue;
          }
        }
        int64_t alone_at = expires - lifetime / 6; // ordering alone from here on
        if (got < 0 && alone_at > now()) {
          // The store cannot be reached, and the certificate has time left:
          // ordering alone now could make every instance order. Later.
          unshared(error);
          if (!said_holding_off_)
            io::log("listener %s: acme: %s is due; waiting for the tier's storage until %s "
                    "(then this instance orders alone)",
                    listener_.c_str(), join_domains().c_str(), format_time(alone_at).c_str());
          said_holding_off_ = true;
          if (!sleep_until(std::min(now() + 10, alone_at)))
            return;
          continue;
        }
        said_holding_off_ = false;
        if (got == 0) {
          // Another instance orders: its certificate comes through the store.
          if (!said_waiting_)
            io::log("listener %s: acme: another instance of the tier is ordering %s; waiting "
                    "for its certificate",
                    listener_.c_str(), join_domains().c_str());
          said_waiting_ = true;
          if (!sleep_ms(2000))
            return;
          continue;
        }
        if (got < 0)
          unshared(error); // no certificate, or little time left: alone
        holding_ = got == 1;
        error.clear();
      }
      said_waiting_ = false;
      bool issued = false;
      try {
        issued = order(error);
      } catch (const std::exception& e) {
        // A JSON answer of the wrong shape (nlohmann::json throws on it).
        error = std::string("a malformed answer from the ACME server: ") + e.what();
      }
      if (issued) {
        int64_t next_expires = 0;
        int64_t next = due(next_expires, &lifetime);
        expires = next_expires;
        if (next > now()) {
          failures = 0;
          succeeded_.fetch_add(1);
          if (shared_) {
            std::string why, pem = read_file(io::acme_certificate_files(acme_).cert);
            // (Stored: the others take it, the lock goes. Not stored: the
            // lock stays until it expires, so that they do not order too.)
            if (!shared_->store_certificate(share_name_, pem, next_expires, why))
              unshared(why);
            else if (holding_)
              shared_->unlock(share_name_);
          }
          io::log("listener %s: acme: certificate for %s issued, expires %s, renews at %s",
                  listener_.c_str(), join_domains().c_str(), format_time(next_expires).c_str(),
                  format_time(next).c_str());
          announced_ = true;
          on_certificate_();
          continue;
        }
        // Ordering again at once would loop: wait as after a failure.
        on_certificate_();
        error = "the new certificate is due for renewal already (it lacks a name, or this "
                "machine's clock is off)";
      }
      if (stopping()) {
        if (holding_) // the others need not wait for its expiry
          shared_->unlock(share_name_);
        return;
      }
      ++failures;
      failed_.fetch_add(1);
      // Backoff: 2 s doubling to an hour, and never past a quarter of what is
      // left; but not more often than a twentieth of the lifetime (at most a
      // minute), so that the last minutes do not hammer the ACME server.
      int64_t wait = std::min<int64_t>(int64_t(2) << std::min(failures - 1, 11), 3600);
      if (expires > now()) {
        int64_t floor = std::clamp<int64_t>(lifetime / 20, 1, 60);
        wait = std::max(floor, std::min(wait, (expires - now()) / 4));
      }
      if (holding_) { // the other instances wait as long as this one, and then some
        std::string why;
        shared_->lock(share_name_, std::chrono::seconds(wait + 60), why);
      }
      io::log(
          "listener %s: acme: order for %s failed: %s; trying again in %llds (%s)",
          listener_.c_str(), join_domains().c_str(), error.c_str(), static_cast<long long>(wait),
          expires > now() ? ("the current certificate serves until " + format_time(expires)).c_str()
                          : "no certificate yet");
      if (!sleep_until(now() + wait))
        return;
    }
  }

  void unshared(const std::string& why) {
    if (!said_unshared_)
      io::log("listener %s: acme: the tier's storage cannot be reached (%s)", listener_.c_str(),
              why.c_str());
    said_unshared_ = true;
  }

  // The tier's certificate, when it is newer than this instance's (another
  // instance ordered it); this instance's, when the tier has none yet.
  void take_shared() {
    std::string pem, why;
    if (!shared_->certificate(share_name_, pem, why))
      return unshared(why);
    said_unshared_ = false;
    config::TlsCertificate files = io::acme_certificate_files(acme_);
    std::string mine = read_file(files.cert);
    if (pem == mine)
      return;
    int64_t theirs_expire = 0, mine_expire = 0;
    bool theirs_ok = usable(pem, theirs_expire);
    bool mine_ok = usable(mine, mine_expire);
    if (mine_ok && (!theirs_ok || mine_expire > theirs_expire)) {
      // The tier lacks it (a Redis emptied, an instance joining), or has an
      // older one: this instance's goes there.
      if (!shared_->store_certificate(share_name_, mine, mine_expire, why))
        unshared(why);
      return;
    }
    if (!theirs_ok || (mine_ok && mine_expire >= theirs_expire))
      return;
    std::string error;
    if (!check_storage(acme_.storage, error) || !write_private(files.cert, pem, error)) {
      io::log("listener %s: acme: cannot store the tier's certificate: %s", listener_.c_str(),
              error.c_str());
      return;
    }
    io::log("listener %s: acme: certificate for %s taken from the tier, expires %s",
            listener_.c_str(), join_domains().c_str(), format_time(theirs_expire).c_str());
    announced_ = true;
    on_certificate_();
  }

  // Whether `pem` (key then chain) is a certificate for every domain with its
  // key; `expires` its notAfter.
  bool usable(const std::string& pem, int64_t& expires) const {
    if (pem.empty())
      return false;
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* key = bio ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(bio);
    bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    X509* cert = bio ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(bio);
    bool ok = key && cert && X509_check_private_key(cert, key) == 1;
    if (ok) {
      std::vector<std::string> names = io::certificate_names(cert);
      ok = std::all_of(acme_.domains.begin(), acme_.domains.end(), [&](const auto& d) {
        return std::find(names.begin(), names.end(), d) != names.end();
      });
      expires = io::not_after(cert);
    }
    ERR_clear_error();
    X509_free(cert);
    EVP_PKEY_free(key);
    return ok;
  }

  std::string join_domains() const {
    std::string out;
    for (const auto& d : acme_.domains)
      out += (out.empty() ? "" : ", ") + d;
    return out;
  }

  // ---- The protocol.

  bool fail(std::string& error, std::string what) {
    error = std::move(what);
    return false;
  }

  static std::string problem(const Response& r) {
    try {
      json j = json::parse(r.body);
      std::string out = "HTTP " + std::to_string(r.status);
      if (j.contains("type") && j["type"].is_string())
        out += " " + j["type"].get<std::string>();
      if (j.contains("detail") && j["detail"].is_string())
        out += ": " + j["detail"].get<std::string>();
      return out;
    } catch (const std::exception&) {
      return "HTTP " + std::to_string(r.status);
    }
  }

  bool fresh_nonce(std::string& error) {
    Response r;
    if (!http_.request("HEAD", new_nonce_, "", "", "", r, error))
      return false;
    nonce_ = r.header("replay-nonce");
    if (nonce_.empty())
      return fail(error, "the ACME server gave no Replay-Nonce");
    return true;
  }

  // A signed POST (payload empty: POST-as-GET). A badNonce answer is tried
  // again with the nonce it carries.
  bool post(const std::string& url, const std::string& payload, Response& r, std::string& error,
            const std::string& accept = "") {
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (nonce_.empty() && !fresh_nonce(error))
        return false;
      std::string header = R"({"alg":"ES256","nonce":")" + nonce_ + R"(","url":")" + url + "\",";
      header += kid_.empty() ? "\"jwk\":" + jwk_ + "}" : "\"kid\":\"" + kid_ + "\"}";
      nonce_.clear();
      std::string protected64 = b64url(header);
      std::string payload64 = b64url(payload);
      std::string signature;
      if (!sign_es256(account_key_, protected64 + "." + payload64, signature))
        return fail(error, "cannot sign with the account key: " + openssl_error());
      std::string body = R"({"protected":")" + protected64 + R"(","payload":")" + payload64 +
                         R"(","signature":")" + signature + "\"}";
      if (!http_.request("POST", url, "application/jose+json", body, accept, r, error))
        return false;
      nonce_ = r.header("replay-nonce");
      if (r.status == 400 &&
          r.body.find("urn:ietf:params:acme:error:badNonce") != std::string::npos)
        continue;
      return true;
    }
    return fail(error, "the ACME server refused 5 nonces in a row");
  }

  bool post_json(const std::string& url, const std::string& payload, json& out, Response& r,
                 std::string& error) {
    if (!post(url, payload, r, error))
      return false;
    if (r.status >= 300)
      return fail(error, url + ": " + problem(r));
    try {
      out = json::parse(r.body);
    } catch (const std::exception&) {
      return fail(error, url + ": the answer is not JSON");
    }
    return true;
  }

  bool load_account(std::string& error) {
    if (!check_storage(acme_.storage, error))
      return false;
    if (account_key_)
      return share_account(error);
    std::string path = acme_.storage + "/account.key";
    account_key_ = read_key(path);
    if (account_key_ &&
        (!EVP_PKEY_is_a(account_key_, "EC") || EVP_PKEY_get_bits(account_key_) != 256)) {
      EVP_PKEY_free(account_key_);
      account_key_ = nullptr;
      return fail(error, path + " is not a P-256 (ES256) key; lb signs with ES256: move it away "
                                "and lb makes a new account");
    }
    if (!account_key_) {
      if (::access(path.c_str(), F_OK) == 0)
        return fail(error, path + " holds no usable private key");
      account_key_ = io::new_ec_key();
      if (!account_key_)
        return fail(error, "cannot make an account key: " + openssl_error());
      if (!write_private(path, key_pem(account_key_), error)) {
        EVP_PKEY_free(account_key_);
        account_key_ = nullptr;
        return false;
      }
      io::log("listener %s: acme: new account key in %s", listener_.c_str(), path.c_str());
    }
    return use_account_key(error) && share_account(error);
  }

  bool use_account_key(std::string& error) {
    jwk_ = jwk_of(account_key_);
    if (jwk_.find("\"x\":\"\"") != std::string::npos ||
        jwk_.find("\"y\":\"\"") != std::string::npos)
      return fail(error, acme_.storage + "/account.key: cannot read the key's public point");
    thumbprint_ = b64url(sha256(jwk_));
    return true;
  }

  // With a tier: one account for all instances (the first one's key).
  bool share_account(std::string& error) {
    if (!shared_ || account_shared_)
      return true;
    std::string mine = key_pem(account_key_), pem = mine, why;
    if (!shared_->account_key(acme_.directory, pem, why)) {
      unshared(why);
      return true; // this instance's own account meanwhile
    }
    account_shared_ = true;
    if (pem == mine)
      return true;
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* theirs = bio ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(bio);
    ERR_clear_error();
    if (!theirs || !EVP_PKEY_is_a(theirs, "EC") || EVP_PKEY_get_bits(theirs) != 256) {
      EVP_PKEY_free(theirs);
      return fail(error, "the tier's account key for " + acme_.directory +
                             " is not a P-256 key: delete it from the store");
    }
    std::string path = acme_.storage + "/account.key";
    if (!write_private(path, pem, error)) {
      EVP_PKEY_free(theirs);
      return false;
    }
    EVP_PKEY_free(account_key_);
    account_key_ = theirs;
    kid_.clear();
    io::log("listener %s: acme: using the tier's account key (stored in %s)", listener_.c_str(),
            path.c_str());
    return use_account_key(error);
  }

  bool directory(std::string& error) {
    if (!http_ready_) {
      if (!http_.init(acme_.ca, error))
        return false;
      http_ready_ = true;
    }
    Response r;
    if (!http_.request("GET", acme_.directory, "", "", "application/json", r, error))
      return false;
    if (r.status != 200)
      return fail(error, acme_.directory + ": HTTP " + std::to_string(r.status));
    try {
      json j = json::parse(r.body);
      new_nonce_ = j.at("newNonce").get<std::string>();
      new_account_ = j.at("newAccount").get<std::string>();
      new_order_ = j.at("newOrder").get<std::string>();
    } catch (const std::exception&) {
      return fail(error, acme_.directory + ": not an ACME directory");
    }
    return true;
  }

  bool account(std::string& error) {
    if (!kid_.empty())
      return true;
    json payload = {{"termsOfServiceAgreed", true}};
    if (!acme_.email.empty())
      payload["contact"] = json::array({"mailto:" + acme_.email});
    Response r;
    if (!post(new_account_, payload.dump(), r, error))
      return false;
    if (r.status != 200 && r.status != 201)
      return fail(error, "new account: " + problem(r));
    kid_ = r.header("location");
    if (kid_.empty())
      return fail(error, "new account: no Location");
    if (r.status == 201)
      io::log("listener %s: acme: account %s created", listener_.c_str(), kid_.c_str());
    return true;
  }

  // Polls `url` (POST-as-GET) until its status is one of `done`.
  bool poll(const std::string& url, std::initializer_list<const char*> done, json& out,
            std::string& error) {
    // Up to 3 minutes, as often as the server's Retry-After says (0.5 s .. 10 s).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
    while (std::chrono::steady_clock::now() < deadline) {
      Response r;
      if (!post_json(url, "", out, r, error))
        return false;
      std::string status = out.value("status", "");
      for (const char* d : done)
        if (status == d)
          return true;
      if (status == "invalid") {
        std::string why;
        if (out.contains("challenges"))
          for (const auto& c : out["challenges"])
            if (c.contains("error"))
              why = c["error"].value("detail", "");
        if (out.contains("error"))
          why = out["error"].value("detail", why);
        return fail(error, url + " is invalid" + (why.empty() ? "" : ": " + why));
      }
      int wait_ms = 500;
      if (std::string after = r.header("retry-after");
          !after.empty() && std::isdigit(static_cast<unsigned char>(after[0])))
        wait_ms = static_cast<int>(std::clamp(std::atol(after.c_str()), 1L, 10L) * 1000);
      if (!sleep_ms(wait_ms))
        return fail(error, "stopping");
    }
    return fail(error, url + ": still not done after 3 minutes");
  }

  bool authorize(const std::string& url, std::string& error) {
    json authz;
    Response r;
    if (!post_json(url, "", authz, r, error))
      return false;
    if (authz.value("status", "") == "valid")
      return true;
    std::string domain = authz.contains("identifier") ? authz["identifier"].value("value", "") : "";
    std::transform(domain.begin(), domain.end(), domain.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    const char* type =
        acme_.challenge == config::Acme::Challenge::http_01 ? "http-01" : "tls-alpn-01";
    std::string token, challenge_url;
    for (const auto& c : authz.value("challenges", json::array()))
      if (c.value("type", "") == type) {
        token = c.value("token", "");
        challenge_url = c.value("url", "");
      }
    if (token.empty() || challenge_url.empty())
      return fail(error,
                  "the ACME server offers no " + std::string(type) + " challenge for " + domain);
    std::string key_authorization = token + "." + thumbprint_;
    io::AcmeChallenges& challenges = io::AcmeChallenges::instance();
    if (acme_.challenge == config::Acme::Challenge::http_01) {
      challenges.put_http(token, key_authorization);
    } else if (std::string why = challenges.put_alpn_authorization(domain, key_authorization);
               !why.empty()) {
      return fail(error, why);
    }
    bool http = acme_.challenge == config::Acme::Challenge::http_01;
    std::string field = http ? "http " + token : "alpn " + domain;
    // Taken down however the validation ends (an exception included).
    struct Unpublish {
      bool http;
      const std::string& token;
      const std::string& domain;
      SharedStorage* shared;
      const std::string& field;
      ~Unpublish() {
        if (http)
          io::AcmeChallenges::instance().remove_http(token);
        else
          io::AcmeChallenges::instance().remove_alpn(domain);
        if (shared)
          shared->withdraw_challenge(field);
      }
    } unpublish{http, token, domain, shared_.get(), field};
    // Every instance of the tier answers it before the CA is told to look:
    // its validation may reach any of them.
    if (std::string why; shared_ && !shared_->publish_challenge(field, key_authorization, why))
      unshared(why);
    json ignored;
    return post_json(challenge_url, "{}", ignored, r, error) && poll(url, {"valid"}, authz, error);
  }

  // The tier's lock, renewed through a long order; false when another
  // instance has taken it meanwhile (this order ran past the lock's life).
  bool keep_lock(std::string& error) {
    if (!holding_)
      return true;
    std::string why;
    if (shared_->lock(share_name_, order_lock_ttl, why) == 0) {
      holding_ = false;
      return fail(error, "another instance of the tier took the order over (this one ran past " +
                             std::to_string(order_lock_ttl.count()) + " s)");
    }
    return true;
  }

  bool order(std::string& error) {
    if (!load_account(error) || !directory(error) || !account(error))
      return false;
    json identifiers = json::array();
    for (const auto& d : acme_.domains)
      identifiers.push_back({{"type", "dns"}, {"value", d}});
    json order;
    Response r;
    if (!post_json(new_order_, json{{"identifiers", identifiers}}.dump(), order, r, error)) {
      // An account the server no longer knows is created again.
      if (r.body.find("accountDoesNotExist") != std::string::npos)
        kid_.clear();
      return false;
    }
    std::string order_url = r.header("location");
    if (order_url.empty())
      return fail(error, "new order: no Location");
    for (const auto& a : order.value("authorizations", json::array()))
      if (!keep_lock(error) || !a.is_string() || !authorize(a.get<std::string>(), error))
        return a.is_string() ? false : fail(error, "new order: a malformed authorization");
    // The certificate's own key: new for every order.
    EVP_PKEY* key = io::new_ec_key();
    if (!key)
      return fail(error, "cannot make a key: " + openssl_error());
    std::string csr = csr_der(key, acme_.domains);
    bool ok = !csr.empty();
    if (!ok)
      error = "cannot make the CSR";
    std::string finalize = order.value("finalize", "");
    ok = ok && keep_lock(error) &&
         post_json(finalize, json{{"csr", b64url(csr)}}.dump(), order, r, error) &&
         poll(order_url, {"valid"}, order, error);
    std::string chain;
    if (ok) {
      std::string cert_url = order.value("certificate", "");
      ok = post(cert_url, "", r, error, "application/pem-certificate-chain");
      if (ok && r.status != 200)
        ok = fail(error, "certificate: " + problem(r));
      chain = r.body;
    }
    if (ok) {
      // What is stored must be what the listener can serve.
      BIO* bio = BIO_new_mem_buf(chain.data(), static_cast<int>(chain.size()));
      X509* leaf = bio ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
      ok = leaf && X509_check_private_key(leaf, key) == 1;
      if (!ok)
        error = "the certificate from the ACME server does not match its key";
      X509_free(leaf);
      BIO_free(bio);
      ERR_clear_error();
    }
    if (ok) {
      config::TlsCertificate files = io::acme_certificate_files(acme_);
      ok = write_private(files.cert, key_pem(key) + chain, error);
    }
    EVP_PKEY_free(key);
    return ok;
  }

  const std::string listener_;
  const config::Acme acme_;
  std::function<void()> on_certificate_;
  std::shared_ptr<SharedStorage> shared_; // the tier's (cluster:), or none
  bool account_shared_ = false;           // the account key is the tier's
  std::string share_name_;                // the certificate's name in the store
  bool holding_ = false;                  // this instance holds the tier's lock on the order
  bool said_waiting_ = false;             // "another instance orders" logged
  bool said_unshared_ = false;            // "cannot reach the tier's storage" logged
  bool said_holding_off_ = false;         // "waiting for the tier's storage" logged
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::atomic<uint64_t> succeeded_{0};
  std::atomic<uint64_t> failed_{0};
  bool announced_ = false;

  InFlight in_flight_;
  Https http_{in_flight_};
  bool http_ready_ = false;
  EVP_PKEY* account_key_ = nullptr;
  std::string jwk_, thumbprint_, kid_, nonce_;
  std::string new_nonce_, new_account_, new_order_;
};

Manager::Manager(std::function<void()> on_certificate)
    : on_certificate_(std::move(on_certificate)) {}

Manager::~Manager() { stop(); }

void Manager::update(const config::Config& config) {
  std::vector<std::unique_ptr<Client>> keep, gone;
  std::vector<std::pair<std::string, config::Acme>> wanted;
  for (const auto& l : config.listeners)
    if (l.tls.enabled && l.tls.acme)
      wanted.emplace_back(l.name, *l.tls.acme);
  std::lock_guard lock(mutex_);
  for (auto& c : clients_) {
    bool same = std::any_of(wanted.begin(), wanted.end(), [&](const auto& w) {
      return w.first == c->listener() && w.second == c->settings();
    });
    (same ? keep : gone).push_back(std::move(c));
  }
  for (auto& c : gone) {
    c->stop();
    retired_.push_back(c->count());
  }
  for (const auto& [name, acme] : wanted) {
    bool running = std::any_of(keep.begin(), keep.end(), [&](const auto& c) {
      return c->listener() == name && c->settings() == acme;
    });
    if (!running)
      keep.push_back(std::make_unique<Client>(name, acme, on_certificate_, shared_));
  }
  clients_ = std::move(keep);
}

void Manager::stop() {
  std::lock_guard lock(mutex_);
  for (auto& c : clients_) {
    c->stop();
    retired_.push_back(c->count());
  }
  clients_.clear();
}

std::vector<RenewalCount> Manager::counts() const {
  std::lock_guard lock(mutex_);
  std::vector<RenewalCount> out;
  auto add = [&](const RenewalCount& c) {
    for (auto& o : out)
      if (o.listener == c.listener) {
        o.succeeded += c.succeeded;
        o.failed += c.failed;
        return;
      }
    out.push_back(c);
  };
  for (const auto& c : retired_)
    add(c);
  for (const auto& c : clients_)
    add(c->count());
  return out;
}

} // namespace lb::acme
