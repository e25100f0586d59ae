#pragma once
// Which backends take traffic and in what shares, computed from health, drains and
// weights (SPEC "Balancing and failover semantics"). Pure functions: the pool
// calls them off the hot path whenever something changes and publishes the result.

#include "lb/upstream/ring_hash.hpp"

#include <cstdint>
#include <vector>

namespace lb::upstream {

struct BackendView {
  uint32_t weight = 1;     // 0 = takes no traffic
  uint32_t region = 0;     // index into the regions
  bool in_rotation = true; // healthy, not ejected, not drained
  bool drained = false;
  // An SRV target of a higher priority than one in rotation (RFC 2782): not a
  // candidate, and not counted in its region's health either.
  bool standby = false;
  // slow_start: the part of its weight a backend that just (re)joined takes
  // within its region. Its region's health counts the whole weight, so a
  // ramp moves traffic between the region's backends, not to other regions.
  double ramp = 1.0;
};

struct RegionView {
  uint32_t priority = 0;
  uint32_t weight = 100;
};

// Envoy's priority load: the share of traffic (0..1) of each priority level, in
// level order, from each level's health (0..1). Level 0 gets
// min(1, overprovisioning x health); the rest spills to the next level by the
// same rule; when the levels together are under-provisioned the shares are
// scaled up to sum to 1. All zero when no level has any health.
std::vector<double> priority_load(const std::vector<double>& level_health, double overprovisioning);

struct Selection {
  std::vector<uint32_t> effective_weight; // per backend; 0 = takes no traffic now
  std::vector<uint32_t> sequence;         // smooth weighted round robin order
  std::vector<double> region_share;       // per region, 0..1 (for status and metrics)
  bool fail_open = false; // no backend in rotation: spreading over all non-drained ones
  // Per backend in rotation, its share as if every backend of its level were
  // healthy (its level's load x its region's part of the level x its weight's
  // part of the region): unlike the share, it does not change when another
  // backend leaves or joins, so ring_hash's points (drawn from it) move only
  // the keys of the backend that changed.
  std::vector<double> nominal_share;
  // Built for the hashing balancers only, from the effective weights.
  std::vector<uint32_t> maglev;
  RingHash ring;
  bool empty() const { return sequence.empty(); }
};

// Builds the selection for one pool. With `fail_open`, when no backend is in
// rotation every non-drained backend takes traffic by its weight.
Selection build_selection(const std::vector<BackendView>& backends,
                          const std::vector<RegionView>& regions, double overprovisioning,
                          bool fail_open);

// Smooth weighted round robin (nginx's): the pick order of one period of
// sum(weights) picks. No burst to the heaviest backend.
std::vector<uint32_t> smooth_wrr_sequence(const std::vector<uint32_t>& weights);

} // namespace lb::upstream
