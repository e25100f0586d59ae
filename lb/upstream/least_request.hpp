#pragma once
// Load-aware picks by active requests per unit of weight: least_conn (a full scan)
// and random_two (power of two random choices, Mitzenmacher). Pure functions over
// arrays the caller snapshots; no allocation, no lock, any thread.
//
// Common arguments: `active[i]` is backend i's active requests, `weights[i]` its
// weight (0 = takes no traffic), n backends. Bit i of `excluded_mask` excludes
// backend i (tried already, say); backends from index 64 on cannot be excluded.
// Loads compare as active/weight, exactly, in 64-bit integers:
// a is less loaded than b when active_a x weight_b < active_b x weight_a.

#include <cstddef>
#include <cstdint>

namespace lb::upstream {

// The eligible backend with the least active/weight, or -1 when none is eligible
// (every one excluded or of weight 0). O(n).
// The scan starts at `rotation % n` and the first of equally loaded backends wins,
// so a caller that passes a counter spreads ties in turn over all of them; a
// caller that passes the smooth weighted round robin pick spreads ties by weight.
int least_conn_pick(const uint32_t* active, const uint32_t* weights, size_t n, uint64_t rotation,
                    uint64_t excluded_mask);

// Power of two choices: draws two distinct eligible backends, each with
// probability proportional to its weight, and returns the one with the lower
// active/weight (the first drawn on a tie); -1 when none is eligible.
// `random` is fresh random bits (one per pick); further bits come from it by
// splitmix64. Draws are by rejection against `max_weight`: the largest weight,
// which the caller keeps with the weights (a larger bound only costs more draws,
// a smaller one caps the heavier weights at it); 0 = find it with an
// O(n) scan. So a pick is O(1) expected while the weights are of similar size.
// When 16 draws do not give two candidates (most backends excluded, or a single
// one eligible), falls back to least_conn_pick: O(n) worst case.
int random_two_pick(const uint32_t* active, const uint32_t* weights, size_t n, uint64_t random,
                    uint64_t excluded_mask, uint32_t max_weight = 0);

} // namespace lb::upstream
