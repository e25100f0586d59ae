#include "lb/server/worker.hpp"

#include "lb/io/log.hpp"
#include "lb/proxy/client_connection.hpp"

#include <malloc.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace lb::server {

namespace asio = boost::asio;

namespace {
constexpr std::chrono::milliseconds tick_interval{100};
}

Worker::Worker(unsigned id, unsigned workers, std::shared_ptr<const proxy::Runtime> runtime,
               uint32_t buffer_size, proxy::LogWriter* log_writer)
    : loop_(std::make_unique<io::EventLoop>()),
      context_(*loop_, id, std::move(runtime), buffer_size, log_writer) {
  tick_.fire = [](void* w) { static_cast<Worker*>(w)->on_tick(); };
  tick_.context = this;
  queue_timer_.fire = [](void* w) { static_cast<Worker*>(w)->poll_queue(); };
  queue_timer_.context = this;
  loop_->add_timer(tick_);
  loop_->add_timer(queue_timer_);
  context_.workers = workers;
  context_.poll_queue = [this] { do_poll_queue(); };
  context_.on_session_closed = [this](uint32_t listener) { on_connection_closed(listener); };
}

Worker::~Worker() {
  // Sessions still open (a forced stop) close now, while their worker's
  // state is whole; they must not schedule anything.
  acceptors_.clear();
  context_.on_session_closed = nullptr;
  context_.on_drained = nullptr;
  for (proxy::ClientConnection* s : context_.queue)
    s->release();
  context_.queue.clear();
  each_session(&proxy::ClientConnection::close_now);
  context_.connections.close_all();
  context_.h2.close_all();
}

void Worker::each_session(void (proxy::ClientConnection::*step)()) {
  for (proxy::ClientConnection* s = context_.sessions; s;) {
    proxy::ClientConnection* next = s->next_in_worker;
    s->add_ref();
    (s->*step)();
    s->release();
    s = next;
  }
}

Worker::Acceptor::~Acceptor() {
  if (loop)
    loop->close(watch);
  else if (watch.fd >= 0)
    ::close(watch.fd);
}

std::unique_ptr<Worker::Acceptor> Worker::bind(const proxy::ListenerRuntime& listener,
                                               const asio::ip::tcp::endpoint& endpoint,
                                               OpenCount open, std::string& error,
                                               asio::ip::tcp::endpoint& bound) {
  auto a = std::make_unique<Acceptor>(listener);
  int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  a->watch.fd = fd;
  int one = 1;
  bool ok = fd >= 0;
  ok = ok && ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0;
  ok = ok && ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0;
  if (ok && endpoint.address().is_v6())
    ok = ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) == 0;
  ok = ok && ::bind(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) == 0;
  // Accepted connections inherit TCP_NODELAY: no setsockopt per connection.
  ok = ok && ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
  ok = ok && ::listen(fd, 4096) == 0;
  if (ok) {
    bound = endpoint;
    socklen_t len = static_cast<socklen_t>(bound.capacity());
    ok = ::getsockname(fd, bound.data(), &len) == 0;
    if (ok)
      bound.resize(len);
  }
  if (!ok) {
    error = std::strerror(errno);
    return nullptr;
  }
  a->open = std::move(open);
  a->limit = listener.config.limits.max_connections;
  return a;
}

void Worker::install(std::unique_ptr<Acceptor> a) {
  uint32_t id = a->listener->id;
  if (acceptors_.size() <= id)
    acceptors_.resize(id + 1);
  if (open_.size() <= id)
    open_.resize(id + 1);
  open_[id] = a->open;
  a->worker = this;
  a->watch.handler = &Worker::on_acceptor_event;
  a->watch.owner = a.get();
  a->watch.in_ready = true; // connections may be queued already
  if (!loop_->add(a->watch)) {
    io::log("listener %s: cannot watch its socket: %s", a->listener->config.name.c_str(),
            std::strerror(errno));
    return;
  }
  a->loop = loop_.get();
  acceptors_[id] = std::move(a);
  if (running_)
    loop_->schedule(acceptors_[id]->watch);
}

void Worker::adopt(std::shared_ptr<const proxy::Runtime> next,
                   std::vector<std::unique_ptr<Acceptor>> fresh, std::function<void()> done) {
  auto shared_fresh = std::make_shared<std::vector<std::unique_ptr<Acceptor>>>(std::move(fresh));
  loop_->post([this, next = std::move(next), shared_fresh, done = std::move(done)] {
    struct Done {
      const std::function<void()>& f;
      ~Done() { f(); }
    } signal_done{done};
    if (context_.draining)
      return; // not accepting anymore; sessions finish as they are
    context_.runtime = next;
    for (size_t id = 0; id < acceptors_.size(); ++id) {
      if (!acceptors_[id])
        continue;
      const proxy::ListenerRuntime* l = next->listener_by_id(static_cast<uint32_t>(id));
      bool replaced = false;
      for (const auto& a : *shared_fresh)
        replaced |= a->listener->id == id;
      if (l && !replaced) {
        Acceptor& a = *acceptors_[id];
        a.listener = l;
        size_t limit = l->config.limits.max_connections;
        if (limit != a.limit) {
          a.limit = limit;
          // The others may have paused under the old limit, or under the
          // new one before this worker counted by it.
          wake_peers(static_cast<uint32_t>(id));
        }
        resume_if_below_limit(a);
        continue;
      }
      acceptors_[id].reset(); // closes its socket
    }
    for (auto& a : *shared_fresh)
      install(std::move(a));
    // Idle connections to backends that left every pool go now.
    std::vector<bool> live;
    for (const auto& p : next->pools)
      for (const auto& b : p->backends()) {
        if (live.size() <= b.id)
          live.resize(b.id + 1);
        live[b.id] = true;
      }
    context_.connections.retain(live);
    context_.h2.retain(live);
  });
}

bool Worker::reserve(Acceptor& a) {
  uint32_t n = a.open->load(std::memory_order_relaxed);
  do {
    if (a.limit && n >= a.limit)
      return false;
  } while (!a.open->compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  return true;
}

void Worker::resume_if_below_limit(Acceptor& a) {
  if (a.paused && a.watch.fd >= 0 &&
      (!a.limit || a.open->load(std::memory_order_relaxed) < a.limit)) {
    a.paused = false;
    a.watch.in_ready = true; // edges that came while paused
    loop_->schedule(a.watch);
  }
}

void Worker::wake(uint32_t listener) {
  loop_->post([this, listener] {
    if (listener < acceptors_.size() && acceptors_[listener])
      resume_if_below_limit(*acceptors_[listener]);
  });
}

void Worker::wake_peers(uint32_t listener) {
  for (Worker* peer : peers_)
    if (peer != this)
      peer->wake(listener);
}

void Worker::release(Acceptor& a) {
  uint32_t before = a.open->fetch_sub(1, std::memory_order_relaxed);
  // From the limit to below it: a worker that saw the listener full meanwhile
  // (even only this worker's reservation for an accept that found nothing)
  // has paused.
  if (a.limit && before == a.limit)
    wake_peers(a.listener->id);
}

// max_connections counts every worker's connections: a worker pauses its
// acceptor when the listener is full, whichever worker holds them, and the
// worker whose connection ends wakes the others (they may be paused) when
// that brings the listener below its limit. A paused worker's socket still
// queues what the kernel hands it; that waits, as on a full single acceptor.
void Worker::on_connection_closed(uint32_t listener) {
  if (listener < acceptors_.size() && acceptors_[listener]) {
    Acceptor& a = *acceptors_[listener];
    release(a);
    resume_if_below_limit(a);
  } else if (listener < open_.size() && open_[listener]) {
    open_[listener]->fetch_sub(1, std::memory_order_relaxed); // a listener that went
  }
}

void Worker::run() {
  running_ = true;
  for (auto& a : acceptors_)
    if (a)
      loop_->schedule(a->watch);
  do_tick();
  loop_->run();
  context_.connections.close_all();
  context_.h2.close_all();
  context_.access_log.flush();
}

void Worker::on_acceptor_event(void* acceptor, uint32_t) {
  auto* a = static_cast<Acceptor*>(acceptor);
  if (!a->paused && a->watch.in_ready)
    a->worker->on_acceptable(*a);
}

// Accepting: when the listening socket has an edge, accept what is queued
// (several connections per edge under load) with accept4, which also makes
// them non-blocking without further system calls, until it says EAGAIN.
void Worker::on_acceptable(Acceptor& a) {
  if (a.watch.fd < 0)
    return;
  for (int i = 0; i < 64; ++i) {
    if (!reserve(a)) {
      a.paused = true; // resumed when a connection of this listener ends
      return;
    }
    sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    int fd = ::accept4(a.watch.fd, reinterpret_cast<sockaddr*>(&peer), &peer_len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      release(a);
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        a.watch.drained();
        return;
      }
      // Out of descriptors or memory: try again on a later tick rather than spin.
      io::log("listener %s: accept failed: %s", a.listener->config.name.c_str(),
              std::strerror(errno));
      a.paused = true;
      return;
    }
    proxy::ClientConnection::start(context_, *a.listener, fd,
                                   reinterpret_cast<const sockaddr*>(&peer));
    if (a.watch.fd < 0)
      return; // (a connection's start cannot close its acceptor; kept safe anyway)
  }
  // More may be queued: let the connections already here run first.
  loop_->schedule(a.watch);
}

void Worker::do_tick() { tick_.when = loop_->now() + tick_interval; }

void Worker::on_tick() {
  auto now = loop_->now();
  context_.timeouts.expire(now);
  if (++ticks_ % 10 == 0) {
    context_.connections.sweep(now);
    context_.h2.sweep(now);
    for (proxy::ClientConnection* s = context_.sessions; s; s = s->next_in_worker)
      s->trim_if_idle();
    // Buffers and exchanges a burst left unused for a second go back to the
    // system: their number follows the requests in flight.
    if (context_.buffers.trim() + context_.exchanges.trim() > 0)
      ::malloc_trim(0);
    context_.pipes.trim(); // and pipes (splice), their descriptors
    // Acceptors paused for lack of descriptors get another chance.
    for (auto& a : acceptors_)
      if (a)
        resume_if_below_limit(*a);
  }
  context_.access_log.flush();
  if (context_.draining && context_.session_count == 0)
    return;
  do_tick();
}

// Requests queued behind max_connections_per_backend try again every few
// milliseconds, oldest first, while any is waiting.
void Worker::do_poll_queue() {
  if (queue_polling_)
    return;
  queue_polling_ = true;
  queue_timer_.when = loop_->now() + std::chrono::milliseconds(5);
}

void Worker::poll_queue() {
  queue_polling_ = false;
  std::vector<proxy::ClientConnection*> waiting = context_.queue;
  for (proxy::ClientConnection* s : waiting)
    s->add_ref();
  for (proxy::ClientConnection* s : waiting) {
    s->retry_queued();
    s->release();
  }
  if (!context_.queue.empty())
    do_poll_queue();
}

void Worker::drain(std::function<void()> done) {
  loop_->post([this, done = std::move(done)]() mutable {
    context_.draining = true;
    for (auto& a : acceptors_)
      if (a)
        loop_->close(a->watch);
    auto finished = std::make_shared<bool>(false);
    auto finish = [this, done, finished]() {
      if (*finished)
        return;
      *finished = true;
      context_.connections.close_all();
      context_.h2.close_all();
      context_.access_log.flush();
      tick_.when = io::Clock::time_point::max();
      done();
    };
    context_.on_drained = finish;
    // Close connections that sit between requests; the others close after
    // the response in flight.
    each_session(&proxy::ClientConnection::close_if_idle);
    if (context_.session_count == 0)
      finish();
  });
}

} // namespace lb::server
