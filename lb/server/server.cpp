#include "lb/server/server.hpp"

#include "lb/io/log.hpp"
#include "lb/server/worker.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <unordered_set>
#include <utility>

namespace lb::server {

namespace asio = boost::asio;

Server::Server(std::shared_ptr<const proxy::Runtime> runtime)
    : config_(runtime->config), runtime_(std::move(runtime)) {
  const std::string& path = config_->access_log.path;
  if (path == "stdout") {
    access_log_fd_ = STDOUT_FILENO;
  } else if (path == "stderr") {
    access_log_fd_ = STDERR_FILENO;
  } else if (path != "off" && !path.empty()) {
    access_log_fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (access_log_fd_ < 0)
      io::log("access_log: cannot open %s: %s (access logging is off)", path.c_str(),
              std::strerror(errno));
    else
      own_access_log_fd_ = true;
  }

  if (access_log_fd_ >= 0)
    log_writer_ = std::make_unique<proxy::LogWriter>(access_log_fd_);
  unsigned n = config_->workers;
  if (n == 0)
    n = std::max(1u, std::thread::hardware_concurrency());
  // A read buffer holds a whole request head plus room to stream the body.
  uint64_t largest_head = 0;
  for (const auto& l : config_->listeners)
    largest_head = std::max(largest_head, l.limits.max_header_bytes);
  uint32_t buffer_size =
      static_cast<uint32_t>(std::max<uint64_t>(largest_head, 16 * 1024) + 16 * 1024);
  for (unsigned i = 0; i < n; ++i)
    workers_.push_back(std::make_unique<Worker>(i, n, runtime_, buffer_size, log_writer_.get()));
  std::vector<Worker*> all;
  for (auto& w : workers_)
    all.push_back(w.get());
  for (auto& w : workers_)
    w->set_peers(all);
}

Server::~Server() {
  stop();
  workers_.clear();    // their last batches go to the writer
  log_writer_.reset(); // which writes them out
  if (own_access_log_fd_)
    ::close(access_log_fd_);
}

bool Server::bind_new(const proxy::Runtime* previous, const proxy::Runtime& next,
                      std::vector<std::vector<std::unique_ptr<Worker::Acceptor>>>& fresh,
                      std::string& error) {
  fresh.clear();
  fresh.resize(workers_.size());
  for (const auto& lr : next.listeners) {
    const config::Listener& l = lr->config;
    if (l.tls.enabled && !lr->tls) {
      error = "listener " + l.name + ": TLS: " + lr->tls_error;
      return false;
    }
    const proxy::ListenerRuntime* before = previous ? previous->listener_by_id(lr->id) : nullptr;
    if (before && before->config.listen.text() == l.listen.text())
      continue; // keeps its sockets
    asio::ip::tcp::endpoint endpoint(asio::ip::make_address(l.listen.host), l.listen.port);
    Worker::OpenCount& open = open_by_listener_[lr->id];
    if (!open)
      open = std::make_shared<std::atomic<uint32_t>>(0);
    for (size_t w = 0; w < workers_.size(); ++w) {
      std::string why;
      asio::ip::tcp::endpoint bound;
      auto a = workers_[w]->bind(*lr, endpoint, open, why, bound);
      if (!a) {
        error = "listener " + l.name + ": cannot listen on " + l.listen.text() + ": " + why;
        return false;
      }
      fresh[w].push_back(std::move(a));
      // Port 0: the first worker's socket picks a port; the others share it.
      endpoint = bound;
    }
    std::string host = endpoint.address().to_string();
    bool v6 = endpoint.address().is_v6();
    io::log("listener %s listening on %s%s%s:%u", l.name.c_str(), v6 ? "[" : "", host.c_str(),
            v6 ? "]" : "", static_cast<unsigned>(endpoint.port()));
  }
  return true;
}

bool Server::bind() {
  std::vector<std::vector<std::unique_ptr<Worker::Acceptor>>> fresh;
  std::string error;
  if (!bind_new(nullptr, *runtime_, fresh, error)) {
    io::log("%s", error.c_str());
    return false;
  }
  for (size_t w = 0; w < workers_.size(); ++w)
    for (auto& a : fresh[w])
      workers_[w]->install(std::move(a));
  return true;
}

bool Server::publish(std::shared_ptr<const proxy::Runtime> next, std::string& error) {
  std::vector<std::vector<std::unique_ptr<Worker::Acceptor>>> fresh;
  if (!bind_new(runtime().get(), *next, fresh, error))
    return false; // `fresh` closes what it bound
  std::shared_ptr<const proxy::Runtime> previous;
  {
    std::lock_guard lock(runtime_mutex_);
    previous = std::exchange(runtime_, next);
  }
  retire_dropped_backends(*previous, *next);
  // Wait (briefly) until every worker has switched, so that a request sent
  // after a reload answered is served by the new config.
  struct Pending {
    std::mutex mutex;
    std::condition_variable cv;
    size_t left;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = workers_.size();
  for (size_t w = 0; w < workers_.size(); ++w)
    workers_[w]->adopt(next, std::move(fresh[w]), [pending] {
      std::lock_guard lock(pending->mutex);
      if (--pending->left == 0)
        pending->cv.notify_all();
    });
  std::unique_lock lock(pending->mutex);
  if (!pending->cv.wait_for(lock, std::chrono::seconds(2), [&] { return pending->left == 0; }))
    io::log("reload: %zu worker(s) switch late (busy)", pending->left);
  return true;
}

void Server::retire_dropped_backends(const proxy::Runtime& previous, const proxy::Runtime& next) {
  std::unordered_set<const upstream::BackendState*> kept;
  for (const auto& pool : next.pools)
    for (size_t b = 0; b < pool->backends().size(); ++b)
      kept.insert(&pool->state(b));
  for (const auto& pool : previous.pools)
    for (size_t b = 0; b < pool->backends().size(); ++b)
      if (!kept.contains(&pool->state(b)))
        pool->state(b).retired.store(true, std::memory_order_relaxed);
}

std::vector<const proxy::WorkerMetrics*> Server::metrics() const {
  std::vector<const proxy::WorkerMetrics*> all;
  for (const auto& w : workers_)
    all.push_back(&w->metrics());
  return all;
}

void Server::start() {
  for (auto& w : workers_) {
    Worker* worker = w.get();
    threads_.emplace_back([worker] { worker->run(); });
  }
}

void Server::drain(asio::io_context& notify, std::function<void()> done) {
  auto left = std::make_shared<std::atomic<size_t>>(workers_.size());
  for (auto& w : workers_) {
    w->drain([&notify, left, done] {
      if (left->fetch_sub(1) == 1)
        asio::post(notify, done);
    });
  }
}

void Server::stop() {
  for (auto& w : workers_)
    w->stop();
  for (auto& t : threads_)
    if (t.joinable())
      t.join();
  threads_.clear();
}

} // namespace lb::server
