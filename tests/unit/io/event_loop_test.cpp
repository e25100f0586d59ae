#include "lb/io/event_loop.hpp"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

namespace lb::io {
namespace {

using namespace std::chrono_literals;

// A connected pair of non-blocking stream sockets: `mine` goes into the loop,
// the test writes to `peer`.
struct Pair {
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    mine = fds[0];
    peer = fds[1];
  }
  ~Pair() {
    if (peer >= 0)
      ::close(peer);
  }
  int mine = -1;
  int peer = -1;
};

struct Seen {
  EventLoop* loop = nullptr;
  Watch* watch = nullptr;
  int calls = 0;
  std::vector<uint32_t> events;
  std::vector<uint64_t> passes;
  bool stop = true;
};

void record(void* owner, uint32_t events) {
  auto* s = static_cast<Seen*>(owner);
  ++s->calls;
  s->events.push_back(events);
  s->passes.push_back(s->loop->passes());
  if (s->stop)
    s->loop->stop();
}

void watch(EventLoop& loop, Watch& w, int fd, Seen& seen) {
  seen.loop = &loop;
  seen.watch = &w;
  w.fd = fd;
  w.handler = &record;
  w.owner = &seen;
  ASSERT_TRUE(loop.add(w));
}

// Runs the loop until something stops it, or for at most `limit`.
void run_for(EventLoop& loop, std::chrono::milliseconds limit) {
  EventLoop::Timer guard;
  guard.when = Clock::now() + limit;
  guard.fire = [](void* l) { static_cast<EventLoop*>(l)->stop(); };
  guard.context = &loop;
  loop.add_timer(guard);
  loop.run();
  loop.remove_timer(guard);
}

TEST(EventLoop, AnEdgeIsReportedOnceAndItsReadinessKept) {
  EventLoop loop;
  Pair p;
  Watch w;
  Seen seen;
  watch(loop, w, p.mine, seen);
  ASSERT_EQ(::write(p.peer, "x", 1), 1);
  run_for(loop, 2s);
  ASSERT_EQ(seen.calls, 1);
  EXPECT_TRUE(seen.events[0] & EPOLLIN);
  EXPECT_TRUE(w.in_ready);
  EXPECT_TRUE(w.out_ready);
  // Nothing read, nothing new: no second event (edge-triggered), the
  // readiness stays known.
  seen.stop = false;
  run_for(loop, 100ms);
  EXPECT_EQ(seen.calls, 1);
  EXPECT_TRUE(w.in_ready);
  // Drained, then new bytes: a new edge.
  char buf[8];
  ASSERT_EQ(::read(p.mine, buf, sizeof buf), 1);
  w.drained();
  EXPECT_FALSE(w.in_ready);
  seen.stop = true;
  ASSERT_EQ(::write(p.peer, "y", 1), 1);
  run_for(loop, 2s);
  EXPECT_EQ(seen.calls, 2);
  EXPECT_TRUE(w.in_ready);
  loop.close(w);
}

TEST(EventLoop, APeerThatClosesIsAHangupThatDrainingDoesNotHide) {
  EventLoop loop;
  Pair p;
  Watch w;
  Seen seen;
  watch(loop, w, p.mine, seen);
  ::close(p.peer);
  p.peer = -1;
  run_for(loop, 2s);
  ASSERT_EQ(seen.calls, 1);
  EXPECT_TRUE(w.hangup);
  w.drained(); // a read that came back short: the end is still to be read
  EXPECT_TRUE(w.in_ready);
  loop.close(w);
}

TEST(EventLoop, AnEventOfASocketClosedMeanwhileGoesNowhere) {
  EventLoop loop;
  Pair a, b;
  Watch wa, wb, wc;
  Seen sa, sb, sc;
  sa.stop = sb.stop = sc.stop = false;
  watch(loop, wa, a.mine, sa);
  watch(loop, wb, b.mine, sb);
  // Both readable before the loop runs: their events come in one batch, a's
  // first. a's handler closes b and opens a socket that takes b's number.
  ASSERT_EQ(::write(a.peer, "x", 1), 1);
  ASSERT_EQ(::write(b.peer, "x", 1), 1);
  struct Ctx {
    EventLoop* loop;
    Watch* b;
    Watch* c;
    Seen* sc;
    int reused_fd = -1;
    int c_peer = -1;
    int calls = 0;
  } ctx{&loop, &wb, &wc, &sc};
  wa.owner = &ctx;
  wa.handler = [](void* owner, uint32_t) {
    auto* c = static_cast<Ctx*>(owner);
    ++c->calls;
    int old_fd = c->b->fd;
    c->loop->close(*c->b);
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    c->reused_fd = fds[0];
    c->c_peer = fds[1];
    EXPECT_EQ(fds[0], old_fd); // the lowest free number: b's
    c->c->fd = fds[0];
    c->c->handler = &record;
    c->c->owner = c->sc;
    c->sc->loop = c->loop;
    ASSERT_TRUE(c->loop->add(*c->c));
  };
  run_for(loop, 200ms);
  EXPECT_EQ(ctx.calls, 1);
  EXPECT_EQ(sb.calls, 0);
  // The new socket has nothing to read: b's stale event did not reach it.
  for (uint32_t e : sc.events)
    EXPECT_FALSE(e & EPOLLIN);
  loop.close(wa);
  loop.close(wc);
  ::close(ctx.c_peer);
}

TEST(EventLoop, TheRunQueueRunsOnTheNextPassAndOnce) {
  EventLoop loop;
  Pair p;
  Watch w;
  Seen seen;
  seen.stop = false;
  watch(loop, w, p.mine, seen);
  loop.schedule(w);
  loop.schedule(w); // once
  run_for(loop, 100ms);
  // The add reports the socket writable (an event), the queue runs it once
  // more with no events.
  int queued = 0;
  for (uint32_t e : seen.events)
    queued += e == 0;
  EXPECT_EQ(queued, 1);
  EXPECT_FALSE(w.queued);
  loop.close(w);
}

TEST(EventLoop, WhatTheQueueSchedulesRunsOnTheFollowingPass) {
  EventLoop loop;
  Pair p;
  Watch w;
  Seen seen;
  seen.loop = &loop;
  w.fd = p.mine;
  w.owner = &seen;
  w.handler = [](void* owner, uint32_t events) {
    auto* s = static_cast<Seen*>(owner);
    if (events)
      return; // the add's writable edge
    s->passes.push_back(s->loop->passes());
    if (++s->calls < 3)
      s->loop->schedule(*s->watch);
    else
      s->loop->stop();
  };
  seen.watch = &w;
  ASSERT_TRUE(loop.add(w));
  loop.schedule(w);
  run_for(loop, 2s);
  ASSERT_EQ(seen.calls, 3);
  EXPECT_LT(seen.passes[0], seen.passes[1]);
  EXPECT_LT(seen.passes[1], seen.passes[2]);
  loop.close(w);
}

TEST(EventLoop, ClosingAQueuedWatchTakesItOutOfTheQueue) {
  EventLoop loop;
  Pair p;
  Watch w;
  Seen seen;
  watch(loop, w, p.mine, seen);
  loop.schedule(w);
  loop.close(w);
  EXPECT_FALSE(w.queued);
  run_for(loop, 50ms);
  for (uint32_t e : seen.events)
    EXPECT_NE(e, 0u);
}

TEST(EventLoop, TasksPostedFromAnotherThreadRunOnTheLoop) {
  EventLoop loop;
  std::thread::id ran_on;
  int runs = 0;
  std::thread poster([&] {
    for (int i = 0; i < 100; ++i)
      loop.post([&] {
        ran_on = std::this_thread::get_id();
        if (++runs == 100)
          loop.stop();
      });
  });
  run_for(loop, 5s);
  poster.join();
  EXPECT_EQ(runs, 100);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(EventLoop, ATimerFiresAfterItsTimeWithTheClockOfThePass) {
  EventLoop loop;
  struct Ctx {
    EventLoop* loop;
    Clock::time_point fired_at{};
  } ctx{&loop};
  EventLoop::Timer t;
  auto start = Clock::now();
  t.when = start + 30ms;
  t.fire = [](void* c) {
    auto* x = static_cast<Ctx*>(c);
    x->fired_at = x->loop->now();
    x->loop->stop();
  };
  t.context = &ctx;
  loop.add_timer(t);
  run_for(loop, 5s);
  EXPECT_GE(ctx.fired_at - start, 30ms);
  EXPECT_LT(ctx.fired_at - start, 2s);
  EXPECT_EQ(t.when, Clock::time_point::max()); // fired once
}

} // namespace
} // namespace lb::io
