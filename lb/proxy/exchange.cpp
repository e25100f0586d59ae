#include "lb/proxy/exchange.hpp"

#include <algorithm>

namespace lb::proxy {

bool Outbox::add(const void* p, size_t n) {
  if (n == 0)
    return true;
  if (count == capacity)
    return false;
  v[count].iov_base = const_cast<void*>(p);
  v[count].iov_len = n;
  ++count;
  return true;
}

void Outbox::advance(size_t n) {
  while (n && first < count) {
    if (n >= v[first].iov_len) {
      n -= v[first].iov_len;
      ++first;
    } else {
      v[first].iov_base = static_cast<char*>(v[first].iov_base) + n;
      v[first].iov_len -= n;
      n = 0;
    }
  }
}

ExchangePool::~ExchangePool() {
  while (free_) {
    Exchange* x = free_;
    free_ = x->next_free_;
    delete x;
  }
}

Exchange* ExchangePool::acquire() {
  ++in_use_;
  Exchange* x = free_;
  if (!x) {
    min_free_ = 0;
    return new Exchange;
  }
  free_ = x->next_free_;
  x->next_free_ = nullptr;
  min_free_ = std::min(min_free_, --free_count_);
  x->reset_fields();
  x->req_.reset();
  x->req_.head().clear();
  x->resp_.reset();
  x->resp_.head().clear();
  return x;
}

void ExchangePool::release(Exchange* x) {
  if (!x)
    return;
  --in_use_;
  x->next_free_ = free_;
  free_ = x;
  ++free_count_;
}

size_t ExchangePool::trim() {
  size_t unused = min_free_ > reserve ? min_free_ - reserve : 0;
  for (size_t i = 0; i < unused; ++i) {
    Exchange* x = free_;
    free_ = x->next_free_;
    delete x;
  }
  free_count_ -= unused;
  min_free_ = free_count_;
  return unused;
}

} // namespace lb::proxy
