#pragma once
// When a request whose backend failed goes to another backend: a pure
// function of how it failed, what the request is, and what it has tried.
// Envoy's retry_state and Pingora's RetryType are the models: a failure says
// which side failed and whether any byte could have reached the backend.

#include "config/config_types.hpp"
#include "lb/io/timeouts.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace lb::proxy {

enum class Failure {
  connect,         // nothing was sent: any request may go to another backend
  refused,         // ... and the backend refused at once: does not use up a retry
  reused_early,    // a pooled connection failed before any response byte: replay
  unprocessed,     // an HTTP/2 backend did not take the stream (REFUSED_STREAM, GOAWAY):
                   // replay, whatever the method
  before_response, // a fresh connection failed before any response byte
  status,          // the response's status is one the pool retries on (retry_on: 502 ...)
  try_timeout,     // no response head within per_try_timeout (a 504 for retry_on)
  backend,         // anything else (mid-response, invalid response): not retried
};

// Why an attempt is retried: the `reason` label of lb_retries_total.
enum class RetryReason : uint8_t { connect_failure, reset, s502, s503, s504, replay };
inline constexpr unsigned retry_reason_count = 6;
inline constexpr std::string_view retry_reason_names[retry_reason_count] = {
    "connect_failure", "reset", "502", "503", "504", "replay"};
RetryReason reason_of(Failure failure, int status);

// Methods a client may repeat (RFC 9110 §9.2.2), so lb may too.
bool idempotent(std::string_view method);

struct RetryState {
  unsigned attempts = 0; // backends tried for this request
  unsigned replays = 0;  // replays after a pooled connection failed early
  unsigned refusals = 0; // attempts refused at once (not counted against retries)
};

struct RetryRequest {
  bool idempotent = false;
  bool body_dropped = false; // body bytes were sent and are no longer held: no replay
};

struct RetryLimits {
  unsigned retries = 2;    // the pool's `retries`
  size_t backends = 0;     // in the pool
  bool tried_full = false; // the request cannot note more tried backends
  // The pool's retry_on: connect failures, resets before a response, a try
  // that timed out (its 504).
  bool on_connect_failure = true;
  bool on_reset = true;
  bool on_timeout = false;
};

// Whether the pool's retry_on lists this status (502, 503, 504).
bool retries_status(const config::Pool& pool, int status);
RetryLimits retry_limits(const config::Pool& pool, size_t backends, bool tried_full);

// A pool's retry budget on one worker: retries in any second at most
// max(ratio x the requests that second, this worker's share of
// min_per_second). Windows of a second by the loop's clock; no lock (one per
// worker and pool).
class RetryBudget {
public:
  // A request starts (its first attempt).
  void on_request(io::Clock::time_point now) {
    roll(now);
    ++requests_;
  }
  // Whether one more retry is allowed now; counted when it is.
  // `worker` of `workers`: the shares of min_per_second add up to it.
  bool take(const config::Pool& pool, unsigned worker, unsigned workers, io::Clock::time_point now);

private:
  void roll(io::Clock::time_point now) {
    if (now - window_ >= std::chrono::seconds(1)) {
      window_ = now;
      requests_ = retries_ = 0;
    }
  }
  io::Clock::time_point window_{};
  uint64_t requests_ = 0;
  uint64_t retries_ = 0;
};

enum class Retry {
  another_backend, // try the next backend
  replay,          // the same request again on a fresh connection (the backend is not blamed)
  none,            // answer the failure
};

// What follows a failed attempt, counting it in `state`: a refusal is counted
// (each backend refused at most once more than `retries`, so a region that
// dies at once does not turn into errors while it leaves the rotation); a
// replay gives its attempt back (at most 3 replays: a backend that closes
// every reused connection early).
Retry after_failure(Failure failure, const RetryRequest& request, const RetryLimits& limits,
                    RetryState& state);

} // namespace lb::proxy
