#include "lb/proxy/local_answer.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>

namespace lb::proxy {

namespace {

struct Phrase {
  int status;
  std::string_view text;
};
// RFC 9110 §15 (and 429, RFC 6585).
constexpr Phrase phrases[] = {
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {203, "Non-Authoritative Information"},
    {205, "Reset Content"},
    {206, "Partial Content"},
    {300, "Multiple Choices"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {402, "Payment Required"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {406, "Not Acceptable"},
    {407, "Proxy Authentication Required"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {412, "Precondition Failed"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {416, "Range Not Satisfiable"},
    {417, "Expectation Failed"},
    {421, "Misdirected Request"},
    {422, "Unprocessable Content"},
    {426, "Upgrade Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {451, "Unavailable For Legal Reasons"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};
constexpr size_t max_phrase = [] {
  size_t n = 0;
  for (const Phrase& p : phrases)
    n = std::max(n, p.text.size());
  return n;
}();
constexpr size_t max_number = 20; // digits of a uint64_t

// Appends to a buffer whose size the caller proved large enough (the
// static_asserts below); the bound is checked again as a last resort.
class Writer {
public:
  Writer(char* p, size_t size) : start_(p), p_(p), end_(p + size) {}
  void put(std::string_view s) {
    size_t n = std::min<size_t>(s.size(), static_cast<size_t>(end_ - p_));
    std::memcpy(p_, s.data(), n);
    p_ += n;
  }
  void put(uint64_t v) { p_ = std::to_chars(p_, end_, v).ptr; }
  std::string_view text() const { return {start_, static_cast<size_t>(p_ - start_)}; }
  char* end() const { return p_; }

private:
  char* start_;
  char* p_;
  char* end_;
};

constexpr std::string_view allow =
    "Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\n"; // all but CONNECT

// The error page's bounds: its body and its head.
constexpr size_t error_body_max = 3 + 1 + max_phrase + 2 + AnswerBuffer::max_reason +
                                  std::string_view(" (request id ").size() +
                                  AnswerBuffer::max_request_id + 2;
constexpr size_t error_head_max =
    std::string_view("HTTP/1.1 ").size() + 3 + 1 + max_phrase + 2 +
    std::string_view("Content-Type: text/plain; charset=utf-8\r\n").size() +
    std::string_view("Content-Length: \r\n").size() + max_number +
    std::max<size_t>(allow.size(), // (405 and 429 are never one answer)
                     std::string_view("Retry-After: \r\nRateLimit-Policy: ;w=;burst=\r\n"
                                      "RateLimit: limit=, remaining=0, reset=\r\n")
                             .size() +
                         6 * max_number) +
    std::string_view("Connection: keep-alive\r\n\r\n").size();
static_assert(error_body_max + error_head_max <= AnswerBuffer::capacity);

constexpr std::string_view maintenance_page =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>Down for maintenance</title>"
    "<style>body{font-family:system-ui,sans-serif;margin:15vh auto;max-width:34em;padding:0 1em;"
    "color:#222}h1{font-size:1.6em}p{color:#555}small{color:#888}</style></head><body>"
    "<h1>Down for maintenance</h1><p>This service is being worked on and will be back "
    "shortly. Please try again in a few minutes.</p>";
constexpr std::string_view id_before = "<p><small>Request id ";
constexpr std::string_view id_after = "</small></p>";
constexpr std::string_view page_end = "</body></html>\n";
constexpr std::string_view maintenance_head_start =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html; charset=utf-8\r\n"
    "Content-Length: ";
constexpr std::string_view maintenance_fields = "\r\nRetry-After: 120\r\nX-Lb-Maintenance: ";
// The id twice (its copy for the page, and in its header), the pool and the header name.
constexpr size_t maintenance_max = AnswerBuffer::max_request_id + maintenance_head_start.size() +
                                   max_number + maintenance_fields.size() + AnswerBuffer::max_name +
                                   2 + AnswerBuffer::max_name + 2 + AnswerBuffer::max_request_id +
                                   2 + std::string_view("Connection: keep-alive\r\n\r\n").size();
static_assert(maintenance_max <= AnswerBuffer::capacity);

constexpr size_t final_recipient_max =
    std::string_view("HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: \r\n")
        .size() +
    max_number + std::string_view("Connection: keep-alive\r\n\r\n").size();
static_assert(final_recipient_max <= AnswerBuffer::capacity);

constexpr std::string_view keep_alive_end = "Connection: keep-alive\r\n\r\n";
constexpr std::string_view close_end = "Connection: close\r\n\r\n";

constexpr size_t redirect_max = std::string_view("HTTP/1.1 308 \r\nLocation: https://").size() +
                                max_phrase + std::string_view(":65535?").size() +
                                std::string_view("\r\nContent-Length: 0\r\n").size() +
                                keep_alive_end.size();
static_assert(redirect_max <= AnswerBuffer::capacity);

constexpr size_t fixed_max = std::string_view("HTTP/1.1 599 \r\nContent-Type: \r\n").size() +
                             max_phrase + AnswerBuffer::max_name +
                             std::string_view("Content-Length: \r\n").size() + max_number +
                             keep_alive_end.size();
static_assert(fixed_max <= AnswerBuffer::capacity);

std::string_view cut(std::string_view s, size_t n) { return s.substr(0, n); }

bool plainly_an_id(std::string_view id) {
  if (id.empty() || id.size() > AnswerBuffer::max_request_id)
    return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
           c == ':';
  });
}

} // namespace

std::string_view reason_phrase(int status) {
  for (const Phrase& p : phrases)
    if (p.status == status)
      return p.text;
  return "Error";
}

void write_error(const ErrorAnswer& a, AnswerBuffer& buf, Outbox& out) {
  std::string_view phrase = reason_phrase(a.status);
  uint64_t status = static_cast<uint64_t>(std::clamp(a.status, 100, 999));
  // The body first, at the end of the buffer's head room.
  char* body_start = buf.data + error_head_max;
  Writer body(body_start, error_body_max);
  body.put(status);
  body.put(" ");
  body.put(phrase);
  body.put(": ");
  body.put(cut(a.reason, AnswerBuffer::max_reason));
  body.put(" (request id ");
  body.put(cut(a.request_id, AnswerBuffer::max_request_id));
  body.put(")\n");
  Writer head(buf.data, error_head_max);
  head.put("HTTP/1.1 ");
  head.put(status);
  head.put(" ");
  head.put(phrase);
  head.put("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
  head.put(static_cast<uint64_t>(body.text().size()));
  head.put("\r\n");
  if (a.status == 405)
    head.put(allow);
  else if (const RateLimitFields* r = a.rate_limit) {
    head.put("Retry-After: ");
    head.put(uint64_t{r->retry_after});
    head.put("\r\nRateLimit-Policy: ");
    head.put(uint64_t{r->limit});
    head.put(";w=");
    head.put(uint64_t{r->window_s});
    if (r->burst) {
      head.put(";burst=");
      head.put(uint64_t{r->burst});
    }
    head.put("\r\nRateLimit: limit=");
    head.put(uint64_t{r->limit});
    head.put(", remaining=0, reset=");
    head.put(uint64_t{r->retry_after});
    head.put("\r\n");
  }
  head.put(a.keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  out.clear();
  out.add(head.text());
  if (!a.head_request)
    out.add(body.text());
}

int grpc_status_for(int status) {
  switch (status) {
  case 408:
  case 504:
    return 4;
  case 502:
  case 503:
    return 14;
  case 413:
  case 414:
  case 429:
  case 431:
    return 8;
  case 403:
    return 7;
  case 404:
    return 12;
  case 400:
    return 13;
  default:
    return 2;
  }
}

namespace {
constexpr std::string_view grpc_head =
    "HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nGrpc-Status: ";
constexpr std::string_view grpc_message_field = "\r\nGrpc-Message: ";
constexpr std::string_view grpc_id = " (request id ";
constexpr std::string_view grpc_length = "\r\nContent-Length: 0\r\n";
// The message percent-encoded: at most 3 bytes per byte of the reason and
// the id, each cut to these first.
constexpr size_t grpc_max_reason = 160, grpc_max_id = 64;
constexpr size_t grpc_max = grpc_head.size() + max_number + grpc_message_field.size() +
                            3 * (grpc_max_reason + grpc_id.size() + grpc_max_id + 1) +
                            grpc_length.size() + keep_alive_end.size();
static_assert(grpc_max <= AnswerBuffer::capacity);

// grpc-message's encoding: printable ASCII but '%' as is, the rest %XX.
void put_percent_encoded(Writer& w, std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u <= 0x7e && c != '%') {
      w.put(std::string_view(&c, 1));
    } else {
      char e[3] = {'%', hex[u >> 4], hex[u & 15]};
      w.put(std::string_view(e, 3));
    }
  }
}
} // namespace

void write_grpc_error(const GrpcAnswer& a, AnswerBuffer& buf, Outbox& out) {
  Writer w(buf.data, AnswerBuffer::capacity);
  w.put(grpc_head);
  w.put(static_cast<uint64_t>(std::clamp(a.grpc_status, 0, 99)));
  w.put(grpc_message_field);
  // Cut so that the encoded message fits whatever its bytes are.
  put_percent_encoded(w, cut(a.message, grpc_max_reason));
  w.put(grpc_id);
  put_percent_encoded(w, cut(a.request_id, grpc_max_id));
  w.put(")");
  w.put(grpc_length);
  w.put(a.keep_alive ? keep_alive_end : close_end);
  out.clear();
  out.add(w.text());
}

void write_maintenance(const MaintenanceAnswer& a, AnswerBuffer& buf, Outbox& out) {
  std::string_view id =
      !a.request_id_header.empty() && plainly_an_id(a.request_id) ? a.request_id : "";
  // The id's bytes may live in the request's buffer: the page takes a copy.
  Writer w(buf.data, AnswerBuffer::capacity);
  w.put(id);
  std::string_view id_copy = w.text();
  size_t length = maintenance_page.size() + page_end.size() +
                  (id.empty() ? 0 : id_before.size() + id.size() + id_after.size());
  char* head_start = w.end();
  w.put(maintenance_head_start);
  w.put(static_cast<uint64_t>(length));
  w.put(maintenance_fields);
  w.put(cut(a.pool, AnswerBuffer::max_name));
  w.put("\r\n");
  if (!id.empty()) {
    w.put(cut(a.request_id_header, AnswerBuffer::max_name));
    w.put(": ");
    w.put(id_copy);
    w.put("\r\n");
  }
  w.put(a.keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  out.clear();
  out.add(head_start, static_cast<size_t>(w.end() - head_start));
  if (a.head_request)
    return;
  out.add(maintenance_page);
  if (!id.empty()) {
    out.add(id_before);
    out.add(id_copy);
    out.add(id_after);
  }
  out.add(page_end);
}

void write_redirect(const RedirectAnswer& a, AnswerBuffer& buf, Outbox& out) {
  Writer w(buf.data, redirect_max);
  w.put("HTTP/1.1 ");
  w.put(static_cast<uint64_t>(a.code));
  w.put(" ");
  w.put(reason_phrase(a.code));
  w.put("\r\nLocation: ");
  w.put(a.scheme == "https" ? std::string_view("https://") : std::string_view("http://"));
  std::string_view start = w.text();
  char* port_start = w.end();
  if (a.port) {
    w.put(":");
    w.put(static_cast<uint64_t>(a.port));
  }
  std::string_view port(port_start, static_cast<size_t>(w.end() - port_start));
  char* mark = w.end();
  w.put("?");
  std::string_view question(mark, 1);
  mark = w.end();
  w.put("\r\nContent-Length: 0\r\n");
  w.put(a.keep_alive ? keep_alive_end : close_end);
  std::string_view end(mark, static_cast<size_t>(w.end() - mark));
  out.clear();
  out.add(start);
  out.add(a.host);
  out.add(port);
  out.add(a.path_before);
  out.add(a.path_after);
  if (a.has_query) {
    out.add(question);
    out.add(a.query);
  }
  out.add(end);
}

void write_fixed(const FixedAnswer& a, AnswerBuffer& buf, Outbox& out) {
  Writer w(buf.data, fixed_max);
  w.put("HTTP/1.1 ");
  w.put(static_cast<uint64_t>(std::clamp(a.status, 100, 999)));
  w.put(" ");
  w.put(reason_phrase(a.status));
  w.put("\r\nContent-Type: ");
  w.put(cut(a.content_type, AnswerBuffer::max_name));
  w.put("\r\nContent-Length: ");
  w.put(static_cast<uint64_t>(a.body.size()));
  w.put("\r\n");
  w.put(a.keep_alive ? keep_alive_end : close_end);
  out.clear();
  out.add(w.text());
  if (!a.head_request)
    out.add(a.body);
}

bool write_final_recipient(const http::Head& request, bool keep_alive, AnswerBuffer& buf,
                           Outbox& out) {
  const bool trace = request.method.view() == "TRACE";
  // TRACE: every field but those that carry credentials, in the order received.
  auto echo = [&](auto&& part) {
    const char* seg = request.start;
    for (unsigned i = 0; i < request.count; ++i) {
      const http::Header& h = request.headers[i];
      std::string_view name = h.name.view();
      if (http::iequals(name, "cookie") || http::iequals(name, "authorization") ||
          http::iequals(name, "proxy-authorization")) {
        part(seg, static_cast<size_t>(h.line_start - seg));
        seg = h.line_end;
      }
    }
    part(seg, static_cast<size_t>(request.end - seg));
  };
  size_t length = 0;
  if (trace)
    echo([&](const char*, size_t n) { length += n; });
  Writer w(buf.data, final_recipient_max);
  w.put("HTTP/1.1 200 OK\r\n");
  if (trace)
    w.put("Content-Type: message/http\r\n");
  w.put("Content-Length: ");
  w.put(static_cast<uint64_t>(length));
  w.put(keep_alive ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
  out.clear();
  bool ok = out.add(w.text());
  if (trace)
    echo([&](const char* p, size_t n) { ok &= out.add(p, n); });
  return ok;
}

} // namespace lb::proxy
