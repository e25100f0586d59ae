#pragma once
// A pool as the data path sees it: its backends with their resolved endpoints and
// a balancer built once from their weights. Built off the hot path when the
// config (or, later, health) changes; immutable and shared by every worker.

#include "config/config_types.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lb::upstream {

struct Backend {
  std::string label;  // "host:port", as in the config, logs and metrics
  std::string region;
  boost::asio::ip::tcp::endpoint endpoint;
  uint32_t weight = 1;
  uint32_t priority = 0;
};

// Smooth weighted round robin (as nginx's): the pick order for one period of
// sum(weights) picks, computed once; picking is an index into it.
std::vector<uint32_t> smooth_wrr_sequence(const std::vector<uint32_t>& weights);

class Pool {
 public:
  Pool(const config::Pool& config, size_t index);

  const std::string& name() const { return name_; }
  size_t index() const { return index_; }
  const config::Pool& config() const { return config_; }
  const std::vector<Backend>& backends() const { return backends_; }

  // Picks a backend not in `tried` (a bit per backend index; the low 64 only).
  // Returns -1 when every backend was tried. Any thread; lock-free.
  int pick(uint64_t tried) const;

 private:
  config::Pool config_;
  std::string name_;
  size_t index_;
  std::vector<Backend> backends_;
  std::vector<uint32_t> sequence_;  // backend indexes in smooth WRR order
  // One cursor for all workers, so clients see the configured rotation whatever
  // thread serves them; alone on its cache line.
  alignas(64) mutable std::atomic<uint64_t> cursor_{0};
};

}  // namespace lb::upstream
