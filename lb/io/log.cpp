#include "lb/io/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <mutex>

namespace lb::io {

void log(const char* fmt, ...) {
  // One write(2) per line, prefix included: stderr is shared with the access
  // log (access_log: stderr), and a line written in pieces could be split.
  char line[1024] = "lb: ";
  constexpr size_t prefix = 4;
  va_list args;
  va_start(args, fmt);
  int n = std::vsnprintf(line + prefix, sizeof line - prefix - 1, fmt, args);
  va_end(args);
  if (n < 0)
    return;
  size_t len = prefix + std::min(static_cast<size_t>(n), sizeof line - prefix - 2);
  line[len++] = '\n';
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  size_t done = 0;
  while (done < len) {
    ssize_t w = ::write(2, line + done, len - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return;
    done += static_cast<size_t>(w);
  }
}

} // namespace lb::io
