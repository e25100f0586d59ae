#include "lb/http/request_line.hpp"

#include <gtest/gtest.h>

#include <string>

namespace lb::http {
namespace {

Span span(const std::string& s) { return {s.data(), static_cast<uint32_t>(s.size())}; }

struct Line {
  std::string method, target;
  Head head;
  Line(std::string m, std::string t, uint8_t major = 1)
      : method(std::move(m)), target(std::move(t)) {
    head.method = span(method);
    head.target = span(target);
    head.major = major;
  }
  RequestLineCheck check() const { return check_request_line(head); }
};

TEST(RequestLineTest, OriginFormAndAsteriskPass) {
  for (const char* target : {"/", "/a/b?c=1", "/%41"}) {
    auto c = Line("GET", target).check();
    EXPECT_EQ(c.status, 0) << target;
    EXPECT_TRUE(c.authority.empty());
  }
  EXPECT_EQ(Line("OPTIONS", "*").check().status, 0);
}

TEST(RequestLineTest, AbsoluteFormNamesTheAuthority) {
  Line l("GET", "http://example.com:8080/path?q=1");
  auto c = l.check();
  EXPECT_EQ(c.status, 0);
  EXPECT_EQ(c.authority.view(), "example.com:8080");
  EXPECT_EQ(Line("GET", "HTTPS://Example.com").check().authority.view(), "Example.com");
  EXPECT_EQ(Line("GET", "http://h?x").check().authority.view(), "h");
}

TEST(RequestLineTest, RefusalsWithTheirStatus) {
  struct Case {
    Line line;
    int status;
  } cases[] = {
      {Line("GET", "/", 2), 505},
      {Line("GET", "/" + std::string(max_target_bytes, 'a')), 414},
      {Line("CONNECT", "example.com:443"), 405},
      {Line("GET", "/a#frag"), 400},
      {Line("GET", "*"), 400},
      {Line("GET", "ftp://example.com/"), 400},
      {Line("GET", "example.com/"), 400},
      {Line("GET", "http:///path"), 400},
      {Line("GET", "http://user@example.com/"), 400},
  };
  for (const Case& c : cases) {
    auto r = c.line.check();
    EXPECT_EQ(r.status, c.status) << c.line.method << " " << c.line.target.substr(0, 40);
    EXPECT_NE(r.reason, nullptr);
    EXPECT_TRUE(r.authority.empty());
  }
  // The limit itself is allowed.
  EXPECT_EQ(Line("GET", "/" + std::string(max_target_bytes - 1, 'a')).check().status, 0);
}

} // namespace
} // namespace lb::http
