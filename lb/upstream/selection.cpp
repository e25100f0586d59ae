#include "lb/upstream/selection.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace lb::upstream {

std::vector<double> priority_load(const std::vector<double>& level_health,
                                  double overprovisioning) {
  std::vector<double> pct(level_health.size());
  double total = 0;
  for (size_t i = 0; i < level_health.size(); ++i) {
    pct[i] = std::min(1.0, std::max(0.0, level_health[i]) * overprovisioning);
    total += pct[i];
  }
  std::vector<double> load(level_health.size(), 0.0);
  if (total <= 0)
    return load;
  double normalized = std::min(1.0, total);
  double remaining = 1.0;
  for (size_t i = 0; i < pct.size() && remaining > 1e-12; ++i) {
    load[i] = std::min(remaining, pct[i] / normalized);
    remaining -= load[i];
  }
  return load;
}

std::vector<uint32_t> smooth_wrr_sequence(const std::vector<uint32_t>& weights) {
  std::vector<uint32_t> order;
  uint64_t total = std::accumulate(weights.begin(), weights.end(), uint64_t{0});
  if (total == 0)
    return order;
  order.reserve(total);
  std::vector<int64_t> current(weights.size(), 0);
  for (uint64_t n = 0; n < total; ++n) {
    size_t best = 0;
    bool found = false;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (!weights[i])
        continue;
      current[i] += weights[i];
      if (!found || current[i] > current[best])
        best = i, found = true;
    }
    current[best] -= static_cast<int64_t>(total);
    order.push_back(static_cast<uint32_t>(best));
  }
  return order;
}

namespace {

// Integer weights from shares, as small as the shares allow (divided by their
// gcd), so the round robin period stays short.
std::vector<uint32_t> to_integer_weights(const std::vector<double>& share) {
  const double scale = std::max(10000.0, 10.0 * static_cast<double>(share.size()));
  std::vector<uint32_t> w(share.size(), 0);
  uint32_t g = 0;
  for (size_t i = 0; i < share.size(); ++i) {
    if (share[i] <= 0)
      continue;
    w[i] = std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(share[i] * scale)));
    g = std::gcd(g, w[i]);
  }
  if (g > 1)
    for (auto& x : w)
      x /= g;
  return w;
}

} // namespace

Selection build_selection(const std::vector<BackendView>& backends,
                          const std::vector<RegionView>& regions, double overprovisioning,
                          bool fail_open) {
  Selection s;
  s.region_share.assign(regions.size(), 0.0);
  s.effective_weight.assign(backends.size(), 0);
  s.nominal_share.assign(backends.size(), 0.0);

  // Region health: the healthy share of its backends' weight.
  std::vector<double> total(regions.size(), 0), healthy(regions.size(), 0);
  for (const auto& b : backends) {
    if (b.region >= regions.size() || b.drained || b.standby)
      continue;
    total[b.region] += b.weight;
    if (b.in_rotation)
      healthy[b.region] += b.weight;
  }
  // Priority levels in ascending order; a level's health is the region-weighted
  // health of its regions.
  std::map<uint32_t, std::vector<size_t>> levels;
  for (size_t r = 0; r < regions.size(); ++r)
    levels[regions[r].priority].push_back(r);
  std::vector<double> level_health;
  std::vector<const std::vector<size_t>*> level_regions;
  for (const auto& [priority, members] : levels) {
    double weight = 0, weighted_health = 0;
    for (size_t r : members) {
      double h = total[r] > 0 ? healthy[r] / total[r] : 0;
      weight += regions[r].weight;
      weighted_health += regions[r].weight * h;
    }
    level_health.push_back(weight > 0 ? weighted_health / weight : 0);
    level_regions.push_back(&members);
  }
  std::vector<double> load = priority_load(level_health, overprovisioning);

  // For the nominal shares: each region's weight of all its backends, whatever
  // their state, and each level's regions' total weight.
  std::vector<double> listed(regions.size(), 0);
  for (const auto& b : backends)
    if (b.region < regions.size())
      listed[b.region] += b.weight;
  std::vector<double> level_region_weight(regions.size(), 0);
  for (size_t l = 0; l < level_regions.size(); ++l) {
    double sum = 0;
    for (size_t r : *level_regions[l])
      sum += regions[r].weight;
    for (size_t r : *level_regions[l])
      level_region_weight[r] = sum;
  }
  std::vector<double> region_load(regions.size(), 0);
  for (size_t l = 0; l < load.size(); ++l)
    for (size_t r : *level_regions[l])
      region_load[r] = load[l];

  // What each region's share is divided by: the in-rotation weight, ramped.
  std::vector<double> ramped(regions.size(), 0);
  for (const auto& b : backends)
    if (b.region < regions.size() && b.in_rotation && !b.drained && !b.standby)
      ramped[b.region] += b.weight * b.ramp;

  std::vector<double> share(backends.size(), 0.0);
  for (size_t l = 0; l < load.size(); ++l) {
    if (load[l] <= 0)
      continue;
    double sum = 0;
    for (size_t r : *level_regions[l])
      sum += regions[r].weight * (total[r] > 0 ? healthy[r] / total[r] : 0);
    if (sum <= 0)
      continue;
    for (size_t r : *level_regions[l]) {
      double h = total[r] > 0 ? healthy[r] / total[r] : 0;
      s.region_share[r] = load[l] * regions[r].weight * h / sum;
    }
  }
  for (size_t i = 0; i < backends.size(); ++i) {
    const auto& b = backends[i];
    if (b.region >= regions.size() || !b.in_rotation || b.drained || b.standby || !b.weight)
      continue;
    if (ramped[b.region] > 0)
      share[i] = s.region_share[b.region] * b.weight * b.ramp / ramped[b.region];
    if (share[i] > 0 && listed[b.region] > 0 && level_region_weight[b.region] > 0)
      s.nominal_share[i] = region_load[b.region] * regions[b.region].weight /
                           level_region_weight[b.region] * b.weight * b.ramp / listed[b.region];
  }

  bool any = std::any_of(share.begin(), share.end(), [](double x) { return x > 0; });
  if (!any && fail_open) {
    // Nothing is in rotation: better to try every backend than to refuse all.
    double sum = 0;
    for (const auto& b : backends)
      if (!b.drained)
        sum += b.weight;
    if (sum > 0) {
      s.fail_open = true;
      std::fill(s.region_share.begin(), s.region_share.end(), 0.0);
      for (size_t i = 0; i < backends.size(); ++i) {
        if (backends[i].drained)
          continue;
        share[i] = backends[i].weight / sum;
        s.nominal_share[i] = share[i];
        if (backends[i].region < regions.size())
          s.region_share[backends[i].region] += share[i];
      }
    }
  }
  s.effective_weight = to_integer_weights(share);
  s.sequence = smooth_wrr_sequence(s.effective_weight);
  return s;
}

} // namespace lb::upstream
