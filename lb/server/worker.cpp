#include "lb/server/worker.hpp"

#include "lb/io/log.hpp"
#include "lb/proxy/session.hpp"

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>

#include <sys/socket.h>

namespace lb::server {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {
constexpr std::chrono::milliseconds tick_interval{100};
}

Worker::Worker(unsigned id, std::shared_ptr<const proxy::Runtime> runtime, uint32_t buffer_size,
               int access_log_fd)
    : io_(std::make_unique<asio::io_context>(1)),
      context_(*io_, id, std::move(runtime), buffer_size, access_log_fd) {
  tick_.emplace(*io_);
  context_.connections_per_listener.assign(context_.runtime->listeners.size(), 0);
  context_.on_session_closed = [this](size_t listener) {
    if (listener < acceptors_.size() && acceptors_[listener]) {
      Acceptor& a = *acceptors_[listener];
      if (a.paused && a.socket.is_open() &&
          context_.connections_per_listener[listener] < a.limit) {
        a.paused = false;
        do_accept(a);
      }
    }
  };
}

Worker::~Worker() {
  // Sessions still open (a forced stop) are destroyed with the handlers that
  // hold them, inside the io_context's destruction: they must still find their
  // worker's state, and must not schedule anything.
  acceptors_.clear();
  context_.on_session_closed = nullptr;
  context_.on_drained = nullptr;
  context_.connections.close_all();
  tick_.reset();
  io_.reset();
}

bool Worker::bind(size_t index, const asio::ip::tcp::endpoint& endpoint, std::string& error,
                  asio::ip::tcp::endpoint& bound) {
  if (acceptors_.size() <= index) acceptors_.resize(index + 1);
  auto a = std::make_unique<Acceptor>(*io_, *context_.runtime->listeners[index]);
  error_code ec;
  a->socket.open(endpoint.protocol(), ec);
  if (!ec) a->socket.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) {
    int one = 1;
    if (::setsockopt(a->socket.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
      ec = error_code(errno, boost::system::system_category());
  }
  if (!ec && endpoint.address().is_v6()) a->socket.set_option(asio::ip::v6_only(true), ec);
  if (!ec) a->socket.bind(endpoint, ec);
  if (!ec) a->socket.listen(4096, ec);
  if (!ec) a->socket.non_blocking(true, ec);
  if (!ec) bound = a->socket.local_endpoint(ec);
  if (ec) {
    error = ec.message();
    return false;
  }
  acceptors_[index] = std::move(a);
  return true;
}

void Worker::run() {
  for (auto& a : acceptors_) {
    if (!a) continue;
    do_accept(*a);
  }
  do_tick();
  io_->run();
  context_.connections.close_all();
  context_.access_log.flush();
}

void Worker::do_accept(Acceptor& a) {
  a.socket.async_accept(asio::bind_allocator(
      io::SlotAllocator<void>(a.slot),
      [this, &a](const error_code& ec, asio::ip::tcp::socket socket) {
        on_accept(a, ec, std::move(socket));
      }));
}

void Worker::on_accept(Acceptor& a, const error_code& ec, asio::ip::tcp::socket socket) {
  if (ec == asio::error::operation_aborted || !a.socket.is_open()) return;
  if (!ec) {
    proxy::Session::start(context_, a.listener, std::move(socket));
  } else if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
    // Out of file descriptors: try again on the next tick rather than spin.
    io::log("listener %s: accept failed: %s", a.listener.config.name.c_str(),
            ec.message().c_str());
    a.paused = true;
    return;
  }
  if (a.limit && context_.connections_per_listener[a.listener.index] >= a.limit) {
    a.paused = true;
    return;
  }
  do_accept(a);
}

void Worker::do_tick() {
  tick_->expires_after(tick_interval);
  tick_->async_wait(asio::bind_allocator(io::SlotAllocator<void>(tick_slot_),
                                        [this](const error_code& ec) { on_tick(ec); }));
}

void Worker::on_tick(const error_code& ec) {
  if (ec) return;
  auto now = io::Clock::now();
  context_.timeouts.expire(now);
  if (++ticks_ % 10 == 0) {
    std::vector<std::chrono::milliseconds> idle;
    for (const auto& p : context_.runtime->pools) idle.push_back(p->config().timeouts.idle);
    context_.connections.sweep(now, idle);
    // Acceptors paused for lack of descriptors get another chance.
    for (auto& a : acceptors_)
      if (a && a->paused && a->socket.is_open() &&
          (!a->limit || context_.connections_per_listener[a->listener.index] < a->limit)) {
        a->paused = false;
        do_accept(*a);
      }
  }
  context_.access_log.flush();
  if (context_.draining && context_.session_count == 0) return;
  do_tick();
}

void Worker::drain(std::function<void()> done) {
  asio::post(*io_, [this, done = std::move(done)]() mutable {
    context_.draining = true;
    for (auto& a : acceptors_) {
      if (!a) continue;
      error_code ec;
      a->socket.close(ec);
    }
    auto finished = std::make_shared<bool>(false);
    auto finish = [this, done, finished]() {
      if (*finished) return;
      *finished = true;
      context_.connections.close_all();
      context_.access_log.flush();
      tick_->cancel();
      done();
    };
    context_.on_drained = finish;
    // Close connections that sit between requests; the others close after
    // the response in flight.
    for (proxy::Session* s = context_.sessions; s;) {
      proxy::Session* next = s->next_in_worker;
      s->add_ref();
      s->close_if_idle();
      s->release();
      s = next;
    }
    if (context_.session_count == 0) finish();
  });
}

}  // namespace lb::server
