#include "lb/server/worker.hpp"

#include "lb/io/log.hpp"
#include "lb/proxy/client_connection.hpp"

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>

#include <malloc.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace lb::server {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {
constexpr std::chrono::milliseconds tick_interval{100};
}

Worker::Worker(unsigned id, std::shared_ptr<const proxy::Runtime> runtime, uint32_t buffer_size,
               proxy::LogWriter* log_writer)
    : io_(std::make_unique<asio::io_context>(1)),
      context_(*io_, id, std::move(runtime), buffer_size, log_writer) {
  tick_.emplace(*io_);
  queue_timer_.emplace(*io_);
  context_.poll_queue = [this] { do_poll_queue(); };
  context_.on_session_closed = [this](uint32_t listener) { on_connection_closed(listener); };
}

Worker::~Worker() {
  // Sessions still open (a forced stop) are destroyed with the handlers that
  // hold them, inside the io_context's destruction: they must still find their
  // worker's state, and must not schedule anything.
  acceptors_.clear();
  retired_acceptors_.clear();
  context_.on_session_closed = nullptr;
  context_.on_drained = nullptr;
  context_.connections.close_all();
  for (proxy::ClientConnection* s : context_.queue)
    s->release();
  context_.queue.clear();
  tick_.reset();
  queue_timer_.reset();
  io_.reset();
}

std::unique_ptr<Worker::Acceptor> Worker::bind(const proxy::ListenerRuntime& listener,
                                               const asio::ip::tcp::endpoint& endpoint,
                                               OpenCount open, std::string& error,
                                               asio::ip::tcp::endpoint& bound) {
  auto a = std::make_unique<Acceptor>(*io_, listener);
  error_code ec;
  a->socket.open(endpoint.protocol(), ec);
  if (!ec)
    a->socket.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) {
    int one = 1;
    if (::setsockopt(a->socket.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
      ec = error_code(errno, boost::system::system_category());
  }
  if (!ec && endpoint.address().is_v6())
    a->socket.set_option(asio::ip::v6_only(true), ec);
  if (!ec)
    a->socket.bind(endpoint, ec);
  // Accepted connections inherit TCP_NODELAY: no setsockopt per connection.
  if (!ec)
    a->socket.set_option(asio::ip::tcp::no_delay(true), ec);
  if (!ec)
    a->socket.listen(4096, ec);
  if (!ec)
    a->socket.non_blocking(true, ec);
  if (!ec)
    bound = a->socket.local_endpoint(ec);
  if (ec) {
    error = ec.message();
    return nullptr;
  }
  a->protocol = endpoint.protocol();
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
  acceptors_[id] = std::move(a);
  if (running_)
    do_accept(*acceptors_[id]);
}

void Worker::adopt(std::shared_ptr<const proxy::Runtime> next,
                   std::vector<std::unique_ptr<Acceptor>> fresh, std::function<void()> done) {
  auto shared_fresh = std::make_shared<std::vector<std::unique_ptr<Acceptor>>>(std::move(fresh));
  asio::post(*io_, [this, next = std::move(next), shared_fresh, done = std::move(done)] {
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
      error_code ec;
      acceptors_[id]->socket.close(ec); // its handler, if pending, runs aborted
      retired_acceptors_.emplace_back(io::Clock::now(), std::move(acceptors_[id]));
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
  if (a.paused && a.socket.is_open() &&
      (!a.limit || a.open->load(std::memory_order_relaxed) < a.limit)) {
    a.paused = false;
    do_accept(a);
  }
}

void Worker::wake(uint32_t listener) {
  asio::post(*io_, [this, listener] {
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
  for (auto& a : acceptors_) {
    if (!a)
      continue;
    do_accept(*a);
  }
  do_tick();
  io_->run();
  context_.connections.close_all();
  context_.access_log.flush();
}

// Accepting is reactor style: wait until the listening socket is readable, then
// accept what is queued (several connections per wake-up under load) with
// accept4, which also makes them non-blocking without further syscalls.
void Worker::do_accept(Acceptor& a) {
  a.socket.async_wait(
      asio::socket_base::wait_read,
      asio::bind_allocator(io::SlotAllocator<void>(a.slot),
                           [this, &a](const error_code& ec) { on_acceptable(a, ec); }));
}

void Worker::on_acceptable(Acceptor& a, const error_code& ec) {
  if (ec == asio::error::operation_aborted || !a.socket.is_open())
    return;
  for (int i = 0; i < 64; ++i) {
    if (!reserve(a)) {
      a.paused = true; // resumed when a connection of this listener ends
      return;
    }
    sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    int fd = ::accept4(a.socket.native_handle(), reinterpret_cast<sockaddr*>(&peer), &peer_len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      release(a);
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return do_accept(a);
      // Out of descriptors or memory: try again on a later tick rather than spin.
      io::log("listener %s: accept failed: %s", a.listener->config.name.c_str(),
              std::strerror(errno));
      a.paused = true;
      return;
    }
    proxy::ClientSocket socket(io_->get_executor());
    error_code assign_error;
    socket.assign(a.protocol, fd, assign_error);
    if (assign_error) {
      ::close(fd);
      release(a);
      continue;
    }
    proxy::ClientConnection::start(context_, *a.listener, std::move(socket),
                                   reinterpret_cast<const sockaddr*>(&peer));
  }
  // More may be queued: let the connections already here run first.
  asio::post(*io_, asio::bind_allocator(io::SlotAllocator<void>(a.slot),
                                        [this, &a] { on_acceptable(a, {}); }));
}

void Worker::do_tick() {
  tick_->expires_after(tick_interval);
  tick_->async_wait(asio::bind_allocator(io::SlotAllocator<void>(tick_slot_),
                                         [this](const error_code& ec) { on_tick(ec); }));
}

void Worker::on_tick(const error_code& ec) {
  if (ec)
    return;
  auto now = io::Clock::now();
  context_.timeouts.expire(now);
  if (++ticks_ % 10 == 0) {
    context_.connections.sweep(now);
    for (proxy::ClientConnection* s = context_.sessions; s; s = s->next_in_worker)
      s->trim_if_idle();
    // Buffers and exchanges a burst left unused for a second go back to the
    // system: their number follows the requests in flight.
    if (context_.buffers.trim() + context_.exchanges.trim() > 0)
      ::malloc_trim(0);
    // Acceptors paused for lack of descriptors get another chance.
    for (auto& a : acceptors_)
      if (a)
        resume_if_below_limit(*a);
    // Closed acceptors whose aborted handlers have long run.
    std::erase_if(retired_acceptors_,
                  [now](const auto& r) { return now - r.first > std::chrono::seconds(2); });
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
  queue_timer_->expires_after(std::chrono::milliseconds(5));
  queue_timer_->async_wait([this](const error_code& ec) {
    queue_polling_ = false;
    if (ec)
      return;
    std::vector<proxy::ClientConnection*> waiting = context_.queue;
    for (proxy::ClientConnection* s : waiting)
      s->add_ref();
    for (proxy::ClientConnection* s : waiting) {
      s->retry_queued();
      s->release();
    }
    if (!context_.queue.empty())
      do_poll_queue();
  });
}

void Worker::drain(std::function<void()> done) {
  asio::post(*io_, [this, done = std::move(done)]() mutable {
    context_.draining = true;
    for (auto& a : acceptors_) {
      if (!a)
        continue;
      error_code ec;
      a->socket.close(ec);
    }
    auto finished = std::make_shared<bool>(false);
    auto finish = [this, done, finished]() {
      if (*finished)
        return;
      *finished = true;
      context_.connections.close_all();
      context_.access_log.flush();
      tick_->cancel();
      done();
    };
    context_.on_drained = finish;
    // Close connections that sit between requests; the others close after
    // the response in flight.
    for (proxy::ClientConnection* s = context_.sessions; s;) {
      proxy::ClientConnection* next = s->next_in_worker;
      s->add_ref();
      s->close_if_idle();
      s->release();
      s = next;
    }
    if (context_.session_count == 0)
      finish();
  });
}

} // namespace lb::server
