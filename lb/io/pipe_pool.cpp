#include "lb/io/pipe_pool.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

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

} // namespace lb::io
