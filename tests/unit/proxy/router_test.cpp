#include "lb/proxy/runtime.hpp"

#include "config/config.hpp"
#include "lb/http/parser.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <map>
#include <memory>
#include <string>

namespace lb::proxy {
namespace {

// A listener's routes over pools a, b and fallback (the last route).
struct Routes {
  upstream::Registry registry;
  std::unique_ptr<Runtime> runtime;
  explicit Routes(const std::string& routes) {
    auto loaded = config::load_string(R"(
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
)" + routes + R"(      - pool: fallback
pools:
  a: { backends: [127.0.0.1:9001] }
  b: { backends: [127.0.0.1:9002] }
  fallback: { backends: [127.0.0.1:9003] }
)",
                                      "t.yaml");
    for (const auto& e : loaded.errors)
      ADD_FAILURE() << e;
    runtime = std::make_unique<Runtime>(loaded.config, registry);
  }
  const Router& router() const { return runtime->listeners[0]->router; }

  // The pool name a request goes to, "" for none (or a route that answers itself).
  std::string pool_for(const std::string& head_text, const char* client = "127.0.0.1") {
    http::Parser parser(http::Parser::Kind::request);
    auto r = parser.feed(head_text.data(), head_text.data() + head_text.size());
    EXPECT_EQ(r.event, http::Parser::Event::head_complete) << head_text;
    uint8_t addr[16];
    bool v6 = std::string(client).find(':') != std::string::npos;
    EXPECT_EQ(::inet_pton(v6 ? AF_INET6 : AF_INET, client, addr), 1);
    const CompiledRoute* route = router().match(parser.head(), {}, {v6, addr});
    if (!route)
      return "";
    int pool = Router::pool_of(*route, {});
    return pool < 0 ? "" : runtime->pools[static_cast<size_t>(pool)]->name();
  }
};

std::string get(const std::string& target, const std::string& fields = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: h\r\n" + fields + "\r\n";
}

TEST(RouterTest, PathExactPrefixAndRegex) {
  Routes r(R"(      - match: { path: /exact }
        pool: a
      - match: { path_regex: "^/u/[0-9]+$" }
        pool: b
)");
  EXPECT_EQ(r.pool_for(get("/exact")), "a");
  EXPECT_EQ(r.pool_for(get("/exact?x=1")), "a"); // the query is not part of the path
  EXPECT_EQ(r.pool_for(get("/exact/")), "fallback");
  EXPECT_EQ(r.pool_for(get("/exactly")), "fallback");
  EXPECT_EQ(r.pool_for(get("/u/123")), "b");
  EXPECT_EQ(r.pool_for(get("/u/123?q=/u/1")), "b");
  EXPECT_EQ(r.pool_for(get("/u/12a")), "fallback");
  EXPECT_EQ(r.pool_for(get("/x/u/1")), "fallback");
}

TEST(RouterTest, AbsoluteFormAndPrefixWithAQuery) {
  Routes r(R"(      - match: { path_prefix: "/search?q=" }
        pool: a
      - match: { query: { x: "1" }, path: / }
        pool: b
)");
  EXPECT_EQ(r.pool_for(get("/search?q=lb")), "a");
  EXPECT_EQ(r.pool_for(get("/search?p=lb")), "fallback");
  EXPECT_EQ(r.pool_for("GET http://h.example?x=1 HTTP/1.1\r\nHost: h.example\r\n\r\n"), "b");
  EXPECT_EQ(r.pool_for("GET http://h.example/?x=1 HTTP/1.1\r\nHost: h.example\r\n\r\n"), "b");
  EXPECT_EQ(r.pool_for("GET http://h.example/p?x=1 HTTP/1.1\r\nHost: h.example\r\n\r\n"),
            "fallback");
}

TEST(RouterTest, MethodHeaderAndQuery) {
  Routes r(R"(      - match: { method: [PUT, DELETE] }
        pool: a
      - match: { header: { X-Debug: present, X-Env: prod } }
        pool: b
      - match: { query: { preview: "a b", "x y": "1" } }
        pool: a
)");
  EXPECT_EQ(r.pool_for("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), "a");
  EXPECT_EQ(r.pool_for("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), "fallback");
  EXPECT_EQ(r.pool_for(get("/", "x-debug: \r\nX-Env: prod\r\n")), "b"); // present, even empty
  EXPECT_EQ(r.pool_for(get("/", "X-Env: prod\r\n")), "fallback");
  EXPECT_EQ(r.pool_for(get("/", "X-Debug: 1\r\nX-Env: Prod\r\n")), "fallback"); // values exact
  EXPECT_EQ(r.pool_for(get("/?x+y=1&preview=a%20b")), "a");
  EXPECT_EQ(r.pool_for(get("/?preview=a+b&x%20y=1")), "a");
  EXPECT_EQ(r.pool_for(get("/?preview=a+b")), "fallback"); // every parameter must hold
  EXPECT_EQ(r.pool_for(get("/?preview=a+bc&x+y=1")), "fallback");
  EXPECT_EQ(r.pool_for(get("/?preview=a+b&x+y=1%")), "fallback");
}

TEST(RouterTest, SourceAddress) {
  Routes r(R"(      - match: { source: [127.0.0.2, "10.0.0.0/8", "2001:db8::/32"] }
        pool: a
)");
  EXPECT_EQ(r.pool_for(get("/"), "127.0.0.2"), "a");
  EXPECT_EQ(r.pool_for(get("/"), "127.0.0.1"), "fallback");
  EXPECT_EQ(r.pool_for(get("/"), "10.255.1.1"), "a");
  EXPECT_EQ(r.pool_for(get("/"), "2001:db8:1::5"), "a");
  EXPECT_EQ(r.pool_for(get("/"), "2001:db9::5"), "fallback");
}

TEST(RouterTest, SplitsByWeightOrByKey) {
  Routes r(
      R"(      - pools: [ { pool: a, weight: 90 }, { pool: b, weight: 10 }, { pool: fallback, weight: 0 } ]
        split_key: cookie:user
)");
  const CompiledRoute& split = r.router().routes()[0];
  std::map<std::string, int> seen;
  for (int i = 0; i < 20000; ++i)
    seen[r.runtime->pools[static_cast<size_t>(Router::pool_of(split, {}))]->name()]++;
  EXPECT_NEAR(seen["a"], 18000, 400);
  EXPECT_NEAR(seen["b"], 2000, 400);
  EXPECT_EQ(seen.count("fallback"), 0u); // weight 0: never
  // A key always lands on the same side, and keys spread by weight.
  std::map<std::string, int> users;
  for (int u = 0; u < 2000; ++u) {
    std::string key = "user" + std::to_string(u);
    int first = Router::pool_of(split, key);
    for (int k = 0; k < 3; ++k)
      EXPECT_EQ(Router::pool_of(split, key), first);
    users[r.runtime->pools[static_cast<size_t>(first)]->name()]++;
  }
  EXPECT_NEAR(users["a"], 1800, 120);
}

TEST(RouterTest, AccessLists) {
  config::Listener l;
  uint8_t one[4] = {127, 0, 0, 1}, three[4] = {127, 0, 0, 3};
  EXPECT_TRUE(access_allowed(l, {false, one}));
  EXPECT_TRUE(access_allowed(l, {false, nullptr}));
  auto c = config::load_string(R"(
listeners:
  - name: public
    listen: 127.0.0.1:0
    allow: [127.0.0.0/8]
    deny: [127.0.0.3]
    routes: [ { pool: a } ]
pools:
  a: { backends: [127.0.0.1:9001] }
)",
                               "t.yaml");
  ASSERT_TRUE(c.config);
  const config::Listener& acl = c.config->listeners[0];
  EXPECT_TRUE(access_allowed(acl, {false, one}));
  EXPECT_FALSE(access_allowed(acl, {false, three})); // deny wins
  uint8_t other[4] = {10, 0, 0, 1};
  EXPECT_FALSE(access_allowed(acl, {false, other}));   // not in allow
  EXPECT_FALSE(access_allowed(acl, {false, nullptr})); // unknown: not allowed
}

} // namespace
} // namespace lb::proxy
