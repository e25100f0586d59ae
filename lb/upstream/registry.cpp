#include "lb/upstream/registry.hpp"

#include "lb/io/log.hpp"

namespace lb::upstream {

uint32_t Registry::id_of(std::unordered_map<std::string, uint32_t>& ids, const std::string& name) {
  std::lock_guard lock(mutex_);
  auto [it, added] = ids.try_emplace(name, static_cast<uint32_t>(ids.size()));
  return it->second;
}

Registry::Entry Registry::backend(const std::string& pool, const std::string& label) {
  std::lock_guard lock(mutex_);
  std::string key = pool;
  key += '\0';
  key += label;
  auto [it, added] = backends_.try_emplace(key, Known{static_cast<uint32_t>(backends_.size()), {}});
  if (added && it->second.id >= max_backend_ids && !overflow_logged_) {
    overflow_logged_ = true;
    io::log("more than %u distinct backends since start (DNS churn?): the per-backend metrics of "
            "new ones are counted together until a restart",
            static_cast<unsigned>(max_backend_ids));
  }
  Entry e;
  e.id = it->second.id;
  e.state = it->second.state.lock();
  if (!e.state || e.state->retired.load(std::memory_order_relaxed)) {
    e.state = std::make_shared<BackendState>();
    it->second.state = e.state;
    e.created = true;
  }
  return e;
}

} // namespace lb::upstream
