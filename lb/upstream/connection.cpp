#include "lb/upstream/connection.hpp"

#include <sys/socket.h>

#include <cerrno>

namespace lb::upstream {

namespace {

// An idle connection is usable when reading from it would block: no EOF, no
// reset and no stray bytes from the backend.
bool still_open(Connection& c) {
  char byte;
  ssize_t n = ::recv(c.socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

ConnectionPool::~ConnectionPool() { close_all(); }

Connection* ConnectionPool::take(uint32_t pool, uint32_t backend) {
  if (pool >= idle_.size() || backend >= idle_[pool].size()) return nullptr;
  auto& list = idle_[pool][backend];
  auto now = io::Clock::now();
  while (!list.empty()) {
    Connection* c = list.back();
    list.pop_back();
    if (now < c->retire_at && still_open(*c)) return c;
    delete c;
  }
  return nullptr;
}

void ConnectionPool::put(Connection* c) {
  if (c->pool >= idle_.size()) idle_.resize(c->pool + 1);
  auto& per_backend = idle_[c->pool];
  if (c->backend >= per_backend.size()) per_backend.resize(c->backend + 1);
  c->idle_since = io::Clock::now();
  per_backend[c->backend].push_back(c);
}

void ConnectionPool::sweep(io::Clock::time_point now,
                           const std::vector<std::chrono::milliseconds>& idle) {
  for (size_t p = 0; p < idle_.size(); ++p) {
    auto limit = p < idle.size() ? idle[p] : std::chrono::milliseconds(90000);
    for (auto& list : idle_[p]) {
      // Oldest first: the list is LIFO, so expired ones sit at the front.
      size_t expired = 0;
      while (expired < list.size() && now - list[expired]->idle_since >= limit) ++expired;
      for (size_t i = 0; i < expired; ++i) delete list[i];
      list.erase(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(expired));
      // Those past the backend's own keep-alive timeout go too.
      std::erase_if(list, [now](Connection* c) {
        if (now < c->retire_at) return false;
        delete c;
        return true;
      });
    }
  }
}

void ConnectionPool::close_all() {
  for (auto& per_backend : idle_)
    for (auto& list : per_backend) {
      for (Connection* c : list) delete c;
      list.clear();
    }
}

size_t ConnectionPool::idle_count() const {
  size_t n = 0;
  for (const auto& per_backend : idle_)
    for (const auto& list : per_backend) n += list.size();
  return n;
}

}  // namespace lb::upstream
