#include "lb/http/message.hpp"

namespace lb::http {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (size_t i = 0; i < a.size(); ++i) {
    unsigned char x = static_cast<unsigned char>(a[i]);
    unsigned char y = static_cast<unsigned char>(b[i]);
    if (static_cast<unsigned>(x - 'A') < 26u)
      x += 32;
    if (static_cast<unsigned>(y - 'A') < 26u)
      y += 32;
    if (x != y)
      return false;
  }
  return true;
}

const char* Head::end_of_fields() const {
  // The head ends with CRLF CRLF (or LF LF when tolerated): step back over one line end.
  const char* p = end;
  if (p > start && p[-1] == '\n')
    --p;
  if (p > start && p[-1] == '\r')
    --p;
  return p;
}

const Header* Head::find_present(Field f) const {
  for (unsigned i = 0; i < count; ++i)
    if (headers[i].field == f)
      return &headers[i];
  return nullptr;
}

} // namespace lb::http

namespace lb::http {

std::string_view find_header(const Head& head, std::string_view name) {
  for (unsigned i = 0; i < head.count; ++i)
    if (iequals(head.headers[i].name.view(), name))
      return head.headers[i].value.view();
  return {};
}

std::string_view find_cookie(const Head& head, std::string_view name) {
  for (unsigned i = 0; i < head.count; ++i) {
    if (!iequals(head.headers[i].name.view(), "cookie"))
      continue;
    std::string_view v = head.headers[i].value.view();
    while (!v.empty()) {
      size_t semi = v.find(';');
      std::string_view pair = v.substr(0, semi);
      v = semi == std::string_view::npos ? std::string_view() : v.substr(semi + 1);
      while (!pair.empty() && pair.front() == ' ')
        pair.remove_prefix(1);
      if (pair.size() > name.size() && pair.substr(0, name.size()) == name &&
          pair[name.size()] == '=') {
        std::string_view value = pair.substr(name.size() + 1);
        while (!value.empty() && value.back() == ' ')
          value.remove_suffix(1);
        if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
          value = value.substr(1, value.size() - 2);
        return value;
      }
    }
  }
  return {};
}

bool has_token(std::string_view v, std::string_view token) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    std::string_view t = v.substr(0, comma);
    v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t'))
      t.remove_prefix(1);
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t'))
      t.remove_suffix(1);
    if (iequals(t, token))
      return true;
  }
  return false;
}

void mark_connection_options(Head& head) {
  if (!head.has(Field::connection))
    return;
  for (unsigned i = 0; i < head.count; ++i) {
    if (head.headers[i].field != Field::connection)
      continue;
    std::string_view v = head.headers[i].value.view();
    // The usual whole value of browsers and HTTP/1.0 keep-alive clients,
    // without taking it apart (the loop below skips it too).
    if (iequals(v, "keep-alive"))
      continue;
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view token = v.substr(0, comma);
      v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
      while (!token.empty() && (token.front() == ' ' || token.front() == '\t'))
        token.remove_prefix(1);
      while (!token.empty() && (token.back() == ' ' || token.back() == '\t'))
        token.remove_suffix(1);
      // Options naming fields the parser marks hop-by-hop anyway: the usual
      // "Connection: keep-alive" of browsers costs no scan of the head.
      if (token.empty() || iequals(token, "keep-alive") || iequals(token, "upgrade") ||
          iequals(token, "te"))
        continue;
      for (unsigned j = 0; j < head.count; ++j) {
        Header& h = head.headers[j];
        // The framing and Host stay whatever Connection says: dropping them
        // would forward a body the next hop cannot delimit (request smuggling).
        if (h.field == Field::content_length || h.field == Field::transfer_encoding ||
            h.field == Field::host || h.field == Field::request_id)
          continue;
        if (iequals(h.name.view(), token))
          h.hop_by_hop = true;
      }
    }
  }
}

} // namespace lb::http
