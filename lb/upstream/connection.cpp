#include "lb/upstream/connection.hpp"

#include <sys/socket.h>

#include <cerrno>

namespace lb::upstream {

namespace {

// A connection going idle is clean when reading from it would block: no EOF,
// no reset and no stray bytes from the backend. Its readiness says so
// without a system call when its last read drained it; otherwise one peek.
bool clean(Connection& c) {
  if (c.watch.hangup || c.watch.fd < 0)
    return false;
  if (c.ssl && SSL_has_pending(c.ssl))
    return false; // bytes nobody asked for
  if (!c.watch.in_ready)
    return true;
  char byte;
  ssize_t n = ::recv(c.watch.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    c.watch.in_ready = false;
    return true;
  }
  return false;
}

} // namespace

ConnectionPool::~ConnectionPool() { close_all(); }

Connection* ConnectionPool::take(uint32_t backend, io::Clock::time_point now, bool verify) {
  if (backend >= idle_.size())
    return nullptr;
  auto& list = idle_[backend];
  while (!list.empty()) {
    Connection* c = list.back();
    list.pop_back();
    counted(backend, -1);
    c->idle_in = nullptr;
    if (verify)
      c->watch.in_ready = true; // what clean() reads as "ask the socket"
    if (now < c->retire_at && (!verify || clean(*c)))
      return c;
    delete c;
  }
  return nullptr;
}

void ConnectionPool::put(Connection* c, io::Clock::time_point now) {
  if (!clean(*c)) {
    delete c;
    return;
  }
  if (c->backend >= idle_.size())
    idle_.resize(c->backend + 1);
  c->idle_since = now;
  c->idle_in = this;
  c->watch.handler = &ConnectionPool::on_idle_event;
  c->watch.owner = c;
  idle_[c->backend].push_back(c);
  counted(c->backend, 1);
}

void ConnectionPool::on_idle_event(void* connection, uint32_t events) {
  auto* c = static_cast<Connection*>(connection);
  // Room to write says nothing about the backend (nor does a pass through
  // the run queue, events 0, left from its last request).
  if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) || !c->idle_in)
    return;
  c->idle_in->discard(c);
}

void ConnectionPool::discard(Connection* c) {
  auto& list = idle_[c->backend];
  for (size_t i = 0; i < list.size(); ++i)
    if (list[i] == c) {
      list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
      counted(c->backend, -1);
      break;
    }
  delete c;
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
