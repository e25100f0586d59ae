#pragma once
// Fixed storage for one outstanding asynchronous operation, so that waiting on a
// socket allocates nothing: a connection owns one slot per kind of operation it
// can have pending at once (read wait, write wait, connect) and binds its
// completion handlers to that slot's allocator. A handler larger than the slot
// (or a second one while the slot is taken) gets heap memory instead.

#include <cstddef>
#include <new>

namespace lb::io {

template <std::size_t Size, std::size_t Align = alignof(std::max_align_t)> class BasicHandlerSlot {
public:
  static constexpr std::size_t alignment = Align;

  BasicHandlerSlot() = default;
  BasicHandlerSlot(const BasicHandlerSlot&) = delete;
  BasicHandlerSlot& operator=(const BasicHandlerSlot&) = delete;

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
  alignas(Align) unsigned char storage_[Size];
  bool in_use_ = false;
};

// Any asio operation lb starts: an asio wait operation on a socket is ~210 bytes.
using HandlerSlot = BasicHandlerSlot<320>;
// A wait on a socket with the io_context's own executor whose handler holds a
// connection reference and at most two 32-bit generations (asio's
// reactive_wait_op: 104 bytes), or a posted handler of that size: what an
// idle client connection keeps pending. (Its pointers and error codes need no
// more than 8-byte alignment: checked at compile time.)
using WaitSlot = BasicHandlerSlot<104, 8>;

template <class T, class Slot = HandlerSlot> class SlotAllocator {
public:
  using value_type = T;
  explicit SlotAllocator(Slot& slot) noexcept : slot_(&slot) {}
  template <class U>
  SlotAllocator(const SlotAllocator<U, Slot>& other) noexcept : slot_(other.slot_) {}
  T* allocate(std::size_t n) {
    static_assert(alignof(T) <= Slot::alignment, "the slot is not aligned for this handler");
    return static_cast<T*>(slot_->allocate(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t) noexcept { slot_->deallocate(p); }
  template <class U> bool operator==(const SlotAllocator<U, Slot>& other) const noexcept {
    return slot_ == other.slot_;
  }

private:
  template <class, class> friend class SlotAllocator;
  Slot* slot_;
};

} // namespace lb::io
