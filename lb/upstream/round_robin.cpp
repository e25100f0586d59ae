#include "lb/upstream/balancer.hpp"

namespace lb::upstream {

int round_robin_pick(const PickContext& c) {
  const std::vector<uint32_t>& sequence = c.selection.sequence;
  size_t n = sequence.size();
  if (n == 0)
    return -1;
  uint64_t start = c.next_turn();
  for (size_t i = 0; i < n; ++i) {
    uint32_t b = sequence[(start + i) % n];
    if (!c.request.tried.contains(b))
      return static_cast<int>(b);
  }
  return -1;
}

} // namespace lb::upstream
