#pragma once
// Per-thread free-list of fixed-size I/O buffers. A connection takes a buffer
// when bytes arrive and gives it back when it is idle again, so idle keep-alive
// connections hold no buffer. Not thread-safe: one pool per worker thread.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lb::io {

struct Buffer {
  Buffer* next_free = nullptr;
  uint32_t capacity = 0;
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

class BufferPool {
public:
  // `capacity` is the usable size of each buffer; `keep` caps the free-list length.
  BufferPool(uint32_t capacity, size_t keep);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  Buffer* acquire();
  void release(Buffer* buffer); // accepts nullptr
  // Frees the buffers that stayed unused since the last trim (beyond a few),
  // so that a burst of connections leaves no memory behind. Returns how many.
  size_t trim();
  uint32_t capacity() const { return capacity_; }
  size_t in_use() const { return in_use_; }

private:
  uint32_t capacity_;
  size_t keep_;
  Buffer* free_ = nullptr;
  size_t free_count_ = 0;
  size_t min_free_ = 0; // the fewest free since the last trim
  size_t in_use_ = 0;
};

} // namespace lb::io
