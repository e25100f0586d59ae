#pragma once
// Fixed storage for one outstanding asynchronous operation, so that waiting on a
// socket allocates nothing: a connection owns one slot per kind of operation it
// can have pending at once (read wait, write wait, connect) and binds its
// completion handlers to that slot's allocator.

#include <cstddef>
#include <new>

namespace lb::io {

class HandlerSlot {
public:
  HandlerSlot() = default;
  HandlerSlot(const HandlerSlot&) = delete;
  HandlerSlot& operator=(const HandlerSlot&) = delete;

  void* allocate(std::size_t size) {
    if (!in_use_ && size <= sizeof storage_) {
      in_use_ = true;
      return storage_;
    }
    return ::operator new(size);
  }
  // A handler lives in the storage (its operation is pending).
  bool busy() const { return in_use_; }
  void deallocate(void* p) {
    if (p == storage_) {
      in_use_ = false;
      return;
    }
    ::operator delete(p);
  }

private:
  alignas(std::max_align_t) unsigned char storage_[320]; // an asio wait operation on a socket is
                                                         // ~210 bytes
  bool in_use_ = false;
};

template <class T> class SlotAllocator {
public:
  using value_type = T;
  explicit SlotAllocator(HandlerSlot& slot) noexcept : slot_(&slot) {}
  template <class U> SlotAllocator(const SlotAllocator<U>& other) noexcept : slot_(other.slot_) {}
  T* allocate(std::size_t n) { return static_cast<T*>(slot_->allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { slot_->deallocate(p); }
  template <class U> bool operator==(const SlotAllocator<U>& other) const noexcept {
    return slot_ == other.slot_;
  }

private:
  template <class> friend class SlotAllocator;
  HandlerSlot* slot_;
};

} // namespace lb::io
