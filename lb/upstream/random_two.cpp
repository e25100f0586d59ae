#include "lb/upstream/balancer.hpp"

namespace lb::upstream {

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

constexpr int max_draws = 8;

} // namespace

int random_two_pick(const PickContext& c) {
  const Selection& s = c.selection;
  size_t n = s.sequence.size();
  if (n == 0)
    return -1;
  // Two distinct candidates that may take the request, each drawn by weight
  // (a position in the weighted sequence); a draw that gives a backend
  // excluded for this request, or the first candidate again, is drawn anew.
  uint64_t state = c.random;
  int first = -1, second = -1;
  for (int draw = 0; draw < max_draws && second < 0; ++draw) {
    uint32_t b = s.sequence[splitmix64(state) % n];
    if (!c.eligible(b) || static_cast<int>(b) == first)
      continue;
    (first < 0 ? first : second) = static_cast<int>(b);
  }
  if (first < 0)
    return least_conn_pick(c); // most backends excluded: look at them all
  if (second < 0)
    return first;
  // The first drawn stays unless its load now is already as high as the
  // second's with this request on it (counting the request being placed).
  const auto& w = s.effective_weight;
  size_t a = static_cast<size_t>(first), b = static_cast<size_t>(second);
  return c.active(a) * w[b] < (c.active(b) + 1) * w[a] ? first : second;
}

} // namespace lb::upstream
