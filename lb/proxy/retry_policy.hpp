#pragma once
// When a request whose backend failed goes to another backend: a pure
// function of how it failed, what the request is, and what it has tried.
// Envoy's retry_state and Pingora's RetryType are the models: a failure says
// which side failed and whether any byte could have reached the backend.

#include <cstddef>
#include <string_view>

namespace lb::proxy {

enum class Failure {
  connect,         // nothing was sent: any request may go to another backend
  refused,         // ... and the backend refused at once: does not use up a retry
  reused_early,    // a pooled connection failed before any response byte: replay
  before_response, // a fresh connection failed before any response byte
  backend,         // anything else (mid-response, invalid response): not retried
};

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
