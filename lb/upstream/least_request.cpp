#include "lb/upstream/least_request.hpp"

#include <algorithm>

namespace lb::upstream {

namespace {

constexpr int kMaxDraws = 16;

bool eligible(const uint32_t* weights, size_t i, uint64_t excluded_mask) {
  return weights[i] != 0 && (i >= 64 || !(excluded_mask & (uint64_t{1} << i)));
}

// active_a / weight_a < active_b / weight_b, exactly.
bool less_loaded(const uint32_t* active, const uint32_t* weights, size_t a, size_t b) {
  return uint64_t{active[a]} * weights[b] < uint64_t{active[b]} * weights[a];
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

} // namespace

int least_conn_pick(const uint32_t* active, const uint32_t* weights, size_t n, uint64_t rotation,
                    uint64_t excluded_mask) {
  if (n == 0)
    return -1;
  // The best so far starts as "infinitely loaded" (1/0), which any eligible one beats.
  size_t best = n;
  uint64_t best_active = 1, best_weight = 0;
  auto scan = [&](size_t from, size_t to) {
    for (size_t i = from; i < to; ++i) {
      uint64_t w = weights[i], a = active[i];
      if (w == 0 || (i < 64 && (excluded_mask >> i) & 1))
        continue;
      if (a * best_weight < best_active * w) {
        best = i;
        best_active = a;
        best_weight = w;
      }
    }
  };
  const size_t start = rotation % n;
  scan(start, n);
  scan(0, start);
  return best == n ? -1 : static_cast<int>(best);
}

int random_two_pick(const uint32_t* active, const uint32_t* weights, size_t n, uint64_t random,
                    uint64_t excluded_mask, uint32_t max_weight) {
  if (n == 0)
    return -1;
  if (max_weight == 0) {
    // Over all backends, excluded or not: a bound is all the draws need.
    for (size_t i = 0; i < n; ++i)
      max_weight = std::max(max_weight, weights[i]);
    if (max_weight == 0)
      return -1;
  }
  uint64_t state = random;
  size_t first = n, second = n;
  for (int draw = 0; draw < kMaxDraws; ++draw) {
    uint64_t r = splitmix64(state);
    size_t i = static_cast<size_t>(((r >> 32) * n) >> 32); // uniform in [0, n)
    if (i == first || !eligible(weights, i, excluded_mask))
      continue;
    // Accept with probability weight / max_weight.
    if ((r & 0xffffffffu) * max_weight >= uint64_t{weights[i]} << 32)
      continue;
    if (first == n) {
      first = i;
    } else {
      second = i;
      break;
    }
  }
  if (second == n)
    return least_conn_pick(active, weights, n, random, excluded_mask);
  return static_cast<int>(less_loaded(active, weights, second, first) ? second : first);
}

} // namespace lb::upstream
