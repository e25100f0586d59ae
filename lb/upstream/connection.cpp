#include "lb/upstream/connection.hpp"

#include <sys/socket.h>

#include <cerrno>

namespace lb::upstream {

namespace {

// An idle connection is usable when reading from it would block: no EOF, no
// reset and no stray bytes from the backend.
bool still_open(Connection& c) {
  if (c.ssl && SSL_pending(c.ssl) > 0)
    return false; // decrypted bytes nobody asked for
  char byte;
  ssize_t n = ::recv(c.socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

} // namespace

ConnectionPool::~ConnectionPool() { close_all(); }

Connection* ConnectionPool::take(uint32_t backend) {
  if (backend >= idle_.size())
    return nullptr;
  auto& list = idle_[backend];
  auto now = io::Clock::now();
  while (!list.empty()) {
    Connection* c = list.back();
    list.pop_back();
    counted(backend, -1);
    if (now < c->retire_at && still_open(*c))
      return c;
    delete c;
  }
  return nullptr;
}

void ConnectionPool::put(Connection* c) {
  if (c->backend >= idle_.size())
    idle_.resize(c->backend + 1);
  c->idle_since = io::Clock::now();
  idle_[c->backend].push_back(c);
  counted(c->backend, 1);
}

void ConnectionPool::sweep(io::Clock::time_point now) {
  for (size_t id = 0; id < idle_.size(); ++id) {
    // Those idle too long, or past the backend's own keep-alive timeout. The
    // others give OpenSSL's record buffers back while they wait.
    auto closed = std::erase_if(idle_[id], [now](Connection* c) {
      if (now - c->idle_since < c->idle_timeout && now < c->retire_at) {
        if (c->ssl)
          SSL_free_buffers(c->ssl);
        return false;
      }
      delete c;
      return true;
    });
    counted(static_cast<uint32_t>(id), -static_cast<int>(closed));
  }
}

void ConnectionPool::retain(const std::vector<bool>& live) {
  for (size_t id = 0; id < idle_.size(); ++id) {
    if (id < live.size() && live[id])
      continue;
    counted(static_cast<uint32_t>(id), -static_cast<int>(idle_[id].size()));
    for (Connection* c : idle_[id])
      delete c;
    idle_[id].clear();
  }
}

void ConnectionPool::close_all() {
  for (size_t id = 0; id < idle_.size(); ++id) {
    counted(static_cast<uint32_t>(id), -static_cast<int>(idle_[id].size()));
    for (Connection* c : idle_[id])
      delete c;
    idle_[id].clear();
  }
}

size_t ConnectionPool::idle_count() const {
  size_t n = 0;
  for (const auto& list : idle_)
    n += list.size();
  return n;
}

} // namespace lb::upstream
