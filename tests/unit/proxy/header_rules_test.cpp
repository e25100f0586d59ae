#include "lb/proxy/header_rules.hpp"

#include "lb/http/parser.hpp"
#include "lb/http/request_line.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace lb::proxy {
namespace {

using FF = config::Headers::ForwardedFor;

// A head parsed from `text`, as a connection's parser leaves it.
struct Parsed {
  std::string text;
  std::unique_ptr<http::Parser> parser;
  Parsed(std::string t, http::Parser::Kind kind) : text(std::move(t)) {
    parser = std::make_unique<http::Parser>(kind);
    parser->set_request_id_header("X-Request-Id");
    auto r = parser->feed(text.data(), text.data() + text.size());
    EXPECT_EQ(r.event, http::Parser::Event::head_complete) << parser->error_reason();
  }
  http::Head& head() { return parser->head(); }
};

Parsed request(std::string text) { return Parsed(std::move(text), http::Parser::Kind::request); }
Parsed response(std::string text) { return Parsed(std::move(text), http::Parser::Kind::response); }

RequestRules rules() {
  RequestRules r;
  r.client_ip = "192.0.2.7";
  r.request_id_header = "X-Request-Id";
  return r;
}

std::string forwarded(Parsed& p, const RequestRules& r) {
  mark_request_head(p.head(), r.authority);
  Outbox out;
  EXPECT_TRUE(write_request_head(p.head(), r, out));
  return out.text();
}

TEST(RequestRulesTest, AddsForwardingFieldsAndVia) {
  auto p = request("GET /a HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(forwarded(p, rules()), "GET /a HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n"
                                   "X-Forwarded-For: 192.0.2.7\r\n"
                                   "X-Forwarded-Proto: http\r\n"
                                   "X-Forwarded-Host: example.com\r\n"
                                   "Via: 1.1 lb\r\n\r\n");
}

TEST(RequestRulesTest, HopByHopFieldsAndTheOnesLbSetsAreCut) {
  auto p = request("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
                   "X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n"
                   "X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nTE: gzip\r\n"
                   "Upgrade: websocket\r\nX-Kept: yes\r\n\r\n");
  RequestRules r = rules();
  r.https = true;
  r.via = false;
  std::string out = forwarded(p, r);
  EXPECT_EQ(out, "GET / HTTP/1.1\r\nHost: h\r\nX-Kept: yes\r\n"
                 "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n"
                 "X-Forwarded-Host: h\r\n\r\n");
}

TEST(RequestRulesTest, ClientCertificateFieldIsLbsOnly) {
  auto p = request("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Client-Cert: Hash=forged\r\n"
                   "x-forwarded-client-cert: Subject=\"CN=admin\"\r\nX-Kept: yes\r\n\r\n");
  RequestRules r = rules();
  r.via = false;
  // Without a verified certificate the client's fields are cut and none is added.
  EXPECT_EQ(forwarded(p, r), "GET / HTTP/1.1\r\nHost: h\r\nX-Kept: yes\r\n"
                             "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: h\r\n\r\n");
  auto q = request("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Client-Cert: Hash=forged\r\n\r\n");
  r.client_cert = "Hash=ab12;Subject=\"CN=alice\";DNS=alice.example";
  EXPECT_EQ(forwarded(q, r), "GET / HTTP/1.1\r\nHost: h\r\n"
                             "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
                             "X-Forwarded-Host: h\r\n"
                             "X-Forwarded-Client-Cert: Hash=ab12;Subject=\"CN=alice\";"
                             "DNS=alice.example\r\n\r\n");
}

TEST(RequestRulesTest, ForwardedForModes) {
  const std::string text = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n"
                           "X-Forwarded-For: 10.0.0.2\r\n\r\n";
  RequestRules r = rules();
  r.via = false;
  auto a = request(text);
  EXPECT_NE(forwarded(a, r).find("X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, "
                                 "192.0.2.7\r\n"),
            std::string::npos);
  r.forwarded_for = FF::replace;
  auto b = request(text);
  std::string replaced = forwarded(b, r);
  EXPECT_EQ(replaced.find("10.0.0."), std::string::npos);
  EXPECT_NE(replaced.find("X-Forwarded-For: 192.0.2.7\r\n"), std::string::npos);
  r.forwarded_for = FF::off;
  auto c = request(text);
  std::string off = forwarded(c, r);
  EXPECT_NE(off.find("X-Forwarded-For: 10.0.0.2\r\n"), std::string::npos);
  EXPECT_EQ(off.find("192.0.2.7"), std::string::npos);
}

TEST(RequestRulesTest, AbsoluteFormTargetBecomesOriginFormAndHost) {
  for (auto [target, path] : {std::pair{"http://api.example.com:8080/v1?x=1", "/v1?x=1"},
                              std::pair{"http://api.example.com:8080", "/"},
                              std::pair{"http://api.example.com:8080?x", "/?x"}}) {
    auto p = request(std::string("GET ") + target + " HTTP/1.1\r\nHost: ignored\r\n\r\n");
    RequestRules r = rules();
    r.via = false;
    r.authority = http::check_request_line(p.head()).authority;
    EXPECT_EQ(forwarded(p, r), std::string("GET ") + path +
                                   " HTTP/1.1\r\nX-Forwarded-For: 192.0.2.7\r\n"
                                   "X-Forwarded-Proto: http\r\nHost: api.example.com:8080\r\n"
                                   "X-Forwarded-Host: api.example.com:8080\r\n\r\n")
        << target;
  }
}

TEST(RequestRulesTest, RequestIdMaxForwardsAndTe) {
  auto p = request("OPTIONS * HTTP/1.1\r\nHost: h\r\nMax-Forwards: 5\r\nTE: trailers\r\n\r\n");
  ASSERT_EQ(max_forwards(p.head()), 5u);
  RequestRules r = rules();
  r.request_id = "0123456789abcdef";
  r.max_forwards_line = "Max-Forwards: 4\r\n";
  std::string out = forwarded(p, r);
  EXPECT_EQ(out.find("Max-Forwards: 5"), std::string::npos);
  EXPECT_NE(out.find("Max-Forwards: 4\r\n"), std::string::npos);
  EXPECT_NE(out.find("TE: trailers\r\n"), std::string::npos);
  EXPECT_NE(out.find("X-Request-Id: 0123456789abcdef\r\n"), std::string::npos);
  EXPECT_NE(out.find("Connection: TE\r\n"), std::string::npos);
}

TEST(RequestRulesTest, Http10GetsKeepAliveToTheBackend) {
  auto p = request("GET / HTTP/1.0\r\nHost: h\r\n\r\n");
  std::string out = forwarded(p, rules());
  EXPECT_NE(out.find("Via: 1.0 lb\r\n"), std::string::npos);
  EXPECT_NE(out.find("Connection: keep-alive\r\n"), std::string::npos);
}

TEST(RequestRulesTest, UpgradeIsKeptOnlyWhenAsked) {
  auto ws = request("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                    "Upgrade: websocket\r\n\r\n");
  EXPECT_TRUE(mark_request_head(ws.head(), {}));
  RequestRules r = rules();
  r.upgrade = true;
  std::string out = forwarded(ws, r);
  EXPECT_NE(out.find("Upgrade: websocket\r\n"), std::string::npos);
  EXPECT_NE(out.find("Connection: upgrade\r\n"), std::string::npos);
  auto h2c = request("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
  EXPECT_FALSE(mark_request_head(h2c.head(), {}));
  auto http10 = request("GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
  EXPECT_FALSE(mark_request_head(http10.head(), {}));
}

TEST(RequestRulesTest, MaxForwardsValues) {
  auto hops = [](const std::string& method, const std::string& value) {
    auto p = request(method + " / HTTP/1.1\r\nHost: h\r\nMax-Forwards: " + value + "\r\n\r\n");
    return max_forwards(p.head());
  };
  EXPECT_EQ(hops("TRACE", "0"), 0u);
  EXPECT_EQ(hops("TRACE", "000"), 0u);
  EXPECT_EQ(hops("OPTIONS", "007"), 7u);
  EXPECT_EQ(hops("OPTIONS", "99999999999999999999"), 1'000'000'000'000'000'000u);
  EXPECT_EQ(hops("OPTIONS", "-1"), std::nullopt);
  EXPECT_EQ(hops("OPTIONS", "1x"), std::nullopt);
  EXPECT_EQ(hops("GET", "0"), std::nullopt);
  auto none = request("TRACE / HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(max_forwards(none.head()), std::nullopt);
}

std::string returned(Parsed& p, const ResponseRules& r, bool client_http10 = false) {
  ResponseShape shape = mark_response_head(p.head(), client_http10);
  Outbox out;
  EXPECT_TRUE(write_response_head(p.head(), shape, r, out));
  return out.text();
}

TEST(ResponseRulesTest, ViaAndConnection) {
  auto p = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
                    "Keep-Alive: timeout=5\r\n\r\n");
  ResponseRules r;
  EXPECT_EQ(returned(p, r), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 lb\r\n\r\n");
  auto q = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
  r.keep_client = false;
  r.via = false;
  EXPECT_EQ(returned(q, r), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
  auto old = response("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
  ResponseRules keep;
  keep.client_http10 = true;
  EXPECT_EQ(
      returned(old, keep, true),
      "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nVia: 1.0 lb\r\nConnection: keep-alive\r\n\r\n");
}

TEST(ResponseRulesTest, BodilessAnswersLoseTheirFraming) {
  auto no_content = response("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
  ResponseRules r;
  r.via = false;
  EXPECT_EQ(returned(no_content, r), "HTTP/1.1 204 No Content\r\n\r\n");
  auto not_modified = response("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
  EXPECT_EQ(returned(not_modified, r), "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
  auto early = response("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
  ResponseShape shape = mark_response_head(early.head(), false);
  EXPECT_TRUE(shape.interim);
  Outbox out;
  ASSERT_TRUE(write_response_head(early.head(), shape, r, out));
  EXPECT_EQ(out.text(), "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
}

TEST(ResponseRulesTest, ChunkedToAnHttp10ClientIsDecoded) {
  auto p = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  ResponseShape shape = mark_response_head(p.head(), true);
  EXPECT_TRUE(shape.dechunk);
  ResponseRules r;
  r.via = false;
  r.keep_client = false;
  r.client_http10 = true;
  Outbox out;
  ASSERT_TRUE(write_response_head(p.head(), shape, r, out));
  EXPECT_EQ(out.text(), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
  auto q = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_FALSE(mark_response_head(q.head(), false).dechunk);
}

TEST(ResponseRulesTest, SwitchingProtocolsKeepsUpgrade) {
  auto p = response("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\n\r\n");
  ResponseShape shape = mark_response_head(p.head(), false);
  EXPECT_TRUE(shape.switching);
  ResponseRules r;
  Outbox out;
  ASSERT_TRUE(write_response_head(p.head(), shape, r, out));
  EXPECT_EQ(out.text(), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Via: 1.1 lb\r\nConnection: upgrade\r\n\r\n");
}

TEST(ResponseRulesTest, StickyCookie) {
  char buf[64];
  auto line = sticky_cookie_line(buf, sizeof buf, "srv", "abc123");
  EXPECT_EQ(line, "Set-Cookie: srv=abc123; Path=/; HttpOnly\r\n");
  auto p = response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  ResponseRules r;
  r.via = false;
  r.set_cookie_line = line;
  EXPECT_EQ(returned(p, r),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + std::string(line) + "\r\n");
  char tiny[16];
  EXPECT_TRUE(sticky_cookie_line(tiny, sizeof tiny, "srv", "abc123").empty());
}

TEST(RequestRulesTest, AHeadFullOfCutFieldsStillFits) {
  // The most fields a head may have, every other one cut: a slice each.
  std::string text = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (unsigned i = 1; i < http::max_headers; ++i)
    text += (i % 2 ? "X-Forwarded-Proto: a\r\n" : "X-Keep: b\r\n");
  text += "\r\n";
  auto p = request(text);
  ASSERT_EQ(p.head().count, http::max_headers);
  std::string out = forwarded(p, rules());
  EXPECT_EQ(out.find("X-Forwarded-Proto: a"), std::string::npos);
  size_t kept = 0;
  for (size_t at = out.find("X-Keep: b\r\n"); at != std::string::npos;
       at = out.find("X-Keep: b\r\n", at + 1))
    ++kept;
  EXPECT_EQ(kept, (http::max_headers - 1) / 2);
}

TEST(OutboxTest, IsBounded) {
  Outbox out;
  for (unsigned i = 0; i < Outbox::capacity; ++i)
    ASSERT_TRUE(out.add("x"));
  EXPECT_FALSE(out.add("y"));
  EXPECT_TRUE(out.add("")) << "nothing to add always fits";
  out.advance(Outbox::capacity - 1);
  EXPECT_EQ(out.text(), "x");
}

TEST(OutboxTest, LbsOwnBytesJoinIntoOneSliceAndThePeersStayInPlace) {
  std::string peer = "GET / HTTP/1.1\r\nHost: h\r\n";
  Outbox out;
  ASSERT_TRUE(out.add(peer));
  ASSERT_TRUE(out.put("X-Forwarded-For: "));
  std::string ip = "192.0.2.7";
  ASSERT_TRUE(out.put(ip));
  ip = "changed"; // put() copied it
  ASSERT_TRUE(out.put("\r\n"));
  ASSERT_TRUE(out.add(peer.data() + 22, 1)); // the peer's "h": by reference
  ASSERT_TRUE(out.put("\r\n\r\n"));
  EXPECT_EQ(out.count, 4u);
  EXPECT_EQ(out.v[0].iov_base, peer.data());
  EXPECT_EQ(out.v[2].iov_base, peer.data() + 22);
  EXPECT_EQ(out.text(), "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\nh\r\n\r\n");
  // Written in part, then added to: the written part is not joined again.
  out.advance(out.text().size() - 2);
  ASSERT_TRUE(out.put("ab"));
  EXPECT_EQ(out.text(), "\r\nab");
  out.clear();
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(out.own_used, 0u);
}

TEST(OutboxTest, PutBeyondItsSpaceAddsByReference) {
  Outbox out;
  std::string big(sizeof out.own - 10, 'a');
  ASSERT_TRUE(out.put(big));
  std::string more(20, 'b');
  ASSERT_TRUE(out.put(more)); // does not fit: a slice of `more` itself
  ASSERT_EQ(out.count, 2u);
  EXPECT_EQ(out.v[1].iov_base, more.data());
  ASSERT_TRUE(out.put("c")); // fits: copied, after the referenced slice
  EXPECT_EQ(out.count, 3u);
  EXPECT_EQ(out.text(), big + more + "c");
}

config::HeaderValue
value_of(std::initializer_list<std::pair<config::HeaderValue::Part, std::string>> parts) {
  config::HeaderValue v;
  v.parts = parts;
  return v;
}

TEST(RouteEditsTest, RequestFieldsSetAddedAndRemoved) {
  auto p = request("GET /api/x?y=1 HTTP/1.1\r\nHost: shop.example.com\r\nX-Debug: 1\r\n"
                   "X-Env: dev\r\nx-debug: 2\r\nAccept: */*\r\n\r\n");
  using Part = config::HeaderValue::Part;
  config::Route route;
  route.match.path_prefix = "/api/";
  route.has_rewrite_prefix = true;
  route.rewrite_prefix = "/v2/";
  route.rewrite_host = "internal";
  route.request_headers.remove = {"X-DEBUG"};
  route.request_headers.set = {{"X-Env", value_of({{Part::text, "prod"}})}};
  route.request_headers.add = {{"X-Client", value_of({{Part::text, "ip="},
                                                      {Part::client_ip, ""},
                                                      {Part::text, " id="},
                                                      {Part::request_id, ""},
                                                      {Part::text, " h="},
                                                      {Part::host, ""}})}};
  RequestRules r = rules();
  r.route = &route;
  r.vars = {"192.0.2.7", "rid-1", "shop.example.com"};
  EXPECT_EQ(forwarded(p, r), "GET /v2/x?y=1 HTTP/1.1\r\nAccept: */*\r\n"
                             "X-Forwarded-For: 192.0.2.7\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "Host: internal\r\n"
                             "X-Forwarded-Host: shop.example.com\r\n"
                             "Via: 1.1 lb\r\n"
                             "X-Env: prod\r\n"
                             "X-Client: ip=192.0.2.7 id=rid-1 h=shop.example.com\r\n\r\n");
}

TEST(RouteEditsTest, RewriteOfAnAbsoluteFormTarget) {
  auto p = request("GET http://a.example/api/x HTTP/1.1\r\nHost: ignored\r\n\r\n");
  auto line = http::check_request_line(p.head());
  config::Route route;
  route.match.path_prefix = "/api/";
  route.has_rewrite_prefix = true;
  route.rewrite_prefix = "/";
  RequestRules r = rules();
  r.authority = line.authority;
  r.route = &route;
  EXPECT_EQ(forwarded(p, r), "GET /x HTTP/1.1\r\n"
                             "X-Forwarded-For: 192.0.2.7\r\n"
                             "X-Forwarded-Proto: http\r\n"
                             "Host: a.example\r\n"
                             "X-Forwarded-Host: a.example\r\n"
                             "Via: 1.1 lb\r\n\r\n");
}

TEST(RouteEditsTest, ResponseFieldsOfTheFinalResponseOnly) {
  using Part = config::HeaderValue::Part;
  config::HeaderEdits edits;
  edits.remove = {"server"};
  edits.set = {{"Strict-Transport-Security", value_of({{Part::text, "max-age=63072000"}})}};
  ResponseRules rules;
  rules.edits = &edits;
  auto p = response("HTTP/1.1 200 OK\r\nServer: app/1.0\r\nContent-Length: 0\r\n"
                    "Strict-Transport-Security: max-age=1\r\n\r\n");
  ResponseShape shape = mark_response_head(p.head(), false);
  Outbox out;
  ASSERT_TRUE(write_response_head(p.head(), shape, rules, out));
  EXPECT_EQ(out.text(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                        "Strict-Transport-Security: max-age=63072000\r\nVia: 1.1 lb\r\n\r\n");
  auto interim = response("HTTP/1.1 103 Early Hints\r\nServer: app\r\n\r\n");
  shape = mark_response_head(interim.head(), false);
  ASSERT_TRUE(write_response_head(interim.head(), shape, rules, out));
  EXPECT_EQ(out.text(), "HTTP/1.1 103 Early Hints\r\nServer: app\r\n\r\n");
}

} // namespace
} // namespace lb::proxy
