#include "lb/io/event_loop.hpp"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <tuple>
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

// Writes held back while a batch is dispatched (defer_write): the writer's
// handler runs once more at the end of the same pass, writable again.
struct Deferring {
  EventLoop* loop = nullptr;
  Watch* w = nullptr;
  const char* name = "";
  std::vector<std::string>* log = nullptr;
  bool defer = true;
  bool deferred = false;
  uint64_t pass_deferred = 0;
  uint64_t pass_flushed = 0;
};

void deferring(void* owner, uint32_t events) {
  auto* d = static_cast<Deferring*>(owner);
  if (events == 0) { // the end of the pass: the held-back write goes now
    EXPECT_TRUE(d->w->out_ready);
    EXPECT_FALSE(d->w->write_deferred);
    d->pass_flushed = d->loop->passes();
    d->log->push_back(std::string(d->name) + " flush");
    char buf[8];
    EXPECT_EQ(::read(d->w->fd, buf, sizeof buf), 1);
    EXPECT_EQ(::write(d->w->fd, "!", 1), 1);
    return;
  }
  if (!(events & EPOLLIN))
    return;
  d->log->push_back(std::string(d->name) + " in");
  if (d->defer && !d->deferred) {
    d->deferred = d->loop->defer_write(*d->w);
    d->pass_deferred = d->loop->passes();
    if (d->deferred) {
      EXPECT_FALSE(d->w->out_ready); // a writer waits as after a short write
      EXPECT_TRUE(d->w->write_deferred);
    }
  }
}

TEST(EventLoop, WritesHeldBackInABatchGoOutTogetherAtTheEndOfThePass) {
  EventLoop loop;
  Pair a, b;
  Watch wa, wb;
  std::vector<std::string> log;
  Deferring da{&loop, &wa, "a", &log}, db{&loop, &wb, "b", &log};
  for (auto [w, d, fd] : {std::tuple{&wa, &da, a.mine}, std::tuple{&wb, &db, b.mine}}) {
    w->fd = fd;
    w->handler = &deferring;
    w->owner = d;
    ASSERT_TRUE(loop.add(*w));
  }
  // Both readable before the loop runs: one batch of two events.
  ASSERT_EQ(::write(a.peer, "x", 1), 1);
  ASSERT_EQ(::write(b.peer, "y", 1), 1);
  EventLoop::Timer stop;
  stop.when = Clock::now() + 50ms;
  stop.fire = [](void* l) { static_cast<EventLoop*>(l)->stop(); };
  stop.context = &loop;
  loop.add_timer(stop);
  loop.run();
  ASSERT_TRUE(da.deferred);
  ASSERT_TRUE(db.deferred);
  // Both reads first, then both writes, in the pass of the reads.
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[0].substr(2), "in");
  EXPECT_EQ(log[1].substr(2), "in");
  EXPECT_EQ(log[2].substr(2), "flush");
  EXPECT_EQ(log[3].substr(2), "flush");
  EXPECT_EQ(da.pass_flushed, da.pass_deferred);
  EXPECT_EQ(db.pass_flushed, db.pass_deferred);
  char c;
  EXPECT_EQ(::read(a.peer, &c, 1), 1);
  EXPECT_EQ(::read(b.peer, &c, 1), 1);
  loop.close(wa);
  loop.close(wb);
}

TEST(EventLoop, AWriteAloneInItsPassOrOutsideABatchGoesAtOnce) {
  EventLoop loop;
  Pair a;
  Watch wa;
  std::vector<std::string> log;
  Deferring da{&loop, &wa, "a", &log};
  wa.fd = a.mine;
  wa.handler = &deferring;
  wa.owner = &da;
  ASSERT_TRUE(loop.add(wa));
  ASSERT_EQ(::write(a.peer, "x", 1), 1);
  run_for(loop, 50ms);
  EXPECT_FALSE(da.deferred); // one event in its pass: nothing to gather
  EXPECT_TRUE(wa.out_ready);
  // Nor from a timer, after the batch.
  EventLoop::Timer t;
  struct Ctx {
    EventLoop* loop;
    Watch* w;
    bool deferred = true;
  } ctx{&loop, &wa};
  t.when = Clock::now();
  t.fire = [](void* c) {
    auto* x = static_cast<Ctx*>(c);
    x->deferred = x->loop->defer_write(*x->w);
    x->loop->stop();
  };
  t.context = &ctx;
  loop.add_timer(t);
  run_for(loop, 2s);
  EXPECT_FALSE(ctx.deferred);
  loop.close(wa);
}

// Two watches with `handler`, both readable before the loop runs: their
// events come in one batch, in either order. `wa` starts writable.
void batch_of_two(EventLoop& loop, Pair& a, Pair& b, Watch& wa, Watch& wb, void* owner,
                  Watch::Handler handler) {
  wa.fd = a.mine;
  wb.fd = b.mine;
  wa.owner = wb.owner = owner;
  wa.handler = wb.handler = handler;
  wa.out_ready = true;
  ASSERT_TRUE(loop.add(wa));
  ASSERT_TRUE(loop.add(wb));
  ASSERT_EQ(::write(a.peer, "x", 1), 1);
  ASSERT_EQ(::write(b.peer, "y", 1), 1);
}

TEST(EventLoop, ClosingAWatchWhoseWriteIsHeldBackDropsTheWrite) {
  EventLoop loop;
  Pair a, b;
  Watch wa, wb;
  struct Ctx {
    EventLoop* loop;
    Watch* a;
    Watch* b;
    int a_calls = 0;
    bool deferred = false;
  } ctx{&loop, &wa, &wb};
  // Whichever comes first holds back a's write; the second closes a.
  auto handler = [](void* owner, uint32_t events) {
    auto* c = static_cast<Ctx*>(owner);
    if (events == 0) {
      ++c->a_calls;
      return;
    }
    if (!c->deferred) {
      c->deferred = c->loop->defer_write(*c->a);
      return;
    }
    if (c->a->fd >= 0)
      c->loop->close(*c->a);
  };
  batch_of_two(loop, a, b, wa, wb, &ctx, handler);
  run_for(loop, 50ms);
  ASSERT_TRUE(ctx.deferred);
  EXPECT_EQ(wa.fd, -1);
  EXPECT_FALSE(wa.queued);
  EXPECT_FALSE(wa.write_deferred);
  EXPECT_EQ(ctx.a_calls, 0);
  loop.close(wb);
}

TEST(EventLoop, AHeldBackWriteWhoseSocketFillsMeanwhileWaitsForEpollout) {
  EventLoop loop;
  Pair a, b;
  Watch wa, wb;
  struct Ctx {
    EventLoop* loop;
    Watch* a;
    bool deferred = false;
    bool blocked = false;
    int queued_calls = 0;
    bool ready_then = true;
  } ctx{&loop, &wa};
  // The first event holds back a's write; the second finds a's socket full
  // (a TLS read that had to write, say).
  auto handler = [](void* owner, uint32_t events) {
    auto* c = static_cast<Ctx*>(owner);
    if (events == 0) {
      ++c->queued_calls;
      c->ready_then = c->a->out_ready;
      return;
    }
    if (!c->deferred) {
      c->deferred = c->loop->defer_write(*c->a);
    } else if (!c->blocked) {
      c->a->blocked();
      c->blocked = true;
    }
  };
  batch_of_two(loop, a, b, wa, wb, &ctx, handler);
  run_for(loop, 50ms);
  ASSERT_TRUE(ctx.deferred);
  ASSERT_TRUE(ctx.blocked);
  EXPECT_FALSE(wa.write_deferred);
  // Its turn at the end of the pass does not say writable: EPOLLOUT will.
  EXPECT_EQ(ctx.queued_calls, 1);
  EXPECT_FALSE(ctx.ready_then);
  EXPECT_FALSE(wa.out_ready);
  loop.close(wa);
  loop.close(wb);
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
