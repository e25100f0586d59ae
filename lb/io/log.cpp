#include "lb/io/log.hpp"

#include <cstdio>
#include <mutex>

namespace lb::io {

void log(const char* fmt, ...) {
  char line[1024];
  va_list args;
  va_start(args, fmt);
  int n = std::vsnprintf(line, sizeof line - 1, fmt, args);
  va_end(args);
  if (n < 0) return;
  size_t len = static_cast<size_t>(n) < sizeof line - 1 ? static_cast<size_t>(n) : sizeof line - 2;
  line[len++] = '\n';
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  std::fwrite("lb: ", 1, 4, stderr);
  std::fwrite(line, 1, len, stderr);
  std::fflush(stderr);
}

}  // namespace lb::io
