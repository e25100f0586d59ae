#include "lb/proxy/header_rules.hpp"

#include <algorithm>
#include <cstdio>

namespace lb::proxy {

using http::Field;

namespace {

void set_hop_by_hop(http::Head& head, Field field, bool hop_by_hop) {
  if (!head.has(field))
    return;
  for (unsigned i = 0; i < head.count; ++i)
    if (head.headers[i].field == field)
      head.headers[i].hop_by_hop = hop_by_hop;
}

// Whether a route's header edits take a field of this name away (remove, or
// set: replaced by the route's value).
bool edited_away_slow(const config::HeaderEdits* edits, std::string_view name) {
  for (const auto& r : edits->remove)
    if (http::iequals(r, name))
      return true;
  for (const auto& [n, v] : edits->set)
    if (http::iequals(n, name))
      return true;
  return false;
}

inline bool edited_away(const config::HeaderEdits* edits, std::string_view name) {
  return edits && edited_away_slow(edits, name);
}

bool add_lines(const std::vector<std::pair<std::string, config::HeaderValue>>& lines,
               const HeaderVars& vars, Outbox& out) {
  using Part = config::HeaderValue::Part;
  bool ok = true;
  for (const auto& [name, value] : lines) {
    if (!value.line.empty()) {
      ok &= out.put(value.line);
      continue;
    }
    ok &= out.put(name);
    ok &= out.put(std::string_view(": "));
    // The host and a request id may be the client's bytes: by reference.
    for (const auto& [part, text] : value.parts)
      ok &= part == Part::text        ? out.put(text)
            : part == Part::client_ip ? out.put(vars.client_ip)
            : part == Part::host      ? out.add(vars.host)
                                      : out.add(vars.request_id);
    ok &= out.put(std::string_view("\r\n"));
  }
  return ok;
}

// The fields a route's edits add (set, then add).
bool add_edited_fields(const config::HeaderEdits* edits, const HeaderVars& vars, Outbox& out) {
  return !edits || (add_lines(edits->set, vars, out) && add_lines(edits->add, vars, out));
}

// The head's fields from `seg` on, less the hop-by-hop ones and those the
// route's edits take away, up to the empty line.
bool add_forwarded_fields(const http::Head& head, const char* seg, unsigned from, Outbox& out,
                          const config::HeaderEdits* edits = nullptr) {
  bool ok = true;
  for (unsigned i = from; i < head.count; ++i) {
    const http::Header& h = head.headers[i];
    if (h.hop_by_hop || edited_away(edits, h.name.view())) {
      ok &= out.add(seg, static_cast<size_t>(h.line_start - seg));
      seg = h.line_end;
    }
  }
  return ok && out.add(seg, static_cast<size_t>(head.end_of_fields() - seg));
}

} // namespace

bool mark_request_head(http::Head& head, http::Span authority) {
  http::mark_connection_options(head);
  if (!authority.empty())
    set_hop_by_hop(head, Field::host, true);
  const http::Header* connection = head.find(Field::connection);
  const http::Header* upgrade = head.find(Field::upgrade);
  if (!connection || !upgrade || head.minor != 1 ||
      !http::has_token(connection->value.view(), "upgrade") ||
      http::has_token(upgrade->value.view(), "h2c"))
    return false;
  // Upgrade is hop-by-hop, but asking the backend to switch is the point.
  set_hop_by_hop(head, Field::upgrade, false);
  return true;
}

std::optional<uint64_t> max_forwards(const http::Head& head) {
  std::string_view m = head.method.view();
  if (m != "OPTIONS" && m != "TRACE")
    return std::nullopt;
  const http::Header* mf = head.find(Field::max_forwards);
  std::string_view v = mf ? mf->value.view() : std::string_view();
  if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  std::string_view digits = v.substr(std::min(v.find_first_not_of('0'), v.size()));
  if (digits.size() > 18)
    return 1'000'000'000'000'000'000ULL;
  uint64_t hops = 0;
  for (char c : digits)
    hops = hops * 10 + static_cast<uint64_t>(c - '0');
  return hops;
}

bool write_request_head(const http::Head& head, const RequestRules& rules, Outbox& out) {
  using FF = config::Headers::ForwardedFor;
  out.clear();
  // The client goes onto the last X-Forwarded-For line, in place (one the
  // client named in Connection is cut, not appended to).
  int last_xff = -1;
  if (rules.forwarded_for == FF::append && head.has(Field::x_forwarded_for))
    for (unsigned i = 0; i < head.count; ++i)
      if (head.headers[i].field == Field::x_forwarded_for && !head.headers[i].hop_by_hop)
        last_xff = static_cast<int>(i);

  bool ok = true;
  const char* seg = head.start;
  const config::Route* route = rules.route;
  const config::HeaderEdits* edits =
      route && !route->request_headers.empty() ? &route->request_headers : nullptr;
  bool rewrite_path = route && route->has_rewrite_prefix;
  bool rewrite_host = route && !route->rewrite_host.empty();
  if (!rules.authority.empty() || rewrite_path) {
    // Toward an origin the target is origin-form (RFC 9112 §3.2.1); the
    // authority goes to Host below. A rewrite replaces the matched prefix.
    const char* path = rules.authority.empty() ? head.target.p : rules.authority.end();
    const char* target_end = head.target.end();
    ok &= out.add(seg, static_cast<size_t>(head.target.p - seg));
    std::string_view rest(path, static_cast<size_t>(target_end - path));
    if (rewrite_path && rest.starts_with(route->match.path_prefix)) {
      ok &= out.put(route->rewrite_prefix);
      path += route->match.path_prefix.size();
    } else if (path == target_end || *path != '/') {
      ok &= out.put(std::string_view("/"));
    }
    if (path != target_end)
      ok &= out.add(path, static_cast<size_t>(target_end - path));
    seg = target_end;
  }
  for (unsigned i = 0; i < head.count; ++i) {
    const http::Header& h = head.headers[i];
    // Fields lb sets itself are cut from what the client sent, as are those
    // the route's edits take away.
    bool cut = h.hop_by_hop || h.field == Field::x_forwarded_proto ||
               h.field == Field::x_forwarded_host || h.field == Field::x_forwarded_client_cert ||
               (h.field == Field::max_forwards && !rules.max_forwards_line.empty()) ||
               (h.field == Field::x_forwarded_for && rules.forwarded_for == FF::replace) ||
               (h.field == Field::host && rewrite_host) || edited_away(edits, h.name.view());
    if (static_cast<int>(i) == last_xff) {
      ok &= out.add(seg, static_cast<size_t>(h.value.end() - seg));
      ok &= out.put(std::string_view(", "));
      ok &= out.put(rules.client_ip);
      ok &= out.put(std::string_view("\r\n"));
      seg = h.line_end;
    } else if (cut) {
      ok &= out.add(seg, static_cast<size_t>(h.line_start - seg));
      seg = h.line_end;
    }
  }
  ok &= out.add(seg, static_cast<size_t>(head.end_of_fields() - seg));

  if (rules.forwarded_for != FF::off && last_xff < 0) {
    ok &= out.put(std::string_view("X-Forwarded-For: "));
    ok &= out.put(rules.client_ip);
    ok &= out.put(std::string_view("\r\n"));
  }
  ok &= out.put(rules.https ? std::string_view("X-Forwarded-Proto: https\r\n")
                            : std::string_view("X-Forwarded-Proto: http\r\n"));
  http::Span host = rules.authority;
  if (rules.authority.empty())
    if (const http::Header* h = head.find(Field::host))
      host = h->value;
  if (rewrite_host) {
    ok &= out.put(std::string_view("Host: "));
    ok &= out.put(route->rewrite_host);
    ok &= out.put(std::string_view("\r\n"));
  } else if (!rules.authority.empty()) {
    ok &= out.put(std::string_view("Host: "));
    ok &= out.add(rules.authority.p, rules.authority.n);
    ok &= out.put(std::string_view("\r\n"));
  }
  if (!host.empty()) {
    ok &= out.put(std::string_view("X-Forwarded-Host: "));
    ok &= out.add(host.p, host.n);
    ok &= out.put(std::string_view("\r\n"));
  }
  if (!rules.client_cert.empty()) {
    ok &= out.put(std::string_view("X-Forwarded-Client-Cert: "));
    ok &= out.put(rules.client_cert);
    ok &= out.put(std::string_view("\r\n"));
  }
  ok &= out.put(rules.max_forwards_line);
  const http::Header* te = head.find(Field::te);
  bool te_trailers = te && http::has_token(te->value.view(), "trailers");
  if (te_trailers)
    ok &= out.put(std::string_view("TE: trailers\r\n"));
  if (rules.via)
    ok &= out.put(head.minor == 0 ? std::string_view("Via: 1.0 lb\r\n")
                                  : std::string_view("Via: 1.1 lb\r\n"));
  if (!rules.request_id.empty()) {
    ok &= out.put(rules.request_id_header);
    ok &= out.put(std::string_view(": "));
    ok &= out.put(rules.request_id);
    ok &= out.put(std::string_view("\r\n"));
  }
  ok &= add_edited_fields(edits, rules.vars, out);
  // TE is a connection option: whoever sends it names it in Connection (RFC 9110 §10.1.4).
  if (rules.upgrade)
    ok &= out.put(te_trailers ? std::string_view("Connection: upgrade, TE\r\n")
                              : std::string_view("Connection: upgrade\r\n"));
  else if (head.minor == 0)
    ok &= out.put(te_trailers ? std::string_view("Connection: keep-alive, TE\r\n")
                              : std::string_view("Connection: keep-alive\r\n"));
  else if (te_trailers)
    ok &= out.put(std::string_view("Connection: TE\r\n"));
  ok &= out.put(std::string_view("\r\n"));
  return ok;
}

ResponseShape mark_response_head(http::Head& head, bool client_http10) {
  http::mark_connection_options(head);
  ResponseShape shape;
  shape.switching = head.status == 101;
  shape.interim = head.status >= 100 && head.status < 200 && !shape.switching;
  if (shape.switching)
    set_hop_by_hop(head, Field::upgrade, false);
  if (shape.interim || head.status == 204 || head.status == 304) {
    // No body follows, and 1xx and 204 must not claim one: framing fields a
    // client might still obey go (a 304's Content-Length describes the
    // resource, and stays).
    for (unsigned i = 0; i < head.count; ++i) {
      http::Header& h = head.headers[i];
      if (h.field == Field::transfer_encoding ||
          (h.field == Field::content_length && head.status != 304))
        h.hop_by_hop = true;
    }
  }
  shape.dechunk = !shape.interim && !shape.switching && head.status != 204 && head.status != 304 &&
                  head.chunked && client_http10;
  if (shape.dechunk)
    set_hop_by_hop(head, Field::transfer_encoding, true);
  return shape;
}

bool write_response_head(const http::Head& head, const ResponseShape& shape,
                         const ResponseRules& rules, Outbox& out) {
  out.clear();
  // The route's edits apply to the final response.
  const config::HeaderEdits* edits = shape.interim || shape.switching ? nullptr : rules.edits;
  bool ok = add_forwarded_fields(head, head.start, 0, out, edits);
  ok &= add_edited_fields(edits, rules.vars, out);
  if (shape.switching) {
    if (rules.via)
      ok &= out.put(std::string_view("Via: 1.1 lb\r\n"));
    ok &= out.put(std::string_view("Connection: upgrade\r\n"));
  } else if (!shape.interim) {
    if (rules.via)
      ok &= out.put(head.minor == 0 ? std::string_view("Via: 1.0 lb\r\n")
                                    : std::string_view("Via: 1.1 lb\r\n"));
    ok &= out.put(rules.set_cookie_line);
    if (!rules.keep_client)
      ok &= out.put(std::string_view("Connection: close\r\n"));
    else if (rules.client_http10)
      ok &= out.put(std::string_view("Connection: keep-alive\r\n"));
  }
  ok &= out.put(std::string_view("\r\n"));
  return ok;
}

std::string_view sticky_cookie_line(char* buf, size_t size, std::string_view name,
                                    std::string_view value) {
  int n = std::snprintf(buf, size, "Set-Cookie: %.*s=%.*s; Path=/; HttpOnly\r\n",
                        static_cast<int>(name.size()), name.data(), static_cast<int>(value.size()),
                        value.data());
  if (n <= 0 || static_cast<size_t>(n) >= size)
    return {};
  return {buf, static_cast<size_t>(n)};
}

} // namespace lb::proxy
