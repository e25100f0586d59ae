#include "lb/upstream/pool.hpp"

#include "lb/io/log.hpp"

#include <algorithm>

namespace lb::upstream {

namespace {
constexpr auto grace = std::chrono::seconds(10);  // a replaced selection lives this long
constexpr int64_t max_ejection_factor = 8;        // ejection time doubles up to 8x
}  // namespace

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             io::Clock::now().time_since_epoch())
      .count();
}

Pool::Pool(const config::Pool& config, size_t index)
    : config_(config), name_(config.name), index_(index) {
  for (uint32_t r = 0; r < config.regions.size(); ++r) {
    const auto& region = config.regions[r];
    for (const auto& b : region.backends) {
      Backend backend;
      backend.label = b.address.text();
      backend.region = region.name;
      backend.region_index = r;
      backend.endpoint = {boost::asio::ip::make_address(b.address.host), b.address.port};
      backend.weight = b.weight;
      backend.priority = region.priority;
      backends_.push_back(std::move(backend));
    }
  }
  states_ = std::make_unique<BackendState[]>(backends_.size());
  for (size_t i = 0; i < backends_.size(); ++i) {
    states_[i].weight = backends_[i].weight;
    // With active checks a backend serves only once its first check passed.
    states_[i].healthy = !config.health_check.enabled;
  }
  rebuild(nullptr);
}

Pool::~Pool() {
  delete current_.load();
  for (auto& [when, s] : retired_) delete s;
}

int Pool::pick(uint64_t tried) const {
  const Selection& s = selection();
  size_t n = s.sequence.size();
  if (n == 0) return -1;
  uint64_t start = cursor_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    uint32_t b = s.sequence[(start + i) % n];
    if (b >= 64 || !(tried & (uint64_t{1} << b))) return static_cast<int>(b);
  }
  return -1;
}

void Pool::rebuild(const char* why) {
  std::lock_guard lock(rebuild_mutex_);
  int64_t now = steady_ms();
  std::vector<BackendView> views(backends_.size());
  for (size_t i = 0; i < backends_.size(); ++i) {
    const BackendState& st = states_[i];
    views[i].weight = st.weight.load(std::memory_order_relaxed);
    views[i].region = backends_[i].region_index;
    views[i].drained = st.drained.load(std::memory_order_relaxed);
    views[i].in_rotation = st.healthy.load(std::memory_order_relaxed) && !views[i].drained &&
                           st.ejected_until_ms.load(std::memory_order_relaxed) <= now;
  }
  std::vector<RegionView> regions;
  for (const auto& r : config_.regions) regions.push_back({r.priority, r.weight});
  auto* next = new Selection(
      build_selection(views, regions, config_.overprovisioning, config_.fail_open));

  const Selection* old = current_.exchange(next, std::memory_order_acq_rel);
  auto wall = io::Clock::now();
  if (old) retired_.emplace_back(wall, old);
  std::erase_if(retired_, [&](const auto& r) {
    if (wall - r.first < grace) return false;
    delete r.second;
    return true;
  });

  if (!why) return;
  if (next->fail_open && !was_fail_open_)
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
  if (b >= backends_.size()) return false;
  if (states_[b].healthy.exchange(healthy) == healthy) return false;
  rebuild(healthy ? "a backend became healthy" : "a backend became unhealthy");
  return true;
}

void Pool::report(size_t b, Outcome outcome) {
  if (b >= backends_.size()) return;
  BackendState& st = states_[b];
  if (outcome == Outcome::success) {
    if (st.consecutive_failures.load(std::memory_order_relaxed) != 0)
      st.consecutive_failures.store(0, std::memory_order_relaxed);
    return;
  }
  const auto& od = config_.outlier_detection;
  uint32_t failures = st.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  // A refused connection means nothing listens there: out of rotation at once.
  // Otherwise consecutive 5xx/connect failures count toward outlier_detection.
  bool eject = outcome == Outcome::refused ||
               (od.enabled && failures >= od.consecutive_failures);
  if (!eject) return;
  int64_t now = steady_ms();
  if (st.ejected_until_ms.load(std::memory_order_relaxed) > now) return;  // already out

  std::lock_guard lock(rebuild_mutex_);
  // Never eject the last backend in rotation (others are not counted when only
  // fail_open keeps traffic flowing).
  size_t others = 0;
  for (size_t i = 0; i < backends_.size(); ++i) {
    if (i == b) continue;
    const BackendState& o = states_[i];
    if (o.healthy && !o.drained && o.ejected_until_ms.load(std::memory_order_relaxed) <= now) ++others;
  }
  if (others == 0) return;
  uint32_t n = st.ejections.fetch_add(1, std::memory_order_relaxed);
  int64_t base = od.enabled ? od.ejection_time.count() : 30000;
  if (outcome == Outcome::refused && !od.enabled) base = 5000;
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
    int64_t until = states_[i].ejected_until_ms.load(std::memory_order_relaxed);
    if (until != 0 && until <= now) {
      states_[i].ejected_until_ms.store(0, std::memory_order_relaxed);
      io::log("pool %s: backend %s back in rotation after ejection", name_.c_str(),
              backends_[i].label.c_str());
      any = true;
    }
  }
  if (any) rebuild("an ejection ended");
}

bool Pool::set_drained(size_t b, bool drained) {
  if (b >= backends_.size()) return false;
  if (states_[b].drained.exchange(drained) != drained)
    rebuild(drained ? "a backend was drained" : "a backend was enabled");
  return true;
}

bool Pool::set_weight(size_t b, uint32_t weight) {
  if (b >= backends_.size()) return false;
  if (states_[b].weight.exchange(weight) != weight) rebuild("a weight changed");
  return true;
}

int Pool::find(const std::string& label) const {
  for (size_t i = 0; i < backends_.size(); ++i)
    if (backends_[i].label == label) return static_cast<int>(i);
  return -1;
}

}  // namespace lb::upstream
