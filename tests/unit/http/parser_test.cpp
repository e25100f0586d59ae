#include "lb/http/parser.hpp"

#include <gtest/gtest.h>

#include <string>

namespace lb::http {
namespace {

using Event = Parser::Event;

// Feeds `text` (in pieces of `step` bytes, all from one buffer, as a connection
// does) until the head is complete. Returns the offset just past the head.
size_t parse_head(Parser& p, const std::string& text, size_t step = 1 << 20) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + step);
    auto r = p.feed(text.data() + pos, text.data() + end);
    pos = static_cast<size_t>(r.stop - text.data());
    if (r.event == Event::head_complete)
      return pos;
    EXPECT_EQ(r.event, Event::need_more) << p.error_reason();
    if (r.event != Event::need_more)
      return std::string::npos;
  }
  return std::string::npos;
}

TEST(ParserTest, RequestHeadAsSpans) {
  Parser p(Parser::Kind::request);
  std::string text =
      "GET /a/b?c=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Foo\r\n"
      "X-Foo: bar  \r\nContent-Length: 0\r\n\r\n";
  size_t end = parse_head(p, text);
  ASSERT_EQ(end, text.size());
  const Head& h = p.head();
  EXPECT_EQ(h.method.view(), "GET");
  EXPECT_EQ(h.target.view(), "/a/b?c=1");
  EXPECT_EQ(h.minor, 1);
  ASSERT_EQ(h.count, 4u);
  EXPECT_EQ(h.headers[0].field, Field::host);
  EXPECT_EQ(h.headers[0].value.view(), "example.com");
  EXPECT_EQ(h.headers[2].value.view(), "bar"); // trailing whitespace is not part of the value
  EXPECT_TRUE(h.headers[1].hop_by_hop);
  EXPECT_EQ(h.start, text.data());
  EXPECT_EQ(std::string(h.headers[1].line_start, h.headers[1].line_end),
            "Connection: keep-alive, X-Foo\r\n");
  EXPECT_EQ(std::string(h.start, h.start_line_end()), "GET /a/b?c=1 HTTP/1.1\r\n");
  EXPECT_EQ(std::string(h.end_of_fields(), h.end), "\r\n");
  // The spans point into the caller's buffer: nothing was copied.
  EXPECT_GE(h.headers[2].value.p, text.data());
  EXPECT_LT(h.headers[2].value.p, text.data() + text.size());

  Head& mutable_head = p.head();
  mark_connection_options(mutable_head);
  EXPECT_TRUE(mutable_head.headers[2].hop_by_hop);  // named by Connection
  EXPECT_FALSE(mutable_head.headers[3].hop_by_hop); // Content-Length stays
}

// The names of the fields a request head `text` leaves hop-by-hop once its
// Connection options are marked, in order, comma-separated.
std::string cut_fields(const std::string& text) {
  Parser p(Parser::Kind::request);
  EXPECT_EQ(parse_head(p, text), text.size()) << text;
  mark_connection_options(p.head());
  std::string cut;
  for (unsigned i = 0; i < p.head().count; ++i)
    if (p.head().headers[i].hop_by_hop) {
      if (!cut.empty())
        cut += ',';
      cut += p.head().headers[i].name.view();
    }
  return cut;
}

// The options that name fields hop-by-hop by definition (Keep-Alive, Upgrade,
// TE) leave those fields marked, and the head's other fields as they were; a
// field named by a less usual option, in any case, is marked too.
TEST(ParserTest, ConnectionOptionsOfHopByHopFields) {
  EXPECT_EQ(cut_fields("GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, upgrade, TE, close\r\n"
                       "Keep-Alive: timeout=5\r\nUpgrade: websocket\r\nTE: trailers\r\n"
                       "Close: x\r\nX-Keep: 1\r\n\r\n"),
            "Connection,Keep-Alive,Upgrade,TE,Close");
}

// "Connection: keep-alive" alone (browsers, HTTP/1.0 clients), whatever its
// case, names no other field; another Connection line of the same head
// still does.
TEST(ParserTest, ConnectionKeepAliveAloneNamesNoOtherField) {
  EXPECT_EQ(cut_fields("GET / HTTP/1.0\r\nConnection: KEEP-Alive\r\nKeep-Alive: timeout=5\r\n"
                       "X-Keep: 1\r\nHost: h\r\n\r\n"),
            "Connection,Keep-Alive");
  EXPECT_EQ(cut_fields("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
                       "Connection: X-Keep\r\nX-Keep: 1\r\n\r\n"),
            "Connection,Connection,X-Keep");
}

TEST(ParserTest, ByteByByteGivesTheSameSpans) {
  std::string text = "POST /upload HTTP/1.1\r\nHost: h\r\nX-Long-Header-Name: some value\r\n\r\n";
  Parser whole(Parser::Kind::request), bytes(Parser::Kind::request);
  ASSERT_EQ(parse_head(whole, text), text.size());
  ASSERT_EQ(parse_head(bytes, text, 1), text.size());
  ASSERT_EQ(whole.head().count, bytes.head().count);
  for (unsigned i = 0; i < whole.head().count; ++i) {
    EXPECT_EQ(whole.head().headers[i].name.view(), bytes.head().headers[i].name.view());
    EXPECT_EQ(whole.head().headers[i].value.view(), bytes.head().headers[i].value.view());
  }
  EXPECT_EQ(bytes.head().target.view(), "/upload");
}

TEST(ParserTest, PipelinedMessagesStopAtEachEnd) {
  Parser p(Parser::Kind::request);
  std::string text = "POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                     "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t head_end = parse_head(p, text);
  ASSERT_NE(head_end, std::string::npos);
  EXPECT_EQ(p.head().content_length, 5u);
  auto r = p.feed(text.data() + head_end, text.data() + text.size());
  ASSERT_EQ(r.event, Event::message_complete);
  size_t second = static_cast<size_t>(r.stop - text.data());
  EXPECT_EQ(text.substr(second, 6), "GET /2");
  r = p.feed(text.data() + second, text.data() + text.size());
  ASSERT_EQ(r.event, Event::head_complete);
  EXPECT_EQ(p.head().target.view(), "/2");
  r = p.feed(r.stop, text.data() + text.size());
  EXPECT_EQ(r.event, Event::message_complete);
  EXPECT_EQ(r.stop, text.data() + text.size());
}

// Head::has() and find() answer for the message at hand: what the previous one
// on the connection carried is forgotten, and trailer fields add nothing.
TEST(ParserTest, KindsOfFieldsPresentArePerMessage) {
  Parser p(Parser::Kind::request);
  std::string text = "POST /1 HTTP/1.1\r\nHost: h\r\nCONNECTION: X-A\r\nX-A: 1\r\n"
                     "x-forwarded-for: 10.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "0\r\nConnection: x\r\nTE: trailers\r\n\r\n"
                     "GET /2 HTTP/1.1\r\nHost: h\r\nX-A: 2\r\n\r\n";
  size_t head_end = parse_head(p, text);
  ASSERT_NE(head_end, std::string::npos);
  Head& first = p.head();
  EXPECT_TRUE(first.has(Field::host));
  EXPECT_TRUE(first.has(Field::connection));
  EXPECT_TRUE(first.has(Field::x_forwarded_for));
  EXPECT_TRUE(first.has(Field::transfer_encoding));
  EXPECT_TRUE(first.has(Field::other));
  EXPECT_FALSE(first.has(Field::te));
  EXPECT_FALSE(first.has(Field::content_length));
  ASSERT_NE(first.find(Field::x_forwarded_for), nullptr);
  EXPECT_EQ(first.find(Field::x_forwarded_for)->value.view(), "10.0.0.1");
  mark_connection_options(first);
  EXPECT_TRUE(first.headers[2].hop_by_hop); // X-A, named by Connection

  auto r = p.feed(text.data() + head_end, text.data() + text.size());
  ASSERT_EQ(r.event, Event::message_complete) << p.error_reason();
  EXPECT_FALSE(p.head().has(Field::te)); // a trailer field, not the head's
  r = p.feed(r.stop, text.data() + text.size());
  ASSERT_EQ(r.event, Event::head_complete);
  Head& second = p.head();
  EXPECT_EQ(second.target.view(), "/2");
  EXPECT_TRUE(second.has(Field::host));
  EXPECT_FALSE(second.has(Field::connection));
  EXPECT_FALSE(second.has(Field::x_forwarded_for));
  EXPECT_FALSE(second.has(Field::transfer_encoding));
  EXPECT_EQ(second.find(Field::connection), nullptr);
  EXPECT_EQ(second.find(Field::x_forwarded_for), nullptr);
  mark_connection_options(second);
  EXPECT_FALSE(second.headers[1].hop_by_hop); // X-A: no Connection field this time
}

TEST(ParserTest, ChunkedBodyEndsAfterLastChunkAndTrailers) {
  Parser p(Parser::Kind::request);
  std::string text = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
  size_t head_end = parse_head(p, text);
  ASSERT_TRUE(p.head().chunked);
  auto r = p.feed(text.data() + head_end, text.data() + text.size());
  ASSERT_EQ(r.event, Event::message_complete);
  EXPECT_EQ(std::string(r.stop), "NEXT");
  EXPECT_EQ(p.body_bytes(), 5u);
}

TEST(ParserTest, SmugglingFormsAreErrors) {
  const char* bad[] = {
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
      "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
      "NOT-HTTP\r\n\r\n",
  };
  for (const char* text : bad) {
    Parser p(Parser::Kind::request);
    std::string s(text);
    auto r = p.feed(s.data(), s.data() + s.size());
    EXPECT_EQ(r.event, Event::error) << text;
    EXPECT_NE(p.error_reason(), nullptr);
  }
}

TEST(ParserTest, FieldNamesAreKnownWhateverTheirCaseAndOnlyThen) {
  Parser p(Parser::Kind::request);
  p.set_request_id_header("X-Request-Id");
  std::string text =
      "GET / HTTP/1.1\r\nhOsT: h\r\nCONTENT-length: 0\r\nX-FORWARDED-FOR: 1.2.3.4\r\n"
      "Transfer_Encoding: chunked\r\nX-Forwarded~For: x\r\nConnectio^: close\r\n"
      "Keep-Alive0: x\r\nx-request-id: abc\r\nTE: trailers\r\n\r\n";
  ASSERT_EQ(parse_head(p, text), text.size());
  const Head& h = p.head();
  ASSERT_EQ(h.count, 9u);
  EXPECT_EQ(h.headers[0].field, Field::host);
  EXPECT_EQ(h.headers[1].field, Field::content_length);
  EXPECT_EQ(h.headers[2].field, Field::x_forwarded_for);
  // Token characters that are not letters never stand for one or for '-'.
  EXPECT_EQ(h.headers[3].field, Field::other);
  EXPECT_EQ(h.headers[4].field, Field::other);
  EXPECT_EQ(h.headers[5].field, Field::other);
  EXPECT_FALSE(h.headers[5].hop_by_hop);
  EXPECT_EQ(h.headers[6].field, Field::other);
  EXPECT_EQ(h.headers[7].field, Field::request_id);
  EXPECT_EQ(h.headers[8].field, Field::te);
  EXPECT_FALSE(h.chunked);
}

TEST(ParserTest, BadBytesInNamesAndValuesAreErrors) {
  const std::string bad[] = {
      std::string("GET / HTTP/1.1\r\nHost: h\r\nX-A\x01: x\r\n\r\n"),
      std::string("GET / HTTP/1.1\r\nHost: h\r\nX-\x80: x\r\n\r\n"),
      std::string("GET / HTTP/1.1\r\nHost: h\r\nX-A: a") + '\0' + "b\r\n\r\n",
      std::string("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n"),
      std::string("GET / HTTP/1.1\r\nHost: h/x\r\n\r\n"),
      std::string("GET / HTTP/1.1\r\nHost: h\"x\r\n\r\n"),
  };
  for (const std::string& s : bad) {
    Parser p(Parser::Kind::request);
    auto r = p.feed(s.data(), s.data() + s.size());
    EXPECT_EQ(r.event, Event::error) << s;
    EXPECT_NE(p.error_reason(), nullptr) << s;
  }
  // Every Host character RFC 3986 allows in a reg-name, an IP literal and a port.
  Parser p(Parser::Kind::request);
  std::string ok = "GET / HTTP/1.1\r\nHost: a-b.c_d~e!f$g&h'i(j)k*l+m,n;o=p%41[::1]:80\r\n\r\n";
  EXPECT_EQ(parse_head(p, ok), ok.size());
}

TEST(ParserTest, BodyLeftCountsAContentLengthBodyAndSkipEndsIt) {
  Parser p(Parser::Kind::response);
  std::string text = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
  auto r = p.feed(text.data(), text.data() + text.size());
  ASSERT_EQ(r.event, Event::head_complete);
  EXPECT_EQ(p.body_left(), 100u); // the head's end: no body byte parsed yet
  r = p.feed(r.stop, text.data() + text.size());
  EXPECT_EQ(r.event, Event::need_more);
  EXPECT_EQ(p.body_left(), 90u);
  p.skip_body(40);
  EXPECT_TRUE(p.in_message());
  EXPECT_EQ(p.body_left(), 50u);
  p.skip_body(50);
  EXPECT_FALSE(p.in_message());
  EXPECT_EQ(p.body_left(), 0u);
  EXPECT_EQ(p.body_bytes(), 100u);
  // The next message starts from reset().
  p.reset();
  std::string next = "HTTP/1.1 204 No Content\r\n\r\n";
  r = p.feed(next.data(), next.data() + next.size());
  EXPECT_EQ(r.event, Event::head_complete);
}

TEST(ParserTest, BodyLeftIsZeroForOtherFramings) {
  const char* heads[] = {
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
      "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
  };
  for (const char* h : heads) {
    Parser p(Parser::Kind::response);
    std::string text = h;
    auto r = p.feed(text.data(), text.data() + text.size());
    ASSERT_EQ(r.event, Event::head_complete) << h;
    p.feed(r.stop, text.data() + text.size());
    EXPECT_EQ(p.body_left(), 0u) << h;
  }
}

TEST(ParserTest, RequestLinePartsAreSeparatedBySingleSpaces) {
  const char* bad[] = {
      "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /  HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET   /x   HTTP/1.1\r\nHost: h\r\n\r\n",
  };
  for (const char* text : bad) {
    for (bool byte_by_byte : {false, true}) {
      Parser p(Parser::Kind::request);
      std::string s(text);
      Parser::Result r{Event::need_more, s.data()};
      if (byte_by_byte) {
        for (size_t i = 0; i < s.size() && r.event == Event::need_more; ++i)
          r = p.feed(s.data() + i, s.data() + i + 1);
      } else {
        r = p.feed(s.data(), s.data() + s.size());
      }
      ASSERT_EQ(r.event, Event::error) << text;
      EXPECT_STREQ(p.error_reason(), "request line: its parts must be separated by single spaces")
          << text;
      EXPECT_EQ(p.error_status(), 400);
    }
  }
}

TEST(ParserTest, TooManyHeadersIsAnError) {
  std::string text = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (unsigned i = 0; i < max_headers + 1; ++i)
    text += "X-H" + std::to_string(i) + ": v\r\n";
  text += "\r\n";
  Parser p(Parser::Kind::request);
  auto r = p.feed(text.data(), text.data() + text.size());
  EXPECT_EQ(r.event, Event::error);
  EXPECT_STREQ(p.error_reason(), "too many header fields");
}

TEST(ParserTest, ResponseToHeadHasNoBody) {
  Parser p(Parser::Kind::response);
  p.set_head_request(true);
  std::string text =
      "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
  size_t head_end = parse_head(p, text);
  ASSERT_NE(head_end, std::string::npos);
  EXPECT_EQ(p.head().status, 200);
  EXPECT_EQ(p.head().start, text.data());
  auto r = p.feed(text.data() + head_end, text.data() + text.size());
  ASSERT_EQ(r.event, Event::message_complete);
  EXPECT_EQ(static_cast<size_t>(r.stop - text.data()), head_end);
}

TEST(ParserTest, InterimResponseThenFinal) {
  Parser p(Parser::Kind::response);
  std::string text = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nConnection: Link\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  size_t first = parse_head(p, text);
  EXPECT_EQ(p.head().status, 103);
  EXPECT_TRUE(p.head().has(Field::connection));
  auto r = p.feed(text.data() + first, text.data() + text.size());
  ASSERT_EQ(r.event, Event::message_complete);
  r = p.feed(r.stop, text.data() + text.size());
  ASSERT_EQ(r.event, Event::head_complete);
  EXPECT_EQ(p.head().status, 200);
  // The final head's own fields, not the interim one's.
  EXPECT_FALSE(p.head().has(Field::connection));
  EXPECT_EQ(p.head().find(Field::connection), nullptr);
  EXPECT_TRUE(p.head().has(Field::content_length));
  r = p.feed(r.stop, text.data() + text.size());
  EXPECT_EQ(r.event, Event::message_complete);
}

TEST(ParserTest, CloseDelimitedResponseEndsAtEof) {
  Parser p(Parser::Kind::response);
  std::string text = "HTTP/1.1 200 OK\r\n\r\nsome bytes";
  size_t head_end = parse_head(p, text);
  EXPECT_TRUE(p.body_until_eof());
  auto r = p.feed(text.data() + head_end, text.data() + text.size());
  EXPECT_EQ(r.event, Event::need_more);
  EXPECT_TRUE(p.finish_at_eof());
  EXPECT_FALSE(p.in_message());
}

} // namespace
} // namespace lb::http
