#include "lb/io/timeouts.hpp"

#include "lb/io/buffer_pool.hpp"

#include <gtest/gtest.h>

#include <initializer_list>
#include <vector>

namespace lb::io {
namespace {

struct Probe : Timeouts::Entry {
  int id = 0;
  std::vector<int>* fired = nullptr;
};

void record(Timeouts::Entry* e) {
  auto* p = static_cast<Probe*>(e);
  p->fired->push_back(p->id);
}

// Probes numbered 1, 2, ... in the order given, each recording into `fired`.
void number(std::vector<int>& fired, std::initializer_list<Probe*> probes) {
  int id = 0;
  for (Probe* p : probes) {
    p->fire = record;
    p->fired = &fired;
    p->id = ++id;
  }
}

TEST(TimeoutsTest, FiresOnlyWhatIsDueInDeadlineOrder) {
  Timeouts t;
  std::vector<int> fired;
  Probe a, b, c;
  number(fired, {&a, &b, &c});
  t.arm(a, std::chrono::milliseconds(100));
  t.arm(b, std::chrono::milliseconds(10));
  t.arm(c, std::chrono::milliseconds(100));
  auto now = Clock::now();
  t.expire(now);
  EXPECT_TRUE(fired.empty());
  t.expire(now + std::chrono::milliseconds(50));
  EXPECT_EQ(fired, (std::vector<int>{2}));
  t.expire(now + std::chrono::milliseconds(200));
  EXPECT_EQ(fired, (std::vector<int>{2, 1, 3}));
  EXPECT_FALSE(a.armed());
}

TEST(TimeoutsTest, RearmMovesTheDeadlineAndDisarmCancels) {
  Timeouts t;
  std::vector<int> fired;
  Probe a, b;
  number(fired, {&a, &b});
  t.arm(a, std::chrono::milliseconds(10));
  t.arm(b, std::chrono::milliseconds(10));
  t.arm(a, std::chrono::seconds(10)); // re-armed to another duration
  Timeouts::disarm(b);
  t.expire(Clock::now() + std::chrono::seconds(1));
  EXPECT_TRUE(fired.empty());
  t.expire(Clock::now() + std::chrono::seconds(11));
  EXPECT_EQ(fired, (std::vector<int>{1}));
}

// Re-arming in the same pass (the same `now`) for the same duration keeps the
// entry where it is: entries armed after it still fire after it. A later
// re-arm moves it behind them. The same deadline reached through another
// duration leaves it in its queue, where it is due as asked.
TEST(TimeoutsTest, RearmInTheSamePassKeepsItsPlace) {
  Timeouts t;
  std::vector<int> fired;
  Probe a, b, c;
  number(fired, {&a, &b, &c});
  auto now = Clock::now();
  auto d = std::chrono::milliseconds(100);
  t.arm(a, d, now);
  t.arm(b, d, now);
  t.arm(a, d, now); // the same pass: stays first
  t.expire(now + d);
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));

  fired.clear();
  t.arm(a, d, now);
  t.arm(b, d, now);
  t.arm(a, d, now + std::chrono::milliseconds(5)); // a later pass: behind b
  t.expire(now + d);
  EXPECT_EQ(fired, (std::vector<int>{2}));
  t.expire(now + d + std::chrono::milliseconds(5));
  EXPECT_EQ(fired, (std::vector<int>{2, 1}));

  fired.clear();
  t.arm(c, std::chrono::milliseconds(50), now + std::chrono::milliseconds(50));
  t.arm(c, d, now); // the same deadline through another duration
  t.expire(now + d);
  EXPECT_EQ(fired, (std::vector<int>{3}));
  EXPECT_FALSE(c.armed());
}

// A fired entry that arms another with a duration never used before adds a
// queue while expire() walks them (a 408 whose lingering close is the first
// 2 s timer of the worker): the walk must survive the queues growing.
struct Chain : Timeouts::Entry {
  Timeouts* timeouts = nullptr;
  Timeouts::Entry* next = nullptr;
  int* fired = nullptr;
};

void arm_next(Timeouts::Entry* e) {
  auto* c = static_cast<Chain*>(e);
  ++*c->fired;
  // Durations no queue has yet: each arm adds one.
  for (int i = 0; i < 64; ++i)
    c->timeouts->arm(c->next[i], std::chrono::milliseconds(1000 + i));
}

TEST(TimeoutsTest, AnEntryFiredMayArmNewDurations) {
  Timeouts t;
  int fired = 0;
  std::vector<Timeouts::Entry> later(64);
  for (auto& e : later)
    e.fire = [](Timeouts::Entry*) {};
  Chain first;
  first.fire = arm_next;
  first.timeouts = &t;
  first.next = later.data();
  first.fired = &fired;
  t.arm(first, std::chrono::milliseconds(1));
  t.expire(Clock::now() + std::chrono::milliseconds(10));
  EXPECT_EQ(fired, 1);
  for (auto& e : later)
    EXPECT_TRUE(e.armed());
  for (auto& e : later)
    Timeouts::disarm(e);
}

TEST(BufferPoolTest, ReusesReleasedBuffers) {
  BufferPool pool(1024, 2);
  Buffer* a = pool.acquire();
  Buffer* b = pool.acquire();
  EXPECT_EQ(a->capacity, 1024u);
  EXPECT_EQ(pool.in_use(), 2u);
  pool.release(a);
  EXPECT_EQ(pool.acquire(), a);
  pool.release(a);
  pool.release(b);
  pool.release(nullptr);
  EXPECT_EQ(pool.in_use(), 0u);
}

} // namespace
} // namespace lb::io
