#pragma once
// Pipes for splice(2), per worker. A long response body goes from the
// backend's socket into a pipe and from the pipe into the client's socket:
// the kernel moves references to its pages and lb never copies the bytes.
//
// A pipe given back empty is kept for the next body; one given back holding
// bytes (a transfer cut short) is closed. trim() closes the pipes that
// stayed unused since the last trim, so a burst of long bodies leaves no
// descriptors behind. Not thread-safe: one pool per worker thread.

#include <cstddef>
#include <vector>

namespace lb::io {

struct Pipe {
  int r = -1;
  int w = -1;
  size_t held = 0; // bytes in the pipe
};

class PipePool {
public:
  // What a pipe is asked to hold (F_SETPIPE_SZ; the kernel's default, 64 KiB,
  // when refused).
  static constexpr int capacity = 256 * 1024;

  PipePool() = default;
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // An empty pipe, or nullptr when the system gives none (descriptors used
  // up): then the body is copied as usual.
  Pipe* acquire();
  void release(Pipe* pipe); // accepts nullptr
  size_t trim();

private:
  static void close(Pipe* pipe);
  std::vector<Pipe*> free_;
  size_t min_free_ = 0;
};

} // namespace lb::io
