#include "lb/upstream/maglev.hpp"

#include "lb/upstream/balancer.hpp"
#include "lb/upstream/hashing.hpp"

#include <algorithm>

namespace lb::upstream {

namespace {

constexpr uint64_t kOffsetSeed = 0x6d61676c65762d6fULL; // "maglev-o"
constexpr uint64_t kSkipSeed = 0x6d61676c65762d73ULL;   // "maglev-s"
constexpr uint32_t kEmpty = UINT32_MAX;

bool is_prime(uint32_t n) {
  if (n < 2)
    return false;
  if (n % 2 == 0)
    return n == 2;
  for (uint32_t d = 3; uint64_t{d} * d <= n; d += 2)
    if (n % d == 0)
      return false;
  return true;
}

uint32_t next_prime(uint32_t n) {
  while (!is_prime(n))
    ++n;
  return n;
}

} // namespace

uint32_t maglev_size_for(size_t backends) {
  constexpr uint32_t kMin = 65537, kMax = 655373;
  if (backends >= kMax / 100)
    return kMax;
  return next_prime(std::max<uint32_t>(kMin, static_cast<uint32_t>(backends) * 100));
}

std::vector<uint32_t> maglev_table(const std::vector<std::string_view>& names,
                                   const std::vector<uint32_t>& weights, uint32_t size) {
  const size_t n = names.size();
  auto weight = [&](size_t i) { return i < weights.size() ? weights[i] : 0u; };
  uint32_t max_weight = 0;
  for (size_t i = 0; i < n; ++i)
    max_weight = std::max(max_weight, weight(i));
  if (max_weight == 0)
    return {};
  const uint64_t m = next_prime(std::max<uint32_t>(size, 2));

  // Backend i's permutation is offset, offset + skip, offset + 2 skip, ... (mod m):
  // it visits every slot because m is prime and 0 < skip < m.
  std::vector<uint64_t> position(n), skip(n), credit(n, 0);
  for (size_t i = 0; i < n; ++i) {
    position[i] = hash64(names[i], kOffsetSeed) % m;
    skip[i] = hash64(names[i], kSkipSeed) % (m - 1) + 1;
  }

  std::vector<uint32_t> table(m, kEmpty);
  uint64_t filled = 0;
  for (;;) {
    for (size_t i = 0; i < n; ++i) {
      credit[i] += weight(i);
      if (credit[i] < max_weight)
        continue; // not its turn this round
      credit[i] -= max_weight;
      uint64_t slot = position[i];
      while (table[slot] != kEmpty)
        slot = (slot + skip[i]) % m;
      table[slot] = static_cast<uint32_t>(i);
      position[i] = (slot + skip[i]) % m;
      if (++filled == m)
        return table;
    }
  }
}

} // namespace lb::upstream

namespace lb::upstream {

int maglev_balancer_pick(const PickContext& c) {
  if (!c.request.has_hash || !c.request.tried.empty())
    return -1;
  return maglev_pick(c.selection.maglev, c.request.hash);
}

// The table is filled in name order, so that every instance builds the same
// table whatever order its config lists the backends in.
void maglev_build(Selection& s, const std::vector<std::string_view>& names) {
  std::vector<size_t> order(names.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return names[a] < names[b]; });
  std::vector<std::string_view> sorted_names;
  std::vector<uint32_t> sorted_weights;
  for (size_t i : order) {
    sorted_names.push_back(names[i]);
    sorted_weights.push_back(s.effective_weight[i]);
  }
  s.maglev = maglev_table(sorted_names, sorted_weights, maglev_size_for(names.size()));
  for (auto& entry : s.maglev)
    entry = static_cast<uint32_t>(order[entry]);
}

} // namespace lb::upstream
