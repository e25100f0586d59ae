// balancers_bench: nanoseconds per pick of each balancing algorithm, with 10 and
// 1,000 backends of weights 1, 2, 3, 1, 2, 3, ...
//
//   balancers_bench [--benchmark_min_time=0.1]
//
// Keys (hashes, random bits) come from a precomputed array so that the loop
// measures the pick, not a random number generator.

#include "lb/upstream/balancer.hpp"
#include "lb/upstream/hashing.hpp"
#include "lb/upstream/maglev.hpp"
#include "lb/upstream/pool.hpp"
#include "lb/upstream/ring_hash.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace lb::upstream;

constexpr size_t kKeys = 4096; // power of two

struct Fixture {
  std::vector<std::string> names;
  std::vector<std::string_view> views;
  std::vector<uint32_t> weights;
  std::vector<uint32_t> active;
  std::vector<uint64_t> keys;

  explicit Fixture(size_t n) {
    std::mt19937_64 rng(42);
    for (size_t i = 0; i < n; ++i) {
      names.push_back("10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1) +
                      ":8080");
      weights.push_back(static_cast<uint32_t>(i % 3 + 1));
      active.push_back(static_cast<uint32_t>(rng() % 20));
    }
    views.assign(names.begin(), names.end());
    for (size_t i = 0; i < kKeys; ++i)
      keys.push_back(rng());
  }
};

void BM_SmoothWrr(benchmark::State& state) {
  Fixture f(state.range(0));
  auto seq = smooth_wrr_sequence(f.weights);
  uint64_t cursor = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(seq[cursor++ % seq.size()]);
}

// As Pool::pick does it: one shared atomic cursor (uncontended here).
void BM_SmoothWrrAtomic(benchmark::State& state) {
  Fixture f(state.range(0));
  auto seq = smooth_wrr_sequence(f.weights);
  std::atomic<uint64_t> cursor{0};
  for (auto _ : state)
    benchmark::DoNotOptimize(seq[cursor.fetch_add(1, std::memory_order_relaxed) % seq.size()]);
}

// The picks as Pool::pick runs them, over a selection of the fixture's weights.
struct Picks {
  Selection selection;
  std::unique_ptr<BackendState[]> state;
  std::vector<const BackendState*> states;
  std::atomic<uint64_t> cursor{0};
  PickRequest request;

  explicit Picks(const Fixture& f) {
    selection.effective_weight = f.weights;
    selection.sequence = smooth_wrr_sequence(f.weights);
    state = std::make_unique<BackendState[]>(f.weights.size());
    for (size_t i = 0; i < f.weights.size(); ++i) {
      state[i].active = f.active[i];
      states.push_back(&state[i]);
    }
  }
  PickContext context(uint64_t random) {
    return {selection, states.data(), request, cursor, random};
  }
};

void BM_RoundRobin(benchmark::State& state) {
  Fixture f(state.range(0));
  Picks p(f);
  for (auto _ : state)
    benchmark::DoNotOptimize(round_robin_pick(p.context(0)));
}

void BM_LeastConn(benchmark::State& state) {
  Fixture f(state.range(0));
  Picks p(f);
  for (auto _ : state)
    benchmark::DoNotOptimize(least_conn_pick(p.context(0)));
}

void BM_RandomTwo(benchmark::State& state) {
  Fixture f(state.range(0));
  Picks p(f);
  size_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(random_two_pick(p.context(f.keys[i++ & (kKeys - 1)])));
}

void BM_RingHash(benchmark::State& state) {
  Fixture f(state.range(0));
  Picks p(f);
  p.selection.ring = RingHash(f.views, f.weights);
  state.counters["points"] = static_cast<double>(p.selection.ring.size());
  p.request.has_hash = true;
  size_t i = 0;
  for (auto _ : state) {
    p.request.hash = f.keys[i++ & (kKeys - 1)];
    benchmark::DoNotOptimize(ring_hash_pick(p.context(0)));
  }
}

void BM_Maglev(benchmark::State& state) {
  Fixture f(state.range(0));
  Picks p(f);
  p.selection.maglev = maglev_table(f.views, f.weights, maglev_size_for(f.names.size()));
  state.counters["entries"] = static_cast<double>(p.selection.maglev.size());
  p.request.has_hash = true;
  size_t i = 0;
  for (auto _ : state) {
    p.request.hash = f.keys[i++ & (kKeys - 1)];
    benchmark::DoNotOptimize(maglev_balancer_pick(p.context(0)));
  }
}

// The key's hash, which ring_hash and maglev picks need first (a client address).
void BM_Hash64Key(benchmark::State& state) {
  std::string key = "203.0.113.157";
  for (auto _ : state) {
    benchmark::DoNotOptimize(key.data());
    benchmark::DoNotOptimize(hash64(key));
  }
}

// Build costs, off the hot path, for scale.
void BM_MaglevBuild(benchmark::State& state) {
  Fixture f(state.range(0));
  for (auto _ : state)
    benchmark::DoNotOptimize(maglev_table(f.views, f.weights, maglev_size_for(f.names.size())));
}

void BM_RingHashBuild(benchmark::State& state) {
  Fixture f(state.range(0));
  for (auto _ : state)
    benchmark::DoNotOptimize(RingHash(f.views, f.weights));
}

BENCHMARK(BM_SmoothWrr)->Arg(10)->Arg(1000);
BENCHMARK(BM_SmoothWrrAtomic)->Arg(10)->Arg(1000);
BENCHMARK(BM_RoundRobin)->Arg(10)->Arg(1000);
BENCHMARK(BM_LeastConn)->Arg(10)->Arg(1000);
BENCHMARK(BM_RandomTwo)->Arg(10)->Arg(1000);
BENCHMARK(BM_RingHash)->Arg(10)->Arg(1000);
BENCHMARK(BM_Maglev)->Arg(10)->Arg(1000);
BENCHMARK(BM_Hash64Key);
BENCHMARK(BM_MaglevBuild)->Arg(10)->Arg(1000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RingHashBuild)->Arg(10)->Arg(1000)->Unit(benchmark::kMillisecond);

} // namespace
