#include "lb/io/pipe_pool.hpp"

#include "lb/io/event_loop.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace lb::io {
namespace {

// A connected pair of TCP sockets on loopback (splice needs real sockets):
// `lb` is the side splice_step works on (non-blocking), `peer` the test's.
struct TcpPair {
  TcpPair() {
    int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    EXPECT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(l, 1), 0);
    EXPECT_EQ(::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len), 0);
    peer = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(peer, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    lb = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    EXPECT_GE(lb, 0);
    ::close(l);
  }
  ~TcpPair() {
    if (lb >= 0)
      ::close(lb);
    if (peer >= 0)
      ::close(peer);
  }
  int lb = -1;
  int peer = -1;
};

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>('a' + (i * 7) % 26);
  return s;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, 0);
    ASSERT_GT(n, 0);
    off += static_cast<size_t>(n);
  }
}

std::string recv_exactly(int fd, size_t n) {
  std::string out;
  char buf[65536];
  while (out.size() < n) {
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
    if (r <= 0)
      break;
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

// Runs splice_step until it stops for something else than the round budget.
SpliceStep run(Pipe& p, Watch& from, Watch& to, uint64_t& left, SpliceMoved& total) {
  for (;;) {
    SpliceMoved moved;
    SpliceStep step = splice_step(p, from, to, left, moved);
    left -= moved.in;
    total.in += moved.in;
    total.out += moved.out;
    if (step != SpliceStep::yield)
      return step;
  }
}

struct Fixture : ::testing::Test {
  TcpPair src; // the peer writes, lb reads
  TcpPair dst; // lb writes, the peer reads
  PipePool pool;
  Pipe* pipe = nullptr;
  Watch from;
  Watch to;
  void SetUp() override {
    pipe = pool.acquire();
    ASSERT_NE(pipe, nullptr);
    from.fd = src.lb;
    to.fd = dst.lb;
    from.in_ready = to.out_ready = true;
  }
  void TearDown() override { pool.release(pipe); }
};

TEST_F(Fixture, MovesExactlyLeftAndLeavesWhatFollows) {
  std::string body = pattern(300 * 1024);
  send_all(src.peer, body + "NEXT");
  uint64_t left = body.size();
  SpliceMoved total;
  SpliceStep step = SpliceStep::wait_in;
  // The bytes may come in several edges: each wait_in is a new edge here.
  for (int i = 0; i < 1000 && left > 0; ++i) {
    step = run(*pipe, from, to, left, total);
    if (step == SpliceStep::wait_in)
      from.in_ready = true;
    ASSERT_NE(step, SpliceStep::wait_out);
  }
  EXPECT_EQ(step, SpliceStep::done);
  EXPECT_EQ(total.in, body.size());
  EXPECT_EQ(total.out, body.size());
  EXPECT_EQ(pipe->held, 0u);
  EXPECT_EQ(recv_exactly(dst.peer, body.size()), body);
  // What follows the body is still in the source socket, unread.
  char next[8];
  EXPECT_EQ(::recv(src.lb, next, sizeof next, 0), 4);
  EXPECT_EQ(std::string(next, 4), "NEXT");
}

TEST_F(Fixture, AnEmptySourceSaysWaitInAndIsDrained) {
  uint64_t left = 1000;
  SpliceMoved total;
  EXPECT_EQ(run(*pipe, from, to, left, total), SpliceStep::wait_in);
  EXPECT_FALSE(from.in_ready);
  EXPECT_EQ(total.in, 0u);
  // Not ready: not even tried.
  EXPECT_EQ(run(*pipe, from, to, left, total), SpliceStep::wait_in);
}

TEST_F(Fixture, AFullDestinationKeepsTheRestInThePipe) {
  int small = 16384;
  ::setsockopt(dst.lb, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  ::setsockopt(dst.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  std::string body = pattern(1024 * 1024);
  std::string got;
  uint64_t left = body.size();
  SpliceMoved total;
  size_t sent = 0;
  bool blocked = false;
  for (int i = 0; i < 100000 && got.size() < body.size(); ++i) {
    if (sent < body.size()) {
      ssize_t n = ::send(src.peer, body.data() + sent, std::min<size_t>(65536, body.size() - sent),
                         MSG_DONTWAIT);
      if (n > 0)
        sent += static_cast<size_t>(n);
    }
    from.in_ready = true;
    SpliceStep step = run(*pipe, from, to, left, total);
    if (step == SpliceStep::wait_out) {
      blocked = true;
      EXPECT_FALSE(to.out_ready);
      EXPECT_GT(pipe->held, 0u);
      // The test's reader makes room; the next edge says so.
      char buf[65536];
      ssize_t r = ::recv(dst.peer, buf, sizeof buf, 0);
      ASSERT_GT(r, 0);
      got.append(buf, static_cast<size_t>(r));
      to.out_ready = true;
    } else if (step == SpliceStep::done) {
      got += recv_exactly(dst.peer, body.size() - got.size());
    } else {
      ASSERT_EQ(step, SpliceStep::wait_in);
    }
  }
  EXPECT_TRUE(blocked);
  EXPECT_EQ(got.size(), body.size());
  EXPECT_TRUE(got == body);
  EXPECT_EQ(total.out, body.size());
}

TEST_F(Fixture, TheSourceEndingEarlySaysInEndedWithAnEmptyPipe) {
  std::string body = pattern(50000);
  send_all(src.peer, body);
  ::shutdown(src.peer, SHUT_WR);
  uint64_t left = 100000;
  SpliceMoved total;
  SpliceStep step = SpliceStep::wait_in;
  for (int i = 0; i < 1000; ++i) {
    step = run(*pipe, from, to, left, total);
    if (step != SpliceStep::wait_in)
      break;
    from.in_ready = true;
  }
  EXPECT_EQ(step, SpliceStep::in_ended);
  EXPECT_EQ(pipe->held, 0u);
  EXPECT_EQ(total.out, body.size());
  EXPECT_EQ(recv_exactly(dst.peer, body.size()), body);
}

TEST_F(Fixture, AGoneDestinationSaysOutFailed) {
  // The destination's peer resets: the first write may still be taken, a
  // later one fails.
  linger l{1, 0};
  ::setsockopt(dst.peer, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(dst.peer);
  dst.peer = -1;
  std::string body = pattern(64 * 1024);
  uint64_t left = 10 * body.size();
  SpliceMoved total;
  SpliceStep step = SpliceStep::wait_in;
  for (int i = 0; i < 10 && step != SpliceStep::out_failed; ++i) {
    send_all(src.peer, body);
    from.in_ready = true;
    step = run(*pipe, from, to, left, total);
    if (step == SpliceStep::wait_out)
      to.out_ready = true;
  }
  EXPECT_EQ(step, SpliceStep::out_failed);
  EXPECT_TRUE(errno == EPIPE || errno == ECONNRESET) << errno;
}

TEST(PipePool, APipeGivenBackHoldingBytesIsClosedAnEmptyOneKept) {
  PipePool pool;
  Pipe* a = pool.acquire();
  ASSERT_NE(a, nullptr);
  int fd = a->r;
  pool.release(a);
  Pipe* b = pool.acquire();
  EXPECT_EQ(b->r, fd); // the same pipe again
  ASSERT_EQ(::write(b->w, "x", 1), 1);
  b->held = 1;
  pool.release(b); // closed: its byte belongs to nobody
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);
  Pipe* c = pool.acquire();
  ASSERT_NE(c, nullptr);
  pool.release(c);
  EXPECT_EQ(pool.trim(), 0u); // used since the last trim
  EXPECT_EQ(pool.trim(), 1u); // unused for a whole period: closed
}

} // namespace
} // namespace lb::io
