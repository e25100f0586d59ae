#include "lb/upstream/balancer.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <queue>
#include <random>
#include <vector>

namespace lb::upstream {
namespace {

// A pool's view as a pick sees it: weights, the rotation built from them, and
// each backend's requests in flight.
struct Fixture {
  Selection selection;
  std::unique_ptr<BackendState[]> state;
  std::vector<const BackendState*> states;
  std::atomic<uint64_t> cursor{0};
  PickRequest request;
  std::mt19937_64 rng{7};

  Fixture(std::vector<uint32_t> weights, std::vector<uint32_t> active = {}) {
    selection.effective_weight = weights;
    uint64_t sum = 0;
    for (uint32_t w : weights)
      sum += w;
    // (Huge weights: a rotation in index order stands in for the sequence.)
    if (sum < 100000)
      selection.sequence = smooth_wrr_sequence(weights);
    else
      for (uint32_t i = 0; i < weights.size(); ++i)
        selection.sequence.push_back(i);
    state = std::make_unique<BackendState[]>(weights.size());
    for (size_t i = 0; i < weights.size(); ++i) {
      state[i].active = i < active.size() ? active[i] : 0;
      states.push_back(&state[i]);
    }
  }
  void set_active(std::vector<uint32_t> active) {
    for (size_t i = 0; i < active.size(); ++i)
      state[i].active = active[i];
  }
  int pick(int (*algorithm)(const PickContext&)) {
    PickContext c{selection, states.data(), request, cursor, rng()};
    return algorithm(c);
  }
};

TEST(RoundRobinTest, FollowsTheWeightedRotationAndSkipsTried) {
  Fixture f({3, 1});
  int count[2] = {};
  for (int i = 0; i < 400; ++i)
    ++count[f.pick(round_robin_pick)];
  EXPECT_EQ(count[0], 300);
  EXPECT_EQ(count[1], 100);
  f.request.tried.add(0);
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(f.pick(round_robin_pick), 1);
  f.request.tried.add(1);
  EXPECT_EQ(f.pick(round_robin_pick), -1);
}

TEST(LeastConnTest, PicksTheLeastLoadedCountingTheRequestBeingPlaced) {
  Fixture f({1, 1, 1}, {5, 2, 9});
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(f.pick(least_conn_pick), 1);
  // (9+1)/5 = 2 < (2+1)/1: the heavy backend with more requests is the least loaded.
  f.selection.effective_weight = {1, 1, 5};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(f.pick(least_conn_pick), 2);
  // Exact comparison, no rounding: (1+1)/1 > (3+1)/4 = 1.
  Fixture g({1, 4}, {1, 3});
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(g.pick(least_conn_pick), 1);
  // Large numbers do not overflow.
  Fixture h({4000000000u, 3999999998u}, {4000000000u, 3999999999u});
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(h.pick(least_conn_pick), 0);
}

TEST(LeastConnTest, IdleBackendsShareByWeight) {
  Fixture f({3, 1});
  int count[2] = {};
  for (int i = 0; i < 400; ++i)
    ++count[f.pick(least_conn_pick)];
  EXPECT_EQ(count[0], 300);
  EXPECT_EQ(count[1], 100);
  Fixture g({2, 2, 2}, {4, 4, 4});
  int ties[3] = {};
  for (int i = 0; i < 300; ++i)
    ++ties[g.pick(least_conn_pick)];
  EXPECT_EQ(ties[0], 100);
  EXPECT_EQ(ties[1], 100);
  EXPECT_EQ(ties[2], 100);
}

TEST(LeastConnTest, RespectsTriedAndZeroWeight) {
  Fixture f({0, 1, 1, 1}, {0, 1, 2, 3});
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(f.pick(least_conn_pick), 1);
  f.request.tried.add(1);
  EXPECT_EQ(f.pick(least_conn_pick), 2);
  f.request.tried.add(2);
  EXPECT_EQ(f.pick(least_conn_pick), 3);
  f.request.tried.add(3);
  EXPECT_EQ(f.pick(least_conn_pick), -1);
  Fixture empty({});
  EXPECT_EQ(empty.pick(least_conn_pick), -1);
}

TEST(LeastConnTest, BackendsPastSixtyFourAreSkippedWhenTried) {
  Fixture f(std::vector<uint32_t>(70, 1), std::vector<uint32_t>(70, 1));
  f.state[66].active = 0;
  f.state[67].active = 0;
  EXPECT_EQ(f.pick(least_conn_pick) / 2, 33);
  f.request.tried.add(66);
  f.request.tried.add(67);
  for (int i = 0; i < 70; ++i) {
    int b = f.pick(least_conn_pick);
    EXPECT_NE(b, 66);
    EXPECT_NE(b, 67);
  }
}

TEST(RandomTwoTest, NeverPicksTriedOrZeroWeight) {
  Fixture f({1, 0, 1, 1, 0, 1});
  f.request.tried.add(0);
  f.request.tried.add(2);
  int count[6] = {};
  for (int i = 0; i < 10000; ++i) {
    int p = f.pick(random_two_pick);
    ASSERT_GE(p, 0);
    ++count[p];
  }
  EXPECT_EQ(count[0] + count[1] + count[2] + count[4], 0);
  EXPECT_NEAR(count[3], 5000, 500);
  EXPECT_NEAR(count[5], 5000, 500);
  // A single eligible backend, and none.
  f.request.tried.add(5);
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(f.pick(random_two_pick), 3);
  f.request.tried.add(3);
  EXPECT_EQ(f.pick(random_two_pick), -1);
}

TEST(RandomTwoTest, AvoidsTheBusyBackend) {
  Fixture f({1, 1, 1}, {10, 0, 0});
  int busy = 0;
  const int picks = 10000;
  for (int i = 0; i < picks; ++i)
    busy += f.pick(random_two_pick) == 0;
  EXPECT_LT(busy, picks / 100);
}

TEST(RandomTwoTest, EqualWhenAllEqual) {
  Fixture f({1, 1, 1, 1}, {3, 3, 3, 3});
  int count[4] = {};
  for (int i = 0; i < 40000; ++i)
    ++count[f.pick(random_two_pick)];
  for (int c : count)
    EXPECT_NEAR(c, 10000, 600);
}

TEST(RandomTwoTest, CandidatesFollowWeights) {
  // All idle: the pick is the first candidate, drawn 3:1.
  Fixture f({3, 1, 3, 1});
  int count[4] = {};
  for (int i = 0; i < 40000; ++i)
    ++count[f.pick(random_two_pick)];
  EXPECT_NEAR(count[0] + count[2], 30000, 800);
  EXPECT_NEAR(count[1] + count[3], 10000, 800);
}

// Closed loop: `clients` clients, each sending its next request a think time
// after its last response; both backends answer in about the same time. The
// heavy backend's share of requests, weights 3:1.
double heavy_share(int (*algorithm)(const PickContext&), int clients, double think) {
  Fixture f({3, 1});
  std::mt19937_64 rng(clients);
  std::uniform_real_distribution<double> service(0.8, 1.2);
  std::exponential_distribution<double> pause(think > 0 ? 1.0 / think : 1.0);
  struct Event {
    double at;
    int backend; // -1: a client sends
    bool operator>(const Event& o) const { return at > o.at; }
  };
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  for (int c = 0; c < clients; ++c)
    events.push({0.01 * c, -1});
  int count[2] = {};
  for (int done = 0; done < 20000;) {
    Event e = events.top();
    events.pop();
    if (e.backend < 0) {
      int b = f.pick(algorithm);
      ++f.state[b].active;
      ++count[b];
      events.push({e.at + service(rng), b});
    } else {
      --f.state[e.backend].active;
      ++done;
      events.push({e.at + (think > 0 ? pause(rng) : 0), -1});
    }
  }
  return static_cast<double>(count[0]) / (count[0] + count[1]);
}

TEST(LeastConnTest, WeightsHoldAtAnyConcurrency) {
  for (double think : {0.0, 1.0, 3.0})
    for (int clients : {1, 2, 3, 4, 8, 16, 64})
      EXPECT_NEAR(heavy_share(least_conn_pick, clients, think), 0.75, 0.06)
          << clients << " clients, think time " << think;
}

TEST(RandomTwoTest, WeightsHoldAtAnyConcurrency) {
  for (double think : {0.0, 1.0, 3.0})
    for (int clients : {1, 2, 4, 8, 16, 64})
      EXPECT_NEAR(heavy_share(random_two_pick, clients, think), 0.75, 0.06)
          << clients << " clients, think time " << think;
}

TEST(HashingTest, NoKeyOrARetryLeavesThePickToTheRotation) {
  Fixture f({1, 1});
  f.request.has_hash = false;
  EXPECT_EQ(f.pick(maglev_balancer_pick), -1);
  EXPECT_EQ(f.pick(ring_hash_pick), -1);
  std::vector<std::string_view> names{"10.0.0.1:80", "10.0.0.2:80"};
  f.selection.nominal_share = {0.5, 0.5};
  maglev_build(f.selection, names);
  ring_hash_build(f.selection, names);
  f.request.has_hash = true;
  f.request.hash = 12345;
  int m = f.pick(maglev_balancer_pick), r = f.pick(ring_hash_pick);
  EXPECT_GE(m, 0);
  EXPECT_GE(r, 0);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(f.pick(maglev_balancer_pick), m);
    EXPECT_EQ(f.pick(ring_hash_pick), r);
  }
  f.request.tried.add(static_cast<size_t>(m));
  EXPECT_EQ(f.pick(maglev_balancer_pick), -1);
}

TEST(BalancerTableTest, EveryBalanceHasItsAlgorithm) {
  for (size_t i = 0; i < std::size(config::balance_names); ++i) {
    auto kind = static_cast<config::Balance>(i);
    const Balancer& b = balancer_for(kind);
    EXPECT_EQ(b.kind, kind) << config::balance_names[i];
    EXPECT_NE(b.pick, nullptr);
    EXPECT_EQ(b.build != nullptr, config::hashing(kind)) << config::balance_names[i];
  }
  EXPECT_EQ(balancer_for(config::Balance::least_conn).pick, least_conn_pick);
  EXPECT_TRUE(balancer_for(config::Balance::random_two).counts_active);
}

} // namespace
} // namespace lb::upstream
