#include "lb/upstream/balancer.hpp"

#include <iterator>

namespace lb::upstream {

namespace {

// In config::Balance order.
constexpr Balancer balancers[] = {
    {config::Balance::round_robin, round_robin_pick, nullptr, false},
    {config::Balance::least_conn, least_conn_pick, nullptr, true},
    {config::Balance::random_two, random_two_pick, nullptr, true},
    {config::Balance::ring_hash, ring_hash_pick, ring_hash_build, false},
    {config::Balance::maglev, maglev_balancer_pick, maglev_build, false},
};
static_assert(std::size(balancers) == std::size(config::balance_names));

} // namespace

const Balancer& balancer_for(config::Balance kind) { return balancers[static_cast<size_t>(kind)]; }

} // namespace lb::upstream
