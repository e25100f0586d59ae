#include "lb/proxy/local_answer.hpp"

#include "lb/http/parser.hpp"

#include <gtest/gtest.h>

#include <string>

namespace lb::proxy {
namespace {

// Head and body of an answer; Content-Length checked against the body.
struct Answer {
  std::string head, body;
  explicit Answer(const Outbox& out) {
    std::string all = out.text();
    size_t end = all.find("\r\n\r\n");
    EXPECT_NE(end, std::string::npos);
    head = all.substr(0, end + 4);
    body = all.substr(end + 4);
  }
  std::string field(const std::string& name) const {
    size_t at = head.find("\r\n" + name + ": ");
    if (at == std::string::npos)
      return "";
    at += name.size() + 4;
    return head.substr(at, head.find("\r\n", at) - at);
  }
};

TEST(LocalAnswerTest, ErrorNamesTheReasonAndTheRequestId) {
  AnswerBuffer buf;
  Outbox out;
  write_error({404, "no route matches the request", "abc123", true, false}, buf, out);
  Answer a(out);
  EXPECT_EQ(a.head.substr(0, 24), "HTTP/1.1 404 Not Found\r\n");
  EXPECT_EQ(a.body, "404 Not Found: no route matches the request (request id abc123)\n");
  EXPECT_EQ(a.field("Content-Length"), std::to_string(a.body.size()));
  EXPECT_EQ(a.field("Connection"), "keep-alive");
  EXPECT_EQ(a.field("Content-Type"), "text/plain; charset=utf-8");
}

TEST(LocalAnswerTest, GrpcCallsGetGrpcStatusAndMessage) {
  AnswerBuffer buf;
  Outbox out;
  write_grpc_error({14, "connect to 10.0.0.1:50051 failed: Connection refused", "id7", true}, buf,
                   out);
  Answer a(out);
  EXPECT_EQ(a.head.substr(0, 17), "HTTP/1.1 200 OK\r\n");
  EXPECT_EQ(a.body, "");
  EXPECT_EQ(a.field("Content-Type"), "application/grpc");
  EXPECT_EQ(a.field("Grpc-Status"), "14");
  EXPECT_EQ(a.field("Grpc-Message"),
            "connect to 10.0.0.1:50051 failed: Connection refused (request id id7)");
  EXPECT_EQ(a.field("Content-Length"), "0");
  EXPECT_EQ(a.field("Connection"), "keep-alive");
  // grpc-message is percent-encoded: '%' and bytes outside printable ASCII.
  write_grpc_error({4, "100% \xff\r\n", "x", false}, buf, out);
  Answer b(out);
  EXPECT_EQ(b.field("Grpc-Message"), "100%25 %FF%0D%0A (request id x)");
  EXPECT_EQ(b.field("Connection"), "close");
  // Whatever its bytes, a long reason fits (cut before encoding).
  std::string worst(2000, '\x01');
  write_grpc_error({2, worst, std::string(500, '\x02'), true}, buf, out);
  Answer c(out);
  EXPECT_EQ(c.field("Content-Length"), "0");
  EXPECT_LE(out.text().size(), AnswerBuffer::capacity);
}

TEST(LocalAnswerTest, GrpcStatusForLbsOwnErrors) {
  EXPECT_EQ(grpc_status_for(503), 14); // UNAVAILABLE
  EXPECT_EQ(grpc_status_for(502), 14);
  EXPECT_EQ(grpc_status_for(504), 4); // DEADLINE_EXCEEDED
  EXPECT_EQ(grpc_status_for(408), 4);
  EXPECT_EQ(grpc_status_for(429), 8); // RESOURCE_EXHAUSTED
  EXPECT_EQ(grpc_status_for(403), 7);
  EXPECT_EQ(grpc_status_for(404), 12);
  EXPECT_EQ(grpc_status_for(400), 13);
  EXPECT_EQ(grpc_status_for(500), 2);
}

TEST(LocalAnswerTest, HeadRequestGetsTheHeadOnly) {
  AnswerBuffer buf;
  Outbox out;
  write_error({503, "no healthy backend in pool web", "id", false, true}, buf, out);
  Answer a(out);
  EXPECT_EQ(a.body, "");
  EXPECT_GT(std::stoul(a.field("Content-Length")), 0u);
  EXPECT_EQ(a.field("Connection"), "close");
}

TEST(LocalAnswerTest, MethodNotAllowedNamesWhatIs) {
  AnswerBuffer buf;
  Outbox out;
  write_error({405, "CONNECT is not supported", "id", false, false}, buf, out);
  Answer a(out);
  EXPECT_NE(a.field("Allow").find("GET"), std::string::npos);
  EXPECT_EQ(a.field("Allow").find("CONNECT"), std::string::npos);
}

TEST(LocalAnswerTest, RateLimitedSaysWhenToComeBack) {
  AnswerBuffer buf;
  Outbox out;
  RateLimitFields fields{100, 60, 50, 7};
  ErrorAnswer e{429, "the route's rate limit is reached", "id", true, false, &fields};
  write_error(e, buf, out);
  Answer a(out);
  EXPECT_EQ(a.field("Retry-After"), "7");
  EXPECT_EQ(a.field("RateLimit-Policy"), "100;w=60;burst=50");
  EXPECT_EQ(a.field("RateLimit"), "limit=100, remaining=0, reset=7");
  EXPECT_EQ(a.field("Connection"), "keep-alive");
  RateLimitFields no_burst{4294967295u, 1, 0, 4294967295u}; // the widest numbers fit
  std::string reason(300, 'r'), id(200, 'i');
  ErrorAnswer wide{429, reason, id, false, false, &no_burst};
  write_error(wide, buf, out);
  Answer b(out);
  EXPECT_EQ(b.field("RateLimit-Policy"), "4294967295;w=1");
  EXPECT_EQ(b.field("Connection"), "close");
}

TEST(LocalAnswerTest, LongPartsAreCutAndTheLengthStaysTrue) {
  AnswerBuffer buf;
  Outbox out;
  std::string reason(5000, 'r'), id(5000, '7');
  for (int status : {400, 405, 431, 502, 999}) {
    write_error({status, reason, id, true, false}, buf, out);
    Answer a(out);
    EXPECT_EQ(a.field("Content-Length"), std::to_string(a.body.size())) << status;
    EXPECT_NE(a.body.find("(request id 7777"), std::string::npos);
    EXPECT_EQ(a.body.back(), '\n');
    EXPECT_LE(a.head.size() + a.body.size(), AnswerBuffer::capacity);
  }
}

TEST(LocalAnswerTest, ReasonPhrases) {
  EXPECT_EQ(reason_phrase(431), "Request Header Fields Too Large");
  EXPECT_EQ(reason_phrase(504), "Gateway Timeout");
  EXPECT_EQ(reason_phrase(418), "Error");
}

TEST(LocalAnswerTest, MaintenancePage) {
  AnswerBuffer buf;
  Outbox out;
  write_maintenance({"web", "X-Request-Id", "req-42", true, false}, buf, out);
  Answer a(out);
  EXPECT_EQ(a.head.substr(0, 34), "HTTP/1.1 503 Service Unavailable\r\n");
  EXPECT_EQ(a.field("Retry-After"), "120");
  EXPECT_EQ(a.field("X-Lb-Maintenance"), "web");
  EXPECT_EQ(a.field("X-Request-Id"), "req-42");
  EXPECT_EQ(a.field("Content-Length"), std::to_string(a.body.size()));
  EXPECT_NE(a.body.find("Request id req-42<"), std::string::npos);
  EXPECT_EQ(a.body.substr(a.body.size() - 8), "</html>\n");
}

TEST(LocalAnswerTest, MaintenancePageShowsOnlyPlainIds) {
  AnswerBuffer buf;
  Outbox out;
  for (std::string id : {std::string("<script>"), std::string(129, 'i'), std::string("")}) {
    write_maintenance({"web", "X-Request-Id", id, true, false}, buf, out);
    Answer a(out);
    EXPECT_EQ(a.field("X-Request-Id"), "");
    EXPECT_EQ(a.body.find("Request id"), std::string::npos);
    EXPECT_EQ(a.field("Content-Length"), std::to_string(a.body.size()));
  }
  // Request ids off: none, whatever the client sent.
  write_maintenance({"web", "", "req-42", false, false}, buf, out);
  EXPECT_EQ(Answer(out).body.find("req-42"), std::string::npos);
  // The longest names and id fit.
  std::string name(AnswerBuffer::max_name, 'p'), id(AnswerBuffer::max_request_id, 'i');
  write_maintenance({name, "X-" + std::string(126, 'h'), id, true, true}, buf, out);
  Answer longest(out);
  EXPECT_EQ(longest.field("X-Lb-Maintenance"), name);
  EXPECT_EQ(longest.field("X-" + std::string(126, 'h')), id);
  EXPECT_EQ(longest.body, "");
}

TEST(LocalAnswerTest, TraceEchoesTheRequestWithoutCredentials) {
  std::string text = "TRACE /echo HTTP/1.1\r\nHost: t\r\nCookie: s=secret\r\nX-Probe: one\r\n"
                     "Authorization: Basic c2VjcmV0\r\nMax-Forwards: 0\r\n\r\n";
  http::Parser p(http::Parser::Kind::request);
  ASSERT_EQ(p.feed(text.data(), text.data() + text.size()).event,
            http::Parser::Event::head_complete);
  AnswerBuffer buf;
  Outbox out;
  ASSERT_TRUE(write_final_recipient(p.head(), true, buf, out));
  Answer a(out);
  EXPECT_EQ(a.field("Content-Type"), "message/http");
  EXPECT_EQ(a.body, "TRACE /echo HTTP/1.1\r\nHost: t\r\nX-Probe: one\r\nMax-Forwards: 0\r\n\r\n");
  EXPECT_EQ(a.field("Content-Length"), std::to_string(a.body.size()));
}

TEST(LocalAnswerTest, OptionsIsAnEmpty200) {
  std::string text = "OPTIONS * HTTP/1.1\r\nHost: t\r\nMax-Forwards: 0\r\n\r\n";
  http::Parser p(http::Parser::Kind::request);
  ASSERT_EQ(p.feed(text.data(), text.data() + text.size()).event,
            http::Parser::Event::head_complete);
  AnswerBuffer buf;
  Outbox out;
  ASSERT_TRUE(write_final_recipient(p.head(), false, buf, out));
  Answer a(out);
  EXPECT_EQ(a.head, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(a.body, "");
}

TEST(LocalAnswerTest, RedirectJoinsItsParts) {
  AnswerBuffer buf;
  Outbox out;
  RedirectAnswer r;
  r.code = 308;
  r.scheme = "https";
  r.host = "www.example.com";
  r.path_before = "/new/";
  r.path_after = "x/y";
  r.has_query = true;
  r.query = "c=d";
  write_redirect(r, buf, out);
  Answer a(out);
  EXPECT_EQ(a.head.substr(0, 33), "HTTP/1.1 308 Permanent Redirect\r\n");
  EXPECT_EQ(a.field("Location"), "https://www.example.com/new/x/y?c=d");
  EXPECT_EQ(a.field("Content-Length"), "0");
  EXPECT_EQ(a.body, "");
  r.code = 302;
  r.scheme = "http";
  r.port = 8080;
  r.has_query = false;
  r.keep_alive = false;
  write_redirect(r, buf, out);
  Answer b(out);
  EXPECT_EQ(b.head.substr(0, 20), "HTTP/1.1 302 Found\r\n");
  EXPECT_EQ(b.field("Location"), "http://www.example.com:8080/new/x/y");
  EXPECT_EQ(b.field("Connection"), "close");
}

TEST(LocalAnswerTest, FixedResponse) {
  AnswerBuffer buf;
  Outbox out;
  write_fixed({503, "text/plain", "back soon", true, false}, buf, out);
  Answer a(out);
  EXPECT_EQ(a.head.substr(0, 34), "HTTP/1.1 503 Service Unavailable\r\n");
  EXPECT_EQ(a.field("Content-Type"), "text/plain");
  EXPECT_EQ(a.field("Content-Length"), "9");
  EXPECT_EQ(a.body, "back soon");
  write_fixed({403, "application/json", "{}", false, true}, buf, out);
  Answer h(out);
  EXPECT_EQ(h.head.substr(0, 24), "HTTP/1.1 403 Forbidden\r\n");
  EXPECT_EQ(h.field("Content-Length"), "2"); // HEAD: what a GET would have
  EXPECT_EQ(h.field("Connection"), "close");
  EXPECT_EQ(h.body, "");
}

} // namespace
} // namespace lb::proxy
