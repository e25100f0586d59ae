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
#include <cstdint>
#include <vector>

namespace lb::io {

struct Watch;

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

// One step of moving bytes from one socket to another through a pipe: what
// the pipe holds goes out first, then up to `left` bytes come in, until a
// side must wait, `left` is all through, or a round budget is spent (the
// caller continues on the loop's next pass, so one busy transfer does not
// hold the worker). Readiness is the watches' (edge-triggered): a socket
// that said EAGAIN is not tried again before its next edge.
enum class SpliceStep {
  done,      // `left` bytes came in and all went out
  wait_in,   // `from` has nothing now (the pipe is empty)
  wait_out,  // `to` takes nothing now (the pipe holds the rest)
  yield,     // the round budget is spent: continue on the next pass
  in_ended,  // `from` ended its side (EOF; the pipe is empty)
  in_failed, // reading `from` failed (errno)
  out_failed // writing `to` failed (errno)
};
struct SpliceMoved {
  uint64_t in = 0;  // bytes taken from `from`
  uint64_t out = 0; // bytes given to `to`
};
SpliceStep splice_step(Pipe& pipe, Watch& from, Watch& to, uint64_t left, SpliceMoved& moved);

} // namespace lb::io
