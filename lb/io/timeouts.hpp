#pragma once
// Per-worker timeouts without a kernel timer per connection.
//
// All connections of a worker that wait with the same duration (a listener's
// header timeout, a pool's response timeout, ...) are kept in one FIFO list:
// appending "now + d" keeps that list sorted, so arming, re-arming and
// disarming are O(1) list operations and no syscall. Arming an entry again for
// the deadline it has (one step of a request re-arming, in the same loop
// pass, what the step before it armed) leaves it in place and touches no
// other entry. One periodic tick of the worker fires what is due. Not thread-safe:
// one instance per worker thread.

#include <chrono>
#include <cstdint>
#include <vector>

namespace lb::io {

using Clock = std::chrono::steady_clock;

class Timeouts {
public:
  struct Entry {
    Entry* prev = nullptr;
    Entry* next = nullptr;
    Clock::time_point when{};
    void (*fire)(Entry*) = nullptr; // called on the worker thread, entry already disarmed
    bool armed() const { return prev != nullptr; }
  };

  Timeouts() = default;
  Timeouts(const Timeouts&) = delete;
  Timeouts& operator=(const Timeouts&) = delete;
  ~Timeouts();

  // (Re)arms `e` to fire `d` after `now` (the event loop's time of this pass).
  void arm(Entry& e, std::chrono::milliseconds d, Clock::time_point now);
  void arm(Entry& e, std::chrono::milliseconds d) { arm(e, d, Clock::now()); }
  static void disarm(Entry& e);

  // Fires every entry due at `now`.
  void expire(Clock::time_point now);

private:
  struct Queue {
    std::chrono::milliseconds duration;
    Entry head; // sentinel of a circular list
  };
  Queue& queue_for(std::chrono::milliseconds d);
  std::vector<Queue*> queues_;
};

} // namespace lb::io
