#include "lb/proxy/retry_policy.hpp"

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
    return may_retry ? Retry::another_backend : Retry::none;
  case Failure::reused_early:
    if (!request.idempotent || request.body_dropped || state.replays >= max_replays)
      return Retry::none;
    ++state.replays;
    --state.attempts;
    return Retry::replay;
  case Failure::before_response:
    // Nothing came back: another backend may answer.
    return request.idempotent && !request.body_dropped && may_retry ? Retry::another_backend
                                                                    : Retry::none;
  case Failure::backend:
    return Retry::none;
  }
  return Retry::none;
}

} // namespace lb::proxy
