#include "lb/upstream/pool.hpp"

#include "lb/io/log.hpp"
#include "lb/upstream/hashing.hpp"
#include "lb/upstream/maglev.hpp"

#include <algorithm>
#include <cmath>

namespace lb::upstream {

namespace {
constexpr auto grace = std::chrono::seconds(10); // a replaced selection lives this long
constexpr int64_t max_ejection_factor = 8;       // ejection time doubles up to 8x
} // namespace

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(io::Clock::now().time_since_epoch())
      .count();
}

namespace {

std::string label_of(const boost::asio::ip::address& a, uint16_t port) {
  std::string label = a.is_v6() ? "[" : "";
  label += a.to_string();
  label += a.is_v6() ? "]:" : ":";
  label += std::to_string(port);
  return label;
}

} // namespace

Pool::Pool(const config::Pool& config, size_t index, Registry& registry,
           const Discovered& discovered, const std::string& sticky_secret,
           std::shared_ptr<const io::TlsClient> tls)
    : config_(config), balancer_(balancer_for(config.balance)), name_(config.name), index_(index),
      id_(registry.pool_id(config.name)), tls_(std::move(tls)) {
  auto add = [&](Backend backend) {
    for (const auto& b : backends_)
      if (b.label == backend.label)
        return; // listed twice (say by address and by DNS): once
    backends_.push_back(std::move(backend));
  };
  for (uint32_t r = 0; r < config.regions.size(); ++r) {
    const auto& region = config.regions[r];
    for (size_t e = 0; e < region.backends.size(); ++e) {
      const auto& b = region.backends[e];
      Backend backend;
      backend.region = region.name;
      backend.region_index = r;
      backend.weight = b.weight;
      backend.priority = region.priority;
      if (b.kind == config::Backend::Kind::address) {
        backend.label = b.address.text();
        backend.endpoint = {boost::asio::ip::make_address(b.address.host), b.address.port};
        add(std::move(backend));
        continue;
      }
      auto found = discovered.find(b.discovery_key());
      if (found == discovered.end())
        continue;
      for (const auto& d : found->second) {
        Backend from_dns = backend;
        from_dns.label = label_of(d.address, d.port);
        from_dns.host_name = d.target.empty() ? b.name : d.target;
        from_dns.endpoint = {d.address, d.port};
        if (b.kind == config::Backend::Kind::srv) {
          // RFC 2782: weight 0 is for a target that should get very little
          // traffic while others have weight; it gets the least lb can give.
          from_dns.weight = std::max<uint32_t>(1, d.weight);
          from_dns.srv_group = static_cast<int>(r << 16 | e);
          from_dns.srv_priority = d.priority;
        }
        add(std::move(from_dns));
      }
    }
  }
  if (config.tls.enabled && !tls_) {
    tls_ = io::TlsClient::create(config.tls, tls_error_);
    if (!tls_)
      io::log("pool %s: TLS: %s", name_.c_str(), tls_error_.c_str());
  }
  tracks_active_ = balancer_.counts_active || config.max_connections_per_backend > 0;
  for (auto& b : backends_) {
    sticky_values_.push_back(upstream::sticky_value(sticky_secret, b.label));
    Registry::Entry e = registry.backend(name_, b.label);
    b.id = e.id;
    BackendState& st = *e.state;
    if (e.created || st.config_weight.load() != b.weight) {
      st.weight = b.weight;
      st.config_weight = b.weight;
    }
    // With active checks a backend serves only once its first check passed;
    // one that was checked before keeps what its checks found.
    bool checks = config.health_check.enabled;
    if (e.created || st.checked.load() != checks) {
      st.healthy = !checks;
      st.ever_healthy = !checks;
      st.checked = checks;
    }
    if (e.created && registry.is_serving()) {
      st.ramp_first_join = true;
      // Without checks it enters rotation now: its ramp starts now.
      if (!checks && config.slow_start.count() > 0)
        st.joined_ms.store(steady_ms(), std::memory_order_relaxed);
    }
    states_.push_back(e.state.get());
    owned_states_.push_back(std::move(e.state));
  }
  rebuild(nullptr);
}

Pool::~Pool() {
  delete current_.load();
  for (auto& [when, s] : retired_)
    delete s;
}

// xorshift64*, seeded per thread.
uint64_t thread_random() {
  thread_local uint64_t state = 0x9e3779b97f4a7c15ull ^ reinterpret_cast<uintptr_t>(&state) ^
                                static_cast<uint64_t>(io::Clock::now().time_since_epoch().count());
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545f4914f6cdd1dull;
}

int Pool::pick(const PickRequest& r) const {
  const Selection& s = selection();
  if (s.sequence.empty())
    return -1;
  if (r.sticky >= 0 && static_cast<size_t>(r.sticky) < s.effective_weight.size() &&
      s.effective_weight[static_cast<size_t>(r.sticky)] > 0 &&
      !r.tried.contains(static_cast<size_t>(r.sticky)))
    return r.sticky;
  PickContext context{s, states_.data(), r, cursor_, thread_random()};
  int b = balancer_.pick(context);
  if (b >= 0 || balancer_.pick == round_robin_pick)
    return b;
  return round_robin_pick(context); // no key, or every candidate tried
}

bool Pool::try_acquire(size_t b) {
  uint32_t before = states_[b]->active.fetch_add(1, std::memory_order_relaxed);
  uint32_t limit = config_.max_connections_per_backend;
  if (limit && before >= limit) {
    states_[b]->active.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void Pool::release(size_t b) { states_[b]->active.fetch_sub(1, std::memory_order_relaxed); }

int Pool::sticky_backend(std::string_view value) const {
  for (size_t i = 0; i < sticky_values_.size(); ++i)
    if (sticky_values_[i] == value)
      return static_cast<int>(i);
  return -1;
}

void Pool::rebuild(const char* why) {
  std::lock_guard lock(rebuild_mutex_);
  int64_t now = steady_ms();
  std::vector<BackendView> views(backends_.size());
  int64_t ramp = config_.slow_start.count();
  for (size_t i = 0; i < backends_.size(); ++i) {
    const BackendState& st = *states_[i];
    views[i].weight = st.weight.load(std::memory_order_relaxed);
    if (ramp > 0) {
      // slow_start: a backend that (re)joined ramps its weight up linearly.
      int64_t since = now - st.joined_ms.load(std::memory_order_relaxed);
      views[i].ramp = since >= ramp ? 1.0 : std::max(0.05, static_cast<double>(since) / ramp);
    }
    views[i].region = backends_[i].region_index;
    views[i].drained = st.drained.load(std::memory_order_relaxed);
    views[i].in_rotation = st.healthy.load(std::memory_order_relaxed) && !views[i].drained &&
                           st.ejected_until_ms.load(std::memory_order_relaxed) <= now;
  }
  // RFC 2782: of one SRV name's targets, only those of the lowest priority
  // that has a member in rotation serve.
  for (size_t i = 0; i < backends_.size(); ++i) {
    if (backends_[i].srv_group < 0 || !views[i].in_rotation)
      continue;
    for (size_t j = 0; j < backends_.size(); ++j)
      if (backends_[j].srv_group == backends_[i].srv_group &&
          backends_[j].srv_priority > backends_[i].srv_priority) {
        views[j].in_rotation = false;
        views[j].standby = true;
      }
  }
  std::vector<RegionView> regions;
  for (const auto& r : config_.regions)
    regions.push_back({r.priority, r.weight});
  auto* next =
      new Selection(build_selection(views, regions, config_.overprovisioning, config_.fail_open));
  if (balancer_.build) {
    std::vector<std::string_view> names;
    for (const auto& b : backends_)
      names.push_back(b.label);
    balancer_.build(*next, names);
  }

  const Selection* old = current_.exchange(next, std::memory_order_acq_rel);
  auto wall = io::Clock::now();
  if (old)
    retired_.emplace_back(wall, old);
  std::erase_if(retired_, [&](const auto& r) {
    if (wall - r.first < grace)
      return false;
    delete r.second;
    return true;
  });

  if (!next->fail_open)
    fail_open_logged_.store(false, std::memory_order_relaxed);
  if (!why)
    return;
  if (next->fail_open && !was_fail_open_ && !fail_open_logged_.exchange(true))
    io::log("pool %s: no backend in rotation: fail_open, spreading over all non-drained backends",
            name_.c_str());
  else if (next->empty())
    io::log("pool %s: no backend in rotation: answering 503", name_.c_str());
  else if (was_fail_open_ && !next->fail_open)
    io::log("pool %s: backends back in rotation, fail_open ended", name_.c_str());
  was_fail_open_ = next->fail_open;
  std::string shares;
  for (size_t r = 0; r < config_.regions.size(); ++r) {
    char part[96];
    std::snprintf(part, sizeof part, "%s%s %.1f%%", r ? ", " : "", config_.regions[r].name.c_str(),
                  next->region_share[r] * 100);
    shares += part;
  }
  io::log("pool %s: traffic share now %s (%s)", name_.c_str(), shares.c_str(), why);
}

bool Pool::set_healthy(size_t b, bool healthy) {
  if (b >= backends_.size())
    return false;
  if (states_[b]->healthy.exchange(healthy) == healthy)
    return false;
  // slow_start ramps a backend that comes back, or one a reload or DNS change
  // added; not those that pass their first check when lb starts.
  if (healthy) {
    bool came_back = states_[b]->ever_healthy.exchange(true);
    bool added_later = states_[b]->ramp_first_join.exchange(false);
    if (came_back || added_later)
      joined(b);
  }
  rebuild(healthy ? "a backend became healthy" : "a backend became unhealthy");
  return true;
}

void Pool::report(size_t b, Outcome outcome) {
  if (b >= backends_.size())
    return;
  BackendState& st = *states_[b];
  if (outcome == Outcome::success) {
    if (st.consecutive_failures.load(std::memory_order_relaxed) != 0)
      st.consecutive_failures.store(0, std::memory_order_relaxed);
    return;
  }
  const auto& od = config_.outlier_detection;
  uint32_t failures = st.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  // A refused connection means nothing listens there: out of rotation at once.
  // Otherwise consecutive 5xx/connect failures count toward outlier_detection.
  bool eject = outcome == Outcome::refused || (od.enabled && failures >= od.consecutive_failures);
  if (!eject)
    return;
  int64_t now = steady_ms();
  if (st.ejected_until_ms.load(std::memory_order_relaxed) > now)
    return; // already out

  std::lock_guard lock(rebuild_mutex_);
  // Workers that saw the same failure at once wait here: only the first ejects.
  if (st.ejected_until_ms.load(std::memory_order_relaxed) > now)
    return;
  // Never eject the last backend in rotation (others are not counted when only
  // fail_open keeps traffic flowing).
  size_t others = 0;
  for (size_t i = 0; i < backends_.size(); ++i) {
    if (i == b)
      continue;
    const BackendState& o = *states_[i];
    if (o.healthy && !o.drained && o.ejected_until_ms.load(std::memory_order_relaxed) <= now)
      ++others;
  }
  if (others == 0)
    return;
  int64_t base = od.enabled ? od.ejection_time.count() : 30000;
  if (outcome == Outcome::refused && !od.enabled)
    base = 5000;
  // The ejection time doubles with each ejection, up to 8x; a backend that
  // stayed in rotation for as long as the longest ejection starts over.
  int64_t ended = st.ejection_ended_ms.load(std::memory_order_relaxed);
  if (ended && now - ended >= base * max_ejection_factor)
    st.ejections.store(0, std::memory_order_relaxed);
  uint32_t n = st.ejections.fetch_add(1, std::memory_order_relaxed);
  st.ejections_total.fetch_add(1, std::memory_order_relaxed);
  int64_t factor = std::min<int64_t>(int64_t{1} << std::min<uint32_t>(n, 3), max_ejection_factor);
  st.ejected_until_ms.store(now + base * factor, std::memory_order_relaxed);
  st.consecutive_failures.store(0, std::memory_order_relaxed);
  io::log("pool %s: backend %s ejected for %lld ms (%s)", name_.c_str(), backends_[b].label.c_str(),
          static_cast<long long>(base * factor),
          outcome == Outcome::refused ? "connection refused"
                                      : "consecutive failures reached outlier_detection");
  rebuild_mutex_.unlock();
  rebuild("a backend was ejected");
  rebuild_mutex_.lock();
}

void Pool::expire_ejections() {
  int64_t now = steady_ms();
  bool any = false;
  for (size_t i = 0; i < backends_.size(); ++i) {
    int64_t until = states_[i]->ejected_until_ms.load(std::memory_order_relaxed);
    // (A worker may eject it again meanwhile: that ejection stands.)
    if (until != 0 && until <= now &&
        states_[i]->ejected_until_ms.compare_exchange_strong(until, 0, std::memory_order_relaxed)) {
      states_[i]->ejection_ended_ms.store(now, std::memory_order_relaxed);
      joined(i);
      io::log("pool %s: backend %s back in rotation after ejection", name_.c_str(),
              backends_[i].label.c_str());
      any = true;
    }
  }
  if (any)
    rebuild("an ejection ended");
}

bool Pool::set_drained(size_t b, bool drained) {
  if (b >= backends_.size())
    return false;
  if (states_[b]->drained.exchange(drained) != drained) {
    if (!drained)
      joined(b);
    rebuild(drained ? "a backend was drained" : "a backend was enabled");
  }
  return true;
}

void Pool::note_fail_open() {
  if (fail_open_logged_.load(std::memory_order_relaxed) || fail_open_logged_.exchange(true))
    return;
  io::log("pool %s: no backend in rotation: fail_open, spreading requests over all non-drained "
          "backends",
          name_.c_str());
}

void Pool::joined(size_t b) {
  if (config_.slow_start.count() > 0)
    states_[b]->joined_ms.store(steady_ms(), std::memory_order_relaxed);
}

void Pool::tick() {
  expire_ejections();
  // A backend's state is shared with the snapshots this pool replaced, whose
  // in-flight requests may still eject it: catch up with such changes here.
  {
    const Selection& s = selection();
    int64_t now = steady_ms();
    for (size_t i = 0; i < backends_.size() && !s.fail_open; ++i) {
      const BackendState& st = *states_[i];
      bool out = !st.healthy.load(std::memory_order_relaxed) ||
                 st.drained.load(std::memory_order_relaxed) ||
                 st.ejected_until_ms.load(std::memory_order_relaxed) > now;
      if (out && i < s.effective_weight.size() && s.effective_weight[i] > 0) {
        rebuild("a backend left the rotation");
        break;
      }
    }
  }
  int64_t ramp = config_.slow_start.count();
  if (ramp <= 0)
    return;
  int64_t now = steady_ms();
  bool ramping = false;
  for (size_t i = 0; i < backends_.size(); ++i) {
    int64_t joined_at = states_[i]->joined_ms.load(std::memory_order_relaxed);
    // Include one rebuild just past the end of the window, at full weight.
    if (joined_at && now - joined_at < ramp + 1000)
      ramping = true;
  }
  // Ramps move in steps of a twentieth of the window (at most 4 per second).
  int64_t step = std::max<int64_t>(250, ramp / 20);
  if (ramping && now - last_ramp_ms_.load(std::memory_order_relaxed) >= step) {
    last_ramp_ms_.store(now, std::memory_order_relaxed);
    rebuild(nullptr);
  }
}

bool Pool::set_weight(size_t b, uint32_t weight) {
  if (b >= backends_.size())
    return false;
  if (states_[b]->weight.exchange(weight) != weight)
    rebuild("a weight changed");
  return true;
}

int Pool::find_id(uint32_t id) const {
  for (size_t i = 0; i < backends_.size(); ++i)
    if (backends_[i].id == id)
      return static_cast<int>(i);
  return -1;
}

int Pool::find(const std::string& label) const {
  for (size_t i = 0; i < backends_.size(); ++i)
    if (backends_[i].label == label)
      return static_cast<int>(i);
  return -1;
}

} // namespace lb::upstream
