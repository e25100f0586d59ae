#include "lb/upstream/balancer.hpp"

namespace lb::upstream {

namespace {

// Whether `a`, with one more request, would carry fewer requests per unit of
// weight than `b` carries now plus one: (active_a + 1) / w_a < (active_b + 1) / w_b.
bool less_loaded_after(const PickContext& c, size_t a, size_t b) {
  const auto& w = c.selection.effective_weight;
  return (c.active(a) + 1) * w[b] < (c.active(b) + 1) * w[a];
}

} // namespace

int least_conn_pick(const PickContext& c) {
  const Selection& s = c.selection;
  size_t n = s.effective_weight.size();
  if (n == 0 || s.sequence.empty())
    return -1;
  // The weighted rotation's candidate; the scan for the least loaded starts
  // there, so of equally loaded backends it wins.
  size_t candidate = s.sequence[c.next_turn() % s.sequence.size()];
  int best = -1;
  for (size_t k = 0; k < n; ++k) {
    size_t i = (candidate + k) % n;
    if (c.eligible(i) && (best < 0 || less_loaded_after(c, i, static_cast<size_t>(best))))
      best = static_cast<int>(i);
  }
  if (best < 0 || !c.eligible(candidate))
    return best;
  // The candidate keeps its turn unless its load now is already as high as
  // the least loaded one's with this request on it.
  const auto& w = s.effective_weight;
  size_t m = static_cast<size_t>(best);
  if (c.active(candidate) * w[m] < (c.active(m) + 1) * w[candidate])
    return static_cast<int>(candidate);
  return best;
}

} // namespace lb::upstream
