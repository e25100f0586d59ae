#include "lb/io/event_loop.hpp"

#include "lb/io/sys.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace lb::io {

namespace {
constexpr int max_events = 256;
constexpr uint32_t hangup_events = EPOLLRDHUP | EPOLLHUP | EPOLLERR;
} // namespace

EventLoop::EventLoop() : now_(Clock::now()) {
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  eventfd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || eventfd_ < 0)
    throw std::runtime_error(std::string("event loop: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLET;
  ev.data.u64 = uint64_t(static_cast<uint32_t>(eventfd_)) << 32; // generation 0: the eventfd
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, eventfd_, &ev) != 0)
    throw std::runtime_error(std::string("event loop: ") + std::strerror(errno));
}

EventLoop::~EventLoop() {
  ::close(eventfd_);
  ::close(epfd_);
}

bool EventLoop::add(Watch& w) {
  if (++next_gen_ == 0)
    next_gen_ = 1;
  w.gen = next_gen_;
  w.hangup = false;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = (uint64_t(static_cast<uint32_t>(w.fd)) << 32) | w.gen;
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, w.fd, &ev) != 0)
    return false;
  size_t fd = static_cast<size_t>(w.fd);
  if (by_fd_.size() <= fd)
    by_fd_.resize(std::max<size_t>(fd + 1, by_fd_.size() * 2), nullptr);
  by_fd_[fd] = &w;
  return true;
}

void EventLoop::close(Watch& w) {
  unqueue(w);
  w.write_deferred = false;
  if (w.fd < 0)
    return;
  size_t fd = static_cast<size_t>(w.fd);
  if (fd < by_fd_.size() && by_fd_[fd] == &w)
    by_fd_[fd] = nullptr;
  // Closing the only descriptor of the socket takes it out of epoll too.
  ::close(w.fd);
  w.fd = -1;
  w.in_ready = w.out_ready = false;
}

void EventLoop::schedule(Watch& w) {
  if (w.queued)
    return;
  w.queued = true;
  w.queued_epoch = queue_epoch_;
  w.next_queued = nullptr;
  w.prev_queued = queue_tail_;
  if (queue_tail_)
    queue_tail_->next_queued = &w;
  else
    queue_head_ = &w;
  queue_tail_ = &w;
}

void EventLoop::unqueue(Watch& w) {
  if (!w.queued)
    return;
  w.queued = false;
  if (w.prev_queued)
    w.prev_queued->next_queued = w.next_queued;
  else
    queue_head_ = w.next_queued;
  if (w.next_queued)
    w.next_queued->prev_queued = w.prev_queued;
  else
    queue_tail_ = w.prev_queued;
  w.prev_queued = w.next_queued = nullptr;
}

void EventLoop::post(std::function<void()> f) {
  bool first;
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(f));
    first = posted_.size() == 1;
  }
  if (first) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(eventfd_, &one, sizeof one);
  }
}

void EventLoop::stop() {
  stopped_.store(true, std::memory_order_release);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(eventfd_, &one, sizeof one);
}

void EventLoop::run_posted() {
  // The counter is read before the tasks are taken: a task posted after
  // this read writes it again, so its wake-up is never lost.
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(eventfd_, &count, sizeof count);
  {
    std::lock_guard lock(posted_mutex_);
    running_.swap(posted_);
  }
  for (auto& f : running_)
    f();
  running_.clear();
}

void EventLoop::dispatch(uint64_t data, uint32_t events) {
  int fd = static_cast<int>(data >> 32);
  uint32_t gen = static_cast<uint32_t>(data);
  if (gen == 0) {
    if (fd == eventfd_)
      run_posted();
    return;
  }
  if (static_cast<size_t>(fd) >= by_fd_.size())
    return;
  Watch* w = by_fd_[static_cast<size_t>(fd)];
  if (!w || w->gen != gen)
    return; // closed while its event waited in this batch
  if (events & (EPOLLIN | hangup_events))
    w->in_ready = true;
  if (events & hangup_events)
    w->hangup = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
    w->out_ready = true;
  w->handler(w->owner, events);
}

// What was queued before this pass runs now; what it queues runs on the
// next pass (after the sockets had their turn).
void EventLoop::run_queue() {
  uint32_t epoch = queue_epoch_++;
  while (queue_head_ && queue_head_->queued_epoch == epoch) {
    Watch* w = queue_head_;
    unqueue(*w);
    if (w->write_deferred) {
      w->write_deferred = false;
      w->out_ready = true;
    }
    w->handler(w->owner, 0);
  }
}

void EventLoop::fire_timers() {
  for (size_t i = 0; i < timers_.size(); ++i) {
    Timer* t = timers_[i];
    if (t->when <= now_) {
      t->when = Clock::time_point::max();
      t->fire(t->context);
    }
  }
}

int EventLoop::wait_ms() const {
  if (queue_head_)
    return 0;
  auto next = Clock::time_point::max();
  for (const Timer* t : timers_)
    next = std::min(next, t->when);
  if (next == Clock::time_point::max())
    return -1;
  if (next <= now_)
    return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now_).count();
  return static_cast<int>(std::min<long long>(ms, 60000));
}

void EventLoop::run() {
  epoll_event events[max_events];
  while (!stopped_.load(std::memory_order_acquire)) {
    int n = sys::epoll_wait(epfd_, events, max_events, wait_ms());
    now_ = Clock::now();
    ++passes_;
    batching_ = n > 1;
    for (int i = 0; i < n; ++i)
      dispatch(events[i].data.u64, events[i].events);
    batching_ = false;
    run_queue();
    fire_timers();
  }
  stopped_.store(false, std::memory_order_relaxed); // a stop ends one run()
}

} // namespace lb::io
