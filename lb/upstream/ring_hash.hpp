#pragma once
// Consistent hashing on a ring (Karger et al.; as Envoy's ring_hash and HAProxy's
// chash). Build off the hot path; pick is a binary search, no allocation, no lock.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lb::upstream {

class RingHash {
public:
  static constexpr uint32_t kDefaultPointsPerWeight = 160;
  static constexpr size_t kDefaultMaxRingSize = size_t{1} << 20;

  RingHash() = default;

  // Backend i (of weight w) gets w x points_per_weight points on the ring, at
  // hash64(name + "#" + j) for j = 0, 1, ...; a key belongs to the first point
  // after its hash, wrapping around. That is round(ring_size x w / sum_w) points
  // with ring_size = points_per_weight x sum_w. A backend's points depend only on
  // its own name and weight, never on the others, so when a backend leaves only
  // the keys it had move, and when one joins only the keys it takes move.
  // Zero-weight backends get no points. Above `max_ring_size` points in all,
  // every count is scaled down to fit (each positive weight keeps >= 1 point);
  // only then do the other backends' points depend on the membership.
  //
  // Preconditions: weights.size() == names.size() (a missing weight counts as 0).
  // Deterministic: same input, same ring, on every machine and in every process.
  RingHash(const std::vector<std::string_view>& names, const std::vector<uint32_t>& weights,
           uint32_t points_per_weight = kDefaultPointsPerWeight,
           size_t max_ring_size = kDefaultMaxRingSize);

  // The backend index for a key's hash, or -1 when the ring is empty. Any thread.
  int pick(uint64_t hash) const;

  size_t size() const { return hashes_.size(); }
  bool empty() const { return hashes_.empty(); }

private:
  // The ring, sorted by hash (ties by backend index): two arrays so that the
  // binary search touches only the hashes.
  std::vector<uint64_t> hashes_;
  std::vector<uint32_t> backends_;
};

} // namespace lb::upstream
