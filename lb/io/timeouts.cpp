#include "lb/io/timeouts.hpp"

namespace lb::io {

Timeouts::~Timeouts() {
  for (Queue* q : queues_) {
    while (q->head.next != &q->head)
      disarm(*q->head.next);
    delete q;
  }
}

Timeouts::Queue& Timeouts::queue_for(std::chrono::milliseconds d) {
  for (Queue* q : queues_)
    if (q->duration == d)
      return *q;
  Queue* q = new Queue{d, {}};
  q->head.prev = q->head.next = &q->head;
  queues_.push_back(q);
  return *q;
}

void Timeouts::arm(Entry& e, std::chrono::milliseconds d, Clock::time_point now) {
  Clock::time_point when = now + d;
  if (e.prev && e.when == when)
    return; // already due then, in deadline order in its queue
  disarm(e);
  Queue& q = queue_for(d);
  e.when = when;
  e.prev = q.head.prev;
  e.next = &q.head;
  q.head.prev->next = &e;
  q.head.prev = &e;
}

void Timeouts::disarm(Entry& e) {
  if (!e.prev)
    return;
  e.prev->next = e.next;
  e.next->prev = e.prev;
  e.prev = e.next = nullptr;
}

void Timeouts::expire(Clock::time_point now) {
  // A fired entry may arm one with a duration not seen before, which adds a
  // queue: iterate by index (the queues themselves never move).
  for (size_t i = 0; i < queues_.size(); ++i) {
    Queue* q = queues_[i];
    while (q->head.next != &q->head && q->head.next->when <= now) {
      Entry* e = q->head.next;
      disarm(*e);
      e->fire(e);
    }
  }
}

} // namespace lb::io
