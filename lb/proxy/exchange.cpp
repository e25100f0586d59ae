#include "lb/proxy/exchange.hpp"

#include <algorithm>

namespace lb::proxy {

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
  // The request parser may have stopped mid-message on another connection.
  // (The response parser is reset by every attempt before it is used.)
  x->req_.reset();
  x->req_.head().clear();
  return x;
}

void ExchangePool::release(Exchange* x) {
  if (!x)
    return;
  io::Timeouts::disarm(x->try_timer_);
  x->reason_[0] = '\0';
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
