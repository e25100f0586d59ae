#include "lb/io/buffer_pool.hpp"

#include <cstdlib>
#include <new>

namespace lb::io {

BufferPool::BufferPool(uint32_t capacity, size_t keep) : capacity_(capacity), keep_(keep) {}

BufferPool::~BufferPool() {
  while (free_) {
    Buffer* b = free_;
    free_ = b->next_free;
    std::free(b);
  }
}

Buffer* BufferPool::acquire() {
  ++in_use_;
  if (free_) {
    Buffer* b = free_;
    free_ = b->next_free;
    --free_count_;
    if (free_count_ < min_free_)
      min_free_ = free_count_;
    b->next_free = nullptr;
    return b;
  }
  min_free_ = 0;
  void* memory = std::malloc(sizeof(Buffer) + capacity_);
  if (!memory)
    throw std::bad_alloc();
  Buffer* b = new (memory) Buffer;
  b->capacity = capacity_;
  return b;
}

void BufferPool::release(Buffer* buffer) {
  if (!buffer)
    return;
  --in_use_;
  if (free_count_ >= keep_) {
    std::free(buffer);
    return;
  }
  buffer->next_free = free_;
  free_ = buffer;
  ++free_count_;
}

size_t BufferPool::trim() {
  constexpr size_t reserve = 4;
  size_t unused = min_free_ > reserve ? min_free_ - reserve : 0;
  for (size_t i = 0; i < unused; ++i) {
    Buffer* b = free_;
    free_ = b->next_free;
    std::free(b);
  }
  free_count_ -= unused;
  min_free_ = free_count_;
  return unused;
}

} // namespace lb::io
