#include "lb/io/pipe_pool.hpp"

#include "lb/io/event_loop.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace lb::io {

PipePool::~PipePool() {
  for (Pipe* p : free_)
    close(p);
}

void PipePool::close(Pipe* pipe) {
  ::close(pipe->r);
  ::close(pipe->w);
  delete pipe;
}

Pipe* PipePool::acquire() {
  if (!free_.empty()) {
    Pipe* p = free_.back();
    free_.pop_back();
    min_free_ = std::min(min_free_, free_.size());
    return p;
  }
  min_free_ = 0;
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
    return nullptr;
  ::fcntl(fds[1], F_SETPIPE_SZ, capacity);
  return new Pipe{fds[0], fds[1], 0};
}

void PipePool::release(Pipe* pipe) {
  if (!pipe)
    return;
  if (pipe->held > 0)
    return close(pipe); // what it holds belongs to nobody now
  free_.push_back(pipe);
}

size_t PipePool::trim() {
  size_t unused = min_free_;
  for (size_t i = 0; i < unused; ++i) {
    close(free_.front());
    free_.erase(free_.begin());
  }
  min_free_ = free_.size();
  return unused;
}

SpliceStep splice_step(Pipe& pipe, Watch& from, Watch& to, uint64_t left, SpliceMoved& moved) {
  constexpr int rounds = 16;
  for (int round = 0;; ++round) {
    while (pipe.held > 0) {
      if (!to.out_ready)
        return SpliceStep::wait_out;
      ssize_t n =
          ::splice(pipe.r, nullptr, to.fd, nullptr, pipe.held, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        pipe.held -= static_cast<size_t>(n);
        moved.out += static_cast<uint64_t>(n);
        if (pipe.held > 0)
          to.blocked(); // a short write: the socket is full
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && errno == EAGAIN) {
        to.blocked();
        return SpliceStep::wait_out;
      }
      if (n == 0)
        errno = EPIPE;
      return SpliceStep::out_failed;
    }
    if (left == 0)
      return SpliceStep::done;
    if (round == rounds)
      return SpliceStep::yield;
    if (!from.in_ready && !from.hangup)
      return SpliceStep::wait_in;
    ssize_t n = ::splice(from.fd, nullptr, pipe.w, nullptr,
                         static_cast<size_t>(std::min<uint64_t>(left, PipePool::capacity)),
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      pipe.held = static_cast<size_t>(n);
      moved.in += static_cast<uint64_t>(n);
      left -= static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN) {
      // (A short splice is not taken as drained: the pipe may have run out of
      // slots before the socket ran out of bytes. EAGAIN says it.)
      from.drained();
      return SpliceStep::wait_in;
    }
    return n == 0 ? SpliceStep::in_ended : SpliceStep::in_failed;
  }
}

} // namespace lb::io
