#include "lb/upstream/ring_hash.hpp"

#include "lb/upstream/balancer.hpp"
#include "lb/upstream/hashing.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

namespace lb::upstream {

RingHash::RingHash(const std::vector<std::string_view>& names, const std::vector<uint32_t>& weights,
                   uint32_t points_per_weight, size_t max_ring_size) {
  const size_t n = names.size();
  auto weight = [&](size_t i) { return i < weights.size() ? weights[i] : 0u; };
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i)
    total += uint64_t{weight(i)} * points_per_weight;
  if (total == 0 || max_ring_size == 0)
    return;
  const double scale =
      total > max_ring_size ? static_cast<double>(max_ring_size) / static_cast<double>(total) : 1.0;

  std::vector<std::pair<uint64_t, uint32_t>> ring;
  ring.reserve(std::min<uint64_t>(total, max_ring_size) + n);
  std::string key;
  for (size_t i = 0; i < n; ++i) {
    if (weight(i) == 0)
      continue;
    uint64_t points = uint64_t{weight(i)} * points_per_weight;
    if (scale < 1.0)
      points = std::max<uint64_t>(1, std::llround(static_cast<double>(points) * scale));
    key.assign(names[i]);
    key += '#';
    const size_t prefix = key.size();
    for (uint64_t j = 0; j < points; ++j) {
      key.resize(prefix);
      key += std::to_string(j);
      ring.emplace_back(hash64(key), static_cast<uint32_t>(i));
    }
  }
  std::sort(ring.begin(), ring.end());
  hashes_.reserve(ring.size());
  backends_.reserve(ring.size());
  for (const auto& [h, b] : ring) {
    hashes_.push_back(h);
    backends_.push_back(b);
  }
}

int RingHash::pick(uint64_t hash) const {
  const size_t n = hashes_.size();
  if (n == 0)
    return -1;
  // std::upper_bound without branches on the data (conditional moves): the
  // first point after `hash`, or n. Keys are random, so a branchy search would
  // mispredict at about every level.
  const uint64_t* base = hashes_.data();
  size_t len = n;
  while (len > 1) {
    size_t half = len / 2;
    base = base[half] <= hash ? base + half : base;
    len -= half;
  }
  size_t i = static_cast<size_t>(base - hashes_.data()) + (*base <= hash);
  return static_cast<int>(backends_[i == n ? 0 : i]);
}

} // namespace lb::upstream

namespace lb::upstream {

int ring_hash_pick(const PickContext& c) {
  if (!c.request.has_hash || !c.request.tried.empty())
    return -1;
  return c.selection.ring.pick(c.request.hash);
}

// Points from the nominal shares on a scale set by the pool's size: a
// backend's points do not depend on which others are in rotation.
void ring_hash_build(Selection& s, const std::vector<std::string_view>& names) {
  const double scale = std::clamp<double>(160.0 * static_cast<double>(names.size()), 1024.0,
                                          static_cast<double>(RingHash::kDefaultMaxRingSize));
  std::vector<uint32_t> points(names.size(), 0);
  for (size_t i = 0; i < names.size(); ++i)
    if (s.nominal_share[i] > 0)
      points[i] =
          std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(s.nominal_share[i] * scale)));
  s.ring = RingHash(names, points, 1);
}

} // namespace lb::upstream
