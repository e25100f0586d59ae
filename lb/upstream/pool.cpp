#include "lb/upstream/pool.hpp"

#include <numeric>

namespace lb::upstream {

std::vector<uint32_t> smooth_wrr_sequence(const std::vector<uint32_t>& weights) {
  std::vector<uint32_t> order;
  uint64_t total = std::accumulate(weights.begin(), weights.end(), uint64_t{0});
  if (total == 0) return order;
  order.reserve(total);
  std::vector<int64_t> current(weights.size(), 0);
  for (uint64_t n = 0; n < total; ++n) {
    size_t best = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
      current[i] += weights[i];
      if (current[i] > current[best]) best = i;
    }
    current[best] -= static_cast<int64_t>(total);
    order.push_back(static_cast<uint32_t>(best));
  }
  return order;
}

Pool::Pool(const config::Pool& config, size_t index)
    : config_(config), name_(config.name), index_(index) {
  // Only the lowest priority level serves while every backend is in rotation;
  // failover across levels arrives with health checks.
  uint32_t level = UINT32_MAX;
  for (const auto& r : config.regions) level = std::min(level, r.priority);
  std::vector<uint32_t> weights;
  for (const auto& r : config.regions) {
    for (const auto& b : r.backends) {
      Backend backend;
      backend.label = b.address.text();
      backend.region = r.name;
      backend.endpoint = {boost::asio::ip::make_address(b.address.host), b.address.port};
      backend.weight = b.weight;
      backend.priority = r.priority;
      weights.push_back(r.priority == level ? b.weight : 0);
      backends_.push_back(std::move(backend));
    }
  }
  sequence_ = smooth_wrr_sequence(weights);
}

int Pool::pick(uint64_t tried) const {
  if (sequence_.empty()) return -1;
  uint64_t start = cursor_.fetch_add(1, std::memory_order_relaxed);
  size_t n = sequence_.size();
  for (size_t i = 0; i < n; ++i) {
    uint32_t b = sequence_[(start + i) % n];
    if (b >= 64 || !(tried & (uint64_t{1} << b))) return static_cast<int>(b);
  }
  return -1;
}

}  // namespace lb::upstream
