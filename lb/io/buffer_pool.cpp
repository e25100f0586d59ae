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
    b->next_free = nullptr;
    return b;
  }
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

} // namespace lb::io
