#pragma once
// Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), weighted
// as katran's MaglevHashV2 does. Build the table off the hot path; a pick is
// `table[hash % table.size()]`: one load, no allocation, no lock.

#include <cstdint>
#include <string_view>
#include <vector>

namespace lb::upstream {

// The lookup table: entry = index into `names`. Each backend walks its own
// permutation of the slots (offset and skip from two seeded hash64 of its name)
// and claims the next free slot when it takes a turn. A backend of weight w takes
// w / max_weight turns per round (credit carried over), so entries are split in
// proportion to weight; with equal weights every backend gets size/n entries,
// give or take one. Zero-weight backends get no entries; the table is empty when
// every weight is 0 or `names` is empty.
//
// Preconditions: weights.size() == names.size() (a missing weight counts as 0).
// `size` should be prime (maglev_size_for gives one); a size that is not prime is
// raised to the next prime, so use table.size(), not `size`, to pick.
// Deterministic: same input, same table, on every machine and in every process.
std::vector<uint32_t> maglev_table(const std::vector<std::string_view>& names,
                                   const std::vector<uint32_t>& weights, uint32_t size);

// The table size for `backends` backends: the smallest prime >= max(65537,
// 100 x backends), at most 655373 (prime; from 6554 backends on). 100 slots per
// backend keep each backend's share within about 1% of its weight's share.
uint32_t maglev_size_for(size_t backends);

// Picks from a table built by maglev_table: -1 when it is empty. Any thread.
inline int maglev_pick(const std::vector<uint32_t>& table, uint64_t hash) {
  if (table.empty())
    return -1;
  return static_cast<int>(table[hash % table.size()]);
}

} // namespace lb::upstream
