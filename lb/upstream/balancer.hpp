#pragma once
// Balancers: how a pool picks one backend for one request.
//
// Every algorithm is a pair of functions over the pool's current Selection
// (selection.hpp): `build` fills the algorithm's own immutable table when the
// selection is rebuilt (off the hot path; nullptr when it needs none) and
// `pick` chooses a backend for one request (any thread, no lock, no
// allocation). One file per algorithm; the table in balancer.cpp maps each
// `balance:` of the config to its pair, as HAProxy's lb_ops do. The functions
// the pool runs are the ones the unit tests and bench/balancers_bench.cpp call.

#include "config/config_types.hpp"
#include "lb/upstream/registry.hpp"
#include "lb/upstream/selection.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lb::upstream {

// The backends one request has tried (or found at their connection limit),
// by index: a bit for each of the first 64, a short list for the others. Kept
// in the request: no allocation. Full, it takes no more (the request stops
// trying others: see full()).
struct TriedSet {
  static constexpr unsigned list_capacity = 16;
  uint64_t low = 0;
  uint32_t high[list_capacity];
  uint8_t high_count = 0;

  TriedSet() = default;
  explicit TriedSet(uint64_t bits) : low(bits) {}
  bool contains(size_t b) const {
    if (b < 64)
      return low & (uint64_t{1} << b);
    for (unsigned i = 0; i < high_count; ++i)
      if (high[i] == b)
        return true;
    return false;
  }
  void add(size_t b) {
    if (b < 64)
      low |= uint64_t{1} << b;
    else if (!contains(b) && high_count < list_capacity)
      high[high_count++] = static_cast<uint32_t>(b);
  }
  void remove(size_t b) {
    if (b < 64) {
      low &= ~(uint64_t{1} << b);
      return;
    }
    for (unsigned i = 0; i < high_count; ++i)
      if (high[i] == b) {
        high[i] = high[--high_count];
        return;
      }
  }
  bool full() const { return high_count == list_capacity; }
  bool empty() const { return low == 0 && high_count == 0; }
  void clear() { low = 0, high_count = 0; }
};

// What a pick may take into account for one request.
struct PickRequest {
  TriedSet tried;        // backends not to pick
  uint64_t hash = 0;     // ring_hash / maglev key
  bool has_hash = false; // false: the key is missing, balance by round robin
  int sticky = -1;       // the backend the client's sticky cookie names
};

// Everything one pick reads.
struct PickContext {
  const Selection& selection;
  // Per backend, its shared state: `active` is its requests in flight, all
  // workers together (kept when the balancer counts them).
  const BackendState* const* states;
  const PickRequest& request;
  // The pool's rotation, one turn per pick that uses it: shared by all
  // workers, so clients see the configured rotation whatever thread serves them.
  std::atomic<uint64_t>& cursor;
  uint64_t random; // fresh random bits for this pick

  uint64_t next_turn() const { return cursor.fetch_add(1, std::memory_order_relaxed); }
  uint64_t active(size_t b) const { return states[b]->active.load(std::memory_order_relaxed); }
  // Takes traffic now and is not excluded for this request.
  bool eligible(size_t b) const {
    return selection.effective_weight[b] > 0 && !request.tried.contains(b);
  }
};

struct Balancer {
  config::Balance kind;
  // Picks a backend for the request, or -1 when the algorithm has none for it
  // (no key, every candidate tried): the pool then falls back to round robin.
  int (*pick)(const PickContext&);
  // Builds the algorithm's table into `s` (its effective weights and
  // nominal shares are set) for backends with these names, in pool order.
  void (*build)(Selection& s, const std::vector<std::string_view>& names);
  bool counts_active; // needs BackendState::active (the pool keeps it then)
};

// The balancer of a `balance:` kind.
const Balancer& balancer_for(config::Balance kind);

// Smooth weighted round robin: the next backend of the selection's sequence
// that the request has not tried. -1 when there is none.
int round_robin_pick(const PickContext& c);

// least_conn: the backend the weighted rotation names next, unless another
// would carry fewer requests per unit of weight even with this request placed
// on it: then that one (the least loaded, counting the request being placed,
// as Envoy's and HAProxy's least-request do). Loads compare exactly, in
// integers: (active_a + 1) x weight_b against (active_b + 1) x weight_a. So
// idle backends share requests by weight, a backend that slows down and
// gathers requests is passed over, and weights 3:1 keep their 75% at any
// concurrency. O(backends).
int least_conn_pick(const PickContext& c);

// random_two (power of two choices): two candidates drawn by weight; the first
// unless the second would carry fewer requests per unit of weight even with
// this request on it. O(1); when neither candidate may be taken, least_conn
// over the rest.
int random_two_pick(const PickContext& c);

// ring_hash and maglev: the backend of the request's key; -1 without a key or
// on a retry (the pool's round robin then picks another).
int ring_hash_pick(const PickContext& c);
void ring_hash_build(Selection& s, const std::vector<std::string_view>& names);
int maglev_balancer_pick(const PickContext& c);
void maglev_build(Selection& s, const std::vector<std::string_view>& names);

} // namespace lb::upstream
