#include "lb/http/parser.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace lb::http {

namespace {

Parser& self(llhttp_t* p) { return *static_cast<Parser*>(p->data); }

// Extends a span with the next piece of the same token: pieces arrive in order
// from one contiguous buffer, so the span simply grows to the piece's end.
void extend(Span& s, const char* at, size_t len) {
  if (!s.p)
    s.p = at;
  s.n = static_cast<uint32_t>(at + len - s.p);
}

// What a byte may be, looked up once per byte on the hot path.
enum : uint8_t {
  kToken = 1,      // tchar (RFC 9110 §5.6.2)
  kHostChar = 2,   // in a Host value: reg-name characters, an IP literal, a port
  kNotInValue = 4, // CR, LF, NUL: never inside a field value
};

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alnum)
      t[c] |= kToken | kHostChar;
  }
  for (unsigned char c : std::string_view("!#$%&'*+-.^_`|~"))
    t[c] |= kToken;
  for (unsigned char c : std::string_view("-._~!$&'()*+,;=:[]%"))
    t[c] |= kHostChar;
  t['\r'] |= kNotInValue;
  t['\n'] |= kNotInValue;
  t[0] |= kNotInValue;
  return t;
}

constexpr std::array<uint8_t, 256> kClasses = make_classes();

inline bool has_class(char c, uint8_t cls) { return kClasses[static_cast<unsigned char>(c)] & cls; }

// Whether a token equals a lowercase name (letters and '-') of the same
// length, whatever the token's case. For a token character, c | 0x20 is its
// lowercase when c is a letter, and no other token character becomes a
// letter or '-' that way.
template <size_t N> bool is_name(std::string_view token, const char (&name)[N]) {
  for (size_t i = 0; i + 1 < N; ++i)
    if ((token[i] | 0x20) != name[i])
      return false;
  return true;
}

Span trim(Span s) {
  while (s.n && (s.p[0] == ' ' || s.p[0] == '\t'))
    ++s.p, --s.n;
  while (s.n && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t'))
    --s.n;
  return s;
}

} // namespace

// The callbacks, one set per kind shared by every parser (not a copy in
// each: fewer cache lines touched per message).
const llhttp_settings_t* Parser::settings_for(Kind kind) {
  static const llhttp_settings_t table[2] = {make_settings(Kind::request),
                                             make_settings(Kind::response)};
  return &table[kind == Kind::request ? 0 : 1];
}

llhttp_settings_t Parser::make_settings(Kind kind) {
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_message_begin = on_message_begin;
  if (kind == Kind::request) {
    settings.on_method = on_method;
    settings.on_url = on_url;
  } else {
    settings.on_version = [](llhttp_t* p, const char* at, size_t) {
      Parser& s = self(p);
      // "HTTP/" precedes the version digits on a status line.
      if (!s.head_.start)
        s.head_.start = at - 5;
      return 0;
    };
  }
  settings.on_header_field = on_header_field;
  settings.on_header_field_complete = on_header_field_complete;
  settings.on_header_value = on_header_value;
  settings.on_header_value_complete = on_header_value_complete;
  settings.on_headers_complete = on_headers_complete;
  settings.on_url_complete = [](llhttp_t* p) {
    self(p).target_complete_ = true;
    return 0;
  };
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
  return settings;
}

Parser::Parser(Kind kind) : kind_(kind) {
  llhttp_init(&parser_, kind == Kind::request ? HTTP_REQUEST : HTTP_RESPONSE, settings_for(kind));
  parser_.data = this;
}

// Whether [p, end) continues a request line with a well-formed method token
// (from p on), target and HTTP/1.x version: then an unknown method is a 501,
// not a malformed request (RFC 9110 §15.6.2).
static bool well_formed_request_line(const char* p, const char* end) {
  while (p < end && has_class(*p, kToken))
    ++p;
  if (p == end || *p++ != ' ')
    return false;
  const char* target = p;
  while (p<end&& static_cast<unsigned char>(*p)> ' ' && *p != 0x7f)
    ++p;
  if (p == target || p == end || *p++ != ' ')
    return false;
  std::string_view rest(p, static_cast<size_t>(end - p));
  return rest.size() >= 10 && rest.substr(0, 5) == "HTTP/" && rest[5] == '1' && rest[6] == '.' &&
         (rest[7] == '0' || rest[7] == '1') && rest.substr(8, 2) == "\r\n";
}

Parser::Result Parser::feed(const char* p, const char* end) {
  for (;;) {
    llhttp_errno_t err = llhttp_execute(&parser_, p, static_cast<size_t>(end - p));
    switch (err) {
    case HPE_OK:
      return {Event::need_more, end};
    case HPE_PAUSED: {
      const char* stop = llhttp_get_error_pos(&parser_);
      llhttp_resume(&parser_);
      if (in_head_) {
        end_head(stop);
        return {Event::head_complete, stop};
      }
      return {Event::message_complete, stop};
    }
    case HPE_PAUSED_UPGRADE: {
      // llhttp stops after a message that asked to switch protocols. Whether it
      // does is the backend's answer (101 or not), which the caller handles; if
      // the caller feeds more, it is HTTP again.
      const char* stop = llhttp_get_error_pos(&parser_);
      llhttp_resume_after_upgrade(&parser_);
      upgrade_ = true;
      if (in_message_) {
        in_message_ = false;
        return {Event::message_complete, stop};
      }
      p = stop;
      continue;
    }
    default:
      if (!error_reason_)
        error_reason_ = llhttp_get_error_reason(&parser_);
      if (too_many_headers_)
        error_reason_ = "too many header fields";
      error_status_ = too_many_headers_ ? 431 : 400;
      if (err == HPE_INVALID_METHOD &&
          well_formed_request_line(llhttp_get_error_pos(&parser_), end)) {
        error_status_ = 501;
        error_reason_ = "unknown method (methods are case-sensitive)";
      }
      return {Event::error, llhttp_get_error_pos(&parser_)};
    }
  }
}

void Parser::reset() {
  llhttp_reset(&parser_);
  in_message_ = false;
  in_head_ = false;
  body_until_eof_ = false;
  upgrade_ = false;
  too_many_headers_ = false;
  error_reason_ = nullptr;
}

uint64_t Parser::body_left() const {
  bool by_length = (parser_.flags & F_CONTENT_LENGTH) && !(parser_.flags & F_CHUNKED);
  return in_message_ && !in_head_ && !body_until_eof_ && by_length ? parser_.content_length : 0;
}

void Parser::skip_body(uint64_t n) {
  n = std::min<uint64_t>(n, body_left());
  parser_.content_length -= n;
  body_bytes_ += n;
  if (parser_.content_length == 0)
    in_message_ = false; // (the next message starts from reset())
}

bool Parser::finish_at_eof() {
  if (!in_message_)
    return true;
  llhttp_errno_t err = llhttp_finish(&parser_);
  if (err != HPE_OK && err != HPE_PAUSED)
    return false; // on_message_complete pauses
  return !in_message_;
}

void Parser::end_head(const char* stop) {
  in_head_ = false;
  head_.end = stop;
  // Each field line runs to the start of the next one; the last to the empty line.
  for (unsigned i = 0; i + 1 < head_.count; ++i)
    head_.headers[i].line_end = head_.headers[i + 1].line_start;
  if (head_.count)
    head_.headers[head_.count - 1].line_end = head_.end_of_fields();
}

int Parser::on_message_begin(llhttp_t* p) {
  Parser& s = self(p);
  s.head_.clear();
  s.current_ = nullptr;
  s.in_message_ = true;
  s.in_head_ = true;
  s.body_until_eof_ = false;
  s.upgrade_ = false;
  s.body_bytes_ = 0;
  s.error_reason_ = nullptr;
  s.target_complete_ = false;
  return 0;
}

int Parser::on_method(llhttp_t* p, const char* at, size_t len) {
  Parser& s = self(p);
  if (!s.head_.start)
    s.head_.start = at;
  extend(s.head_.method, at, len);
  return 0;
}

int Parser::on_url(llhttp_t* p, const char* at, size_t len) {
  extend(self(p).head_.target, at, len);
  return 0;
}

int Parser::on_header_field(llhttp_t* p, const char* at, size_t len) {
  Parser& s = self(p);
  if (!s.in_head_)
    return 0; // a trailer field: forwarded as body bytes, not kept
  if (!s.current_) {
    if (s.head_.count == max_headers) {
      s.too_many_headers_ = true;
      return -1;
    }
    s.current_ = &s.head_.headers[s.head_.count++];
    *s.current_ = Header{{}, {}, at, nullptr, Field::other, false};
  }
  extend(s.current_->name, at, len);
  return 0;
}

// RFC 9110 §5.6.2: a field name is a token.
static bool is_token(std::string_view s) {
  if (s.empty())
    return false;
  for (char c : s)
    if (!has_class(c, kToken))
      return false;
  return true;
}

int Parser::on_header_field_complete(llhttp_t* p) {
  Parser& s = self(p);
  if (!s.in_head_)
    return 0; // a trailer field: forwarded as body bytes, not kept
  if (!is_token(s.current_->name.view())) {
    s.error_reason_ = "invalid header field name";
    return -1;
  }
  s.current_->field = s.classify(s.current_->name.view());
  s.head_.fields |= 1u << static_cast<unsigned>(s.current_->field);
  return 0;
}

int Parser::on_header_value(llhttp_t* p, const char* at, size_t len) {
  Parser& s = self(p);
  if (!s.in_head_)
    return 0; // a trailer field: forwarded as body bytes, not kept
  extend(s.current_->value, at, len);
  return 0;
}

int Parser::on_header_value_complete(llhttp_t* p) {
  Parser& s = self(p);
  if (!s.in_head_)
    return 0; // a trailer field: forwarded as body bytes, not kept
  Header& h = *s.current_;
  if (!h.value.p)
    h.value.p = h.name.end() + 1; // empty value: anchor it after the colon
  // A folded line (obs-fold) or a stray CR/LF inside a value: RFC 9112 §5.2 lets a
  // proxy refuse it, and we do, rather than forward a line others may split.
  for (uint32_t i = 0; i < h.value.n; ++i) {
    char c = h.value.p[i];
    if (has_class(c, kNotInValue)) {
      s.error_reason_ = c == '\0' ? "NUL in a header value" : "folded or broken header line";
      return -1;
    }
  }
  h.value = trim(h.value);
  switch (h.field) {
  case Field::connection:
  case Field::keep_alive:
  case Field::proxy_connection:
  case Field::te:
  case Field::upgrade:
    h.hop_by_hop = true;
    break;
  default:
    break;
  }
  s.current_ = nullptr;
  return 0;
}

int Parser::on_headers_complete(llhttp_t* p) { return self(p).headers_complete(); }

int Parser::headers_complete() {
  head_.major = llhttp_get_http_major(&parser_);
  head_.minor = llhttp_get_http_minor(&parser_);
  head_.status = kind_ == Kind::response ? llhttp_get_status_code(&parser_) : 0;
  head_.chunked = (parser_.flags & F_CHUNKED) != 0;
  head_.has_content_length = (parser_.flags & F_CONTENT_LENGTH) != 0;
  head_.content_length = head_.has_content_length ? parser_.content_length : 0;
  if (const char* why = check_framing()) {
    error_reason_ = why;
    return -1;
  }
  // RFC 9112 §3: method SP request-target SP HTTP-version. llhttp lets more
  // spaces through; the line goes to the backend as received, and a backend
  // that splits it otherwise must not see a different request.
  // (Other versions are answered 505 by the session, whatever the spacing.)
  if (kind_ == Kind::request && head_.major == 1 &&
      (head_.method.end() + 1 != head_.target.p || head_.target.end()[0] != ' ' ||
       head_.target.end()[1] != 'H')) {
    error_reason_ = "request line: its parts must be separated by single spaces";
    return -1;
  }
  if (kind_ == Kind::response) {
    if (head_.major != 1) {
      error_reason_ = "response is not HTTP/1.x";
      return -1;
    }
    if (head_.status < 100 || head_.status > 599) {
      error_reason_ = "invalid status code";
      return -1;
    }
    // RFC 9112 §6.3: a response to HEAD, a 1xx, 204 or 304 ends at its head,
    // whatever Content-Length or Transfer-Encoding it carries.
    if (head_request_ || head_.status < 200 || head_.status == 204 || head_.status == 304)
      parser_.flags |= F_SKIPBODY;
  }
  head_.keep_alive = llhttp_should_keep_alive(&parser_) != 0;
  body_until_eof_ = llhttp_message_needs_eof(&parser_) != 0;
  return HPE_PAUSED;
}

int Parser::on_body(llhttp_t* p, const char* at, size_t len) {
  Parser& s = self(p);
  s.body_bytes_ += len;
  if (s.dechunk_out_) {
    // The decoded bytes only ever move down, over framing already parsed.
    std::memmove(s.dechunk_out_, at, len);
    s.dechunk_out_ += len;
  }
  return 0;
}

int Parser::on_message_complete(llhttp_t* p) {
  Parser& s = self(p);
  s.in_message_ = false;
  return HPE_PAUSED;
}

// Framing rules llhttp leaves to us (RFC 9112 §6.1, §3.2). Returns why the head
// is refused, or nullptr.
const char* Parser::check_framing() const {
  if (kind_ != Kind::request)
    return nullptr;
  unsigned hosts = 0;
  for (unsigned i = 0; i < head_.count; ++i) {
    const Header& h = head_.headers[i];
    if (h.field == Field::transfer_encoding && head_.major == 1 && head_.minor == 0)
      return "Transfer-Encoding in an HTTP/1.0 request";
    if (h.field != Field::host)
      continue;
    if (++hosts > 1)
      return "more than one Host header";
    // uri-host [ ":" port ]: reg-name characters, an IP literal, digits.
    for (char c : h.value.view())
      if (!has_class(c, kHostChar))
        return "invalid Host header";
  }
  if (head_.major == 1 && head_.minor == 1 && hosts == 0)
    return "missing Host header";
  return nullptr;
}

Field Parser::classify(std::string_view n) const {
  if (n.size() == request_id_name_.size() && !n.empty() && iequals(n, request_id_name_))
    return Field::request_id;
  switch (n.size()) {
  case 2:
    if (is_name(n, "te"))
      return Field::te;
    break;
  case 3:
    if (is_name(n, "via"))
      return Field::via;
    break;
  case 4:
    if (is_name(n, "host"))
      return Field::host;
    break;
  case 7:
    if (is_name(n, "trailer"))
      return Field::trailer;
    if (is_name(n, "upgrade"))
      return Field::upgrade;
    break;
  case 10:
    if (is_name(n, "connection"))
      return Field::connection;
    if (is_name(n, "keep-alive"))
      return Field::keep_alive;
    break;
  case 12:
    if (is_name(n, "max-forwards"))
      return Field::max_forwards;
    break;
  case 14:
    if (is_name(n, "content-length"))
      return Field::content_length;
    break;
  case 15:
    if (is_name(n, "x-forwarded-for"))
      return Field::x_forwarded_for;
    break;
  case 16:
    if (is_name(n, "proxy-connection"))
      return Field::proxy_connection;
    if (is_name(n, "x-forwarded-host"))
      return Field::x_forwarded_host;
    break;
  case 17:
    if (is_name(n, "transfer-encoding"))
      return Field::transfer_encoding;
    if (is_name(n, "x-forwarded-proto"))
      return Field::x_forwarded_proto;
    break;
  case 23:
    if (is_name(n, "x-forwarded-client-cert"))
      return Field::x_forwarded_client_cert;
    break;
  }
  return Field::other;
}

} // namespace lb::http
