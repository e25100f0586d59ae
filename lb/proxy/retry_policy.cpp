#include "lb/proxy/retry_policy.hpp"

#include <algorithm>

namespace lb::proxy {

namespace {
constexpr unsigned max_replays = 3;
}

bool idempotent(std::string_view m) {
  return m == "GET" || m == "HEAD" || m == "OPTIONS" || m == "PUT" || m == "DELETE" || m == "TRACE";
}

Retry after_failure(Failure failure, const RetryRequest& request, const RetryLimits& limits,
                    RetryState& state) {
  if (failure == Failure::refused)
    ++state.refusals;
  bool may_retry = state.attempts - state.refusals <= limits.retries &&
                   state.refusals <= limits.backends && !limits.tried_full;
  switch (failure) {
  case Failure::connect:
  case Failure::refused:
    return may_retry && limits.on_connect_failure ? Retry::another_backend : Retry::none;
  case Failure::reused_early:
  case Failure::unprocessed:
    if ((!request.idempotent && failure == Failure::reused_early) || request.body_dropped ||
        state.replays >= max_replays)
      return Retry::none;
    ++state.replays;
    --state.attempts;
    return Retry::replay;
  case Failure::before_response:
    // Nothing came back: another backend may answer.
    return limits.on_reset && request.idempotent && !request.body_dropped && may_retry
               ? Retry::another_backend
               : Retry::none;
  case Failure::status: // (the caller checked that the pool retries on it)
    return request.idempotent && !request.body_dropped && may_retry ? Retry::another_backend
                                                                    : Retry::none;
  case Failure::try_timeout:
    return limits.on_timeout && request.idempotent && !request.body_dropped && may_retry
               ? Retry::another_backend
               : Retry::none;
  case Failure::backend:
    return Retry::none;
  }
  return Retry::none;
}

RetryReason reason_of(Failure failure, int status) {
  switch (failure) {
  case Failure::connect:
  case Failure::refused:
    return RetryReason::connect_failure;
  case Failure::reused_early:
  case Failure::unprocessed:
    return RetryReason::replay;
  case Failure::status:
    return status == 502   ? RetryReason::s502
           : status == 503 ? RetryReason::s503
                           : RetryReason::s504;
  case Failure::try_timeout:
    return RetryReason::s504;
  case Failure::before_response:
  case Failure::backend:
    break;
  }
  return RetryReason::reset;
}

bool retries_status(const config::Pool& pool, int status) {
  for (int s : pool.retry_statuses)
    if (s == status)
      return true;
  return false;
}

RetryLimits retry_limits(const config::Pool& pool, size_t backends, bool tried_full) {
  RetryLimits l;
  l.retries = pool.retries;
  l.backends = backends;
  l.tried_full = tried_full;
  l.on_connect_failure = pool.retry_connect_failure;
  l.on_reset = pool.retry_reset;
  l.on_timeout = retries_status(pool, 504);
  return l;
}

bool RetryBudget::take(const config::Pool& pool, unsigned worker, unsigned workers,
                       io::Clock::time_point now) {
  if (!pool.has_retry_budget)
    return true;
  roll(now);
  // The floor is the pool's over all workers: the shares add up to it (3
  // over 2 workers: 2 and 1).
  workers = std::max(1u, workers);
  uint64_t floor =
      pool.retry_budget_min / workers + (worker % workers < pool.retry_budget_min % workers);
  uint64_t allowed = std::max<uint64_t>(
      floor, static_cast<uint64_t>(pool.retry_budget_ratio * static_cast<double>(requests_)));
  if (retries_ >= allowed)
    return false;
  ++retries_;
  return true;
}

} // namespace lb::proxy
