#pragma once
// A worker's event loop: one epoll instance, each socket added once,
// edge-triggered, and its readiness kept here in user space.
//
// A Watch is one socket in the loop. It is registered once with
// EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET; every edge the kernel reports
// sets `in_ready` / `out_ready`, and the socket's owner clears them when a
// read comes back short or empty (drained: no read until the next edge) or
// a write comes back short (no write until EPOLLOUT). So a read that would
// end in EAGAIN is not made, and nothing is re-armed between requests.
//
// Stale events: a socket closed while its event waits in the current batch,
// and its number reused, is recognised by the generation carried in the
// event's data (fd in the high half, generation in the low half).
//
// Writes of one batch go out together: while a pass dispatches more than one
// event, a write is held back (`defer_write`) and made at the end of the
// pass. A peer asleep in its own event loop is then woken once for all the
// sends it gets in the pass, not once per send; on a loaded worker that
// wake-up (another CPU interrupted) was the largest single cost of a send.
//
// Besides the sockets: a few timers (the worker's tick), a run queue for
// work that continues on the next pass ("from the event loop": a long body,
// a chain of pipelined requests), and tasks posted from other threads
// through an eventfd. One clock read per pass: `now()`. Not thread-safe
// apart from post() and stop().

#include "lb/io/timeouts.hpp"

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace lb::io {

class EventLoop;

struct Watch {
  // Called with the events the kernel reported (0 for a pass through the run
  // queue). The owner may close and free the watch inside.
  using Handler = void (*)(void* owner, uint32_t events);

  int fd = -1;
  uint32_t gen = 0;
  Handler handler = nullptr;
  void* owner = nullptr;
  bool in_ready = false;         // readable since the last drained read
  bool out_ready = false;        // writable since the last short write
  bool hangup = false;           // the peer ended its side or the socket failed: reads end at once
  bool read_needs_write = false; // TLS: the last read must write first (a reader waits for out)
  bool queued = false;           // in the run queue
  bool write_deferred = false;   // a write waits for the end of the pass (EventLoop::defer_write)
  uint32_t queued_epoch = 0;
  Watch* prev_queued = nullptr;
  Watch* next_queued = nullptr;

  // What a read or write found, for the readiness kept here.
  void drained() {
    if (!hangup)
      in_ready = false;
  }
  void blocked() {
    out_ready = false;
    write_deferred = false; // a write found the socket full: its EPOLLOUT decides now
  }
};

class EventLoop {
public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Adds `w` (its fd set) for reads and writes, edge-triggered. Its readiness
  // starts as `in_ready` / `out_ready` say. False (errno set) when epoll refuses.
  bool add(Watch& w);
  // Takes `w` out of the loop and of the run queue, and closes its fd.
  void close(Watch& w);
  // Runs `w`'s handler (with no events) on the next pass, once.
  void schedule(Watch& w);
  // While the loop dispatches a batch of several events: holds back a write
  // to `w` until the batch is through (the writer waits as after a short
  // write, and its handler runs at the end of the pass with `out_ready`).
  // So the sends of one pass go out together, and a peer asleep in its own
  // loop is woken once for all of them. False: write now.
  bool defer_write(Watch& w) {
    if (!batching_ || !w.out_ready)
      return false;
    w.out_ready = false;
    w.write_deferred = true;
    schedule(w);
    return true;
  }

  // A timer of the loop: fires once at `when` (re-arm it from `fire`).
  struct Timer {
    Clock::time_point when = Clock::time_point::max();
    void (*fire)(void* context) = nullptr;
    void* context = nullptr;
  };
  // Keeps `t` (owned by the caller, living as long as the loop) on the list.
  void add_timer(Timer& t) { timers_.push_back(&t); }
  void remove_timer(Timer& t) { std::erase(timers_, &t); }

  // The time this pass began (one clock read per pass).
  Clock::time_point now() const { return now_; }
  // Thread-safe: runs `f` on the loop's thread soon.
  void post(std::function<void()> f);
  // Thread-safe: run() returns after the current pass (or at once, when it
  // has not begun yet).
  void stop();
  // The thread body: passes until stop(). Can run again afterwards.
  void run();

  // For tests and metrics: passes made, events dispatched.
  uint64_t passes() const { return passes_; }

private:
  void dispatch(uint64_t data, uint32_t events);
  void run_queue();
  void run_posted();
  void fire_timers();
  int wait_ms() const;
  void unqueue(Watch& w);

  int epfd_ = -1;
  int eventfd_ = -1;
  uint32_t next_gen_ = 1;
  std::vector<Watch*> by_fd_; // the watch registered on each fd (nullptr: none)
  Watch* queue_head_ = nullptr;
  Watch* queue_tail_ = nullptr;
  uint32_t queue_epoch_ = 0; // run_queue() runs what was queued before it began
  std::vector<Timer*> timers_;
  Clock::time_point now_;
  uint64_t passes_ = 0;
  bool batching_ = false; // dispatching a batch of more than one event
  std::atomic<bool> stopped_{false};
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  std::vector<std::function<void()>> running_; // swapped with posted_ to run them
};

} // namespace lb::io
