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

} // namespace
} // namespace lb::proxy
