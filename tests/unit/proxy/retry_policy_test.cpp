#include "lb/proxy/retry_policy.hpp"

#include <gtest/gtest.h>

namespace lb::proxy {
namespace {

constexpr RetryRequest get{true, false};
constexpr RetryRequest post{false, false};

TEST(RetryPolicyTest, IdempotentMethods) {
  for (const char* m : {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
    EXPECT_TRUE(idempotent(m)) << m;
  for (const char* m : {"POST", "PATCH", "CONNECT", "get"})
    EXPECT_FALSE(idempotent(m)) << m;
}

TEST(RetryPolicyTest, ConnectFailuresGoToAnotherBackendUpToRetries) {
  RetryLimits limits{2, 5, false};
  RetryState s;
  s.attempts = 1;
  EXPECT_EQ(after_failure(Failure::connect, post, limits, s), Retry::another_backend);
  s.attempts = 2;
  EXPECT_EQ(after_failure(Failure::connect, post, limits, s), Retry::another_backend);
  s.attempts = 3; // the first try and two retries
  EXPECT_EQ(after_failure(Failure::connect, post, limits, s), Retry::none);
}

TEST(RetryPolicyTest, RefusalsDoNotUseUpRetriesButAreBounded) {
  RetryLimits limits{0, 3, false};
  RetryState s;
  for (unsigned i = 1; i <= 3; ++i) {
    s.attempts = i;
    EXPECT_EQ(after_failure(Failure::refused, post, limits, s), Retry::another_backend) << i;
    EXPECT_EQ(s.refusals, i);
  }
  s.attempts = 4;
  EXPECT_EQ(after_failure(Failure::refused, post, limits, s), Retry::none);
}

TEST(RetryPolicyTest, ReusedConnectionsReplayIdempotentRequestsThreeTimes) {
  RetryLimits limits{0, 2, false};
  RetryState s;
  s.attempts = 1;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(after_failure(Failure::reused_early, get, limits, s), Retry::replay);
    EXPECT_EQ(s.attempts, 0u) << "a replay gives its attempt back";
    s.attempts = 1;
  }
  EXPECT_EQ(after_failure(Failure::reused_early, get, limits, s), Retry::none);
  RetryState t;
  t.attempts = 1;
  EXPECT_EQ(after_failure(Failure::reused_early, post, limits, t), Retry::none);
  EXPECT_EQ(after_failure(Failure::reused_early, {true, true}, limits, t), Retry::none)
      << "a body no longer held cannot be sent again";
}

TEST(RetryPolicyTest, StreamsTheBackendDidNotTakeAreReplayedWhateverTheMethod) {
  RetryLimits limits{0, 1, false}; // no retries, one backend: a replay still goes
  RetryState s;
  s.attempts = 1;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(after_failure(Failure::unprocessed, post, limits, s), Retry::replay);
    EXPECT_EQ(s.attempts, 0u);
    s.attempts = 1;
  }
  EXPECT_EQ(after_failure(Failure::unprocessed, post, limits, s), Retry::none)
      << "at most three replays";
  RetryState t;
  t.attempts = 1;
  EXPECT_EQ(after_failure(Failure::unprocessed, {false, true}, limits, t), Retry::none)
      << "a body no longer held cannot be sent again";
  EXPECT_EQ(reason_of(Failure::unprocessed, 0), RetryReason::replay);
}

TEST(RetryPolicyTest, BeforeAnyResponseByteOnlyIdempotentRequests) {
  RetryLimits limits{1, 2, false};
  RetryState s;
  s.attempts = 1;
  EXPECT_EQ(after_failure(Failure::before_response, get, limits, s), Retry::another_backend);
  EXPECT_EQ(after_failure(Failure::before_response, post, limits, s), Retry::none);
  EXPECT_EQ(after_failure(Failure::before_response, {true, true}, limits, s), Retry::none);
  s.attempts = 2;
  EXPECT_EQ(after_failure(Failure::before_response, get, limits, s), Retry::none);
}

TEST(RetryPolicyTest, MidResponseFailuresAreNeverRetried) {
  RetryState s;
  s.attempts = 1;
  EXPECT_EQ(after_failure(Failure::backend, get, {5, 5, false}, s), Retry::none);
}

TEST(RetryPolicyTest, AFullTriedSetStopsRetries) {
  RetryState s;
  s.attempts = 1;
  EXPECT_EQ(after_failure(Failure::connect, get, {5, 100, true}, s), Retry::none);
}

TEST(RetryPolicyTest, RetryOnChoosesWhatIsRetried) {
  RetryLimits limits{2, 5, false};
  limits.on_connect_failure = false;
  limits.on_reset = false;
  RetryState s;
  s.attempts = 1;
  EXPECT_EQ(after_failure(Failure::connect, get, limits, s), Retry::none);
  EXPECT_EQ(after_failure(Failure::before_response, get, limits, s), Retry::none);
  // A listed status (the caller checked the list) goes to another backend,
  // for idempotent requests whose body is still held.
  EXPECT_EQ(after_failure(Failure::status, get, limits, s), Retry::another_backend);
  EXPECT_EQ(after_failure(Failure::status, post, limits, s), Retry::none);
  EXPECT_EQ(after_failure(Failure::status, RetryRequest{true, true}, limits, s), Retry::none);
  // A try that timed out is a 504: retried when 504 is listed.
  EXPECT_EQ(after_failure(Failure::try_timeout, get, limits, s), Retry::none);
  limits.on_timeout = true;
  EXPECT_EQ(after_failure(Failure::try_timeout, get, limits, s), Retry::another_backend);
  EXPECT_EQ(after_failure(Failure::try_timeout, post, limits, s), Retry::none);
  s.attempts = 3;
  EXPECT_EQ(after_failure(Failure::status, get, limits, s), Retry::none);
  EXPECT_EQ(s.attempts, 3u); // (deciding changes nothing)
}

TEST(RetryPolicyTest, LimitsFromThePool) {
  config::Pool pool;
  pool.retries = 4;
  pool.retry_reset = false;
  pool.retry_statuses = {503, 504};
  RetryLimits l = retry_limits(pool, 7, false);
  EXPECT_EQ(l.retries, 4u);
  EXPECT_EQ(l.backends, 7u);
  EXPECT_TRUE(l.on_connect_failure);
  EXPECT_FALSE(l.on_reset);
  EXPECT_TRUE(l.on_timeout);
  EXPECT_TRUE(retries_status(pool, 503));
  EXPECT_FALSE(retries_status(pool, 502));
  EXPECT_EQ(reason_of(Failure::status, 503), RetryReason::s503);
  EXPECT_EQ(reason_of(Failure::try_timeout, 0), RetryReason::s504);
  EXPECT_EQ(reason_of(Failure::refused, 0), RetryReason::connect_failure);
  EXPECT_EQ(reason_of(Failure::before_response, 0), RetryReason::reset);
  EXPECT_EQ(reason_of(Failure::reused_early, 0), RetryReason::replay);
}

TEST(RetryPolicyTest, BudgetIsARatioOfTheRequestsOfEachSecondWithAFloor) {
  config::Pool pool;
  RetryBudget budget;
  io::Clock::time_point t0 = io::Clock::now();
  // No budget configured: every retry may go.
  for (int i = 0; i < 100; ++i)
    EXPECT_TRUE(budget.take(pool, 0, 1, t0));
  pool.has_retry_budget = true;
  pool.retry_budget_ratio = 0.2;
  pool.retry_budget_min = 3;
  RetryBudget b;
  // 100 requests in a second: 20 retries, then none.
  for (int i = 0; i < 100; ++i)
    b.on_request(t0);
  int allowed = 0;
  for (int i = 0; i < 100; ++i)
    allowed += b.take(pool, 0, 1, t0 + std::chrono::milliseconds(500));
  EXPECT_EQ(allowed, 20);
  // The next second starts afresh: with few requests the floor holds (3 over
  // one worker)).
  auto t1 = t0 + std::chrono::milliseconds(1500);
  b.on_request(t1);
  allowed = 0;
  for (int i = 0; i < 10; ++i)
    allowed += b.take(pool, 0, 1, t1);
  EXPECT_EQ(allowed, 3);
  // Two workers share the floor: 2 and 1.
  auto t2 = t1 + std::chrono::seconds(1);
  RetryBudget other;
  int first = 0, second = 0;
  for (int i = 0; i < 10; ++i) {
    first += b.take(pool, 0, 2, t2);
    second += other.take(pool, 1, 2, t2);
  }
  EXPECT_EQ(first, 2);
  EXPECT_EQ(second, 1);
}

} // namespace
} // namespace lb::proxy
