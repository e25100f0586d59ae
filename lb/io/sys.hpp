#pragma once
// The system calls of the forwarding path, made straight to the kernel.
//
// glibc's recv(), sendmsg() and epoll_wait() are thread cancellation points:
// in a process with threads, each call switches the thread's cancellation
// type on before the system call and off after it (two atomic updates and
// two calls, about 1 % of lb's CPU per keep-alive request). lb never cancels
// a thread, so these go through syscall(2), which is not a cancellation
// point; results and errno are the same.

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <cstddef>

namespace lb::io::sys {

inline ssize_t recv(int fd, void* p, size_t n, int flags) {
  return ::syscall(SYS_recvfrom, fd, p, n, flags, nullptr, nullptr);
}

inline ssize_t sendmsg(int fd, const msghdr* m, int flags) {
  return ::syscall(SYS_sendmsg, fd, m, flags);
}

inline int epoll_wait(int epfd, epoll_event* events, int max_events, int timeout_ms) {
  return static_cast<int>(
      ::syscall(SYS_epoll_pwait, epfd, events, max_events, timeout_ms, nullptr, _NSIG / 8));
}

} // namespace lb::io::sys
