#include "lb/cluster/cluster.hpp"

#include "lb/io/log.hpp"

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdarg>
#include <cstdlib>
#include <memory>

namespace lb::cluster {

namespace {

constexpr auto poll_interval = std::chrono::milliseconds(250);
constexpr timeval redis_timeout{0, 500 * 1000};

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

Reply command(redisContext* c, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  void* r = redisvCommand(c, format, ap);
  va_end(ap);
  return Reply(static_cast<redisReply*>(r));
}

std::string failure(redisContext* c, const redisReply* r) {
  if (r && r->type == REDIS_REPLY_ERROR)
    return std::string(r->str, r->len);
  if (c && c->err)
    return c->errstr;
  return "no answer";
}

} // namespace

std::string override_field(const std::string& pool, const std::string& backend) {
  return pool + " " + backend;
}

Cluster::Cluster(const config::Cluster& config, std::function<void(std::vector<Override>)> apply)
    : config_(config), apply_(std::move(apply)) {}

Cluster::~Cluster() {
  stop();
  if (poll_context_)
    redisFree(poll_context_);
}

redisContext* Cluster::connect(std::string& error) const {
  redisContext* c = redisConnectWithTimeout(config_.host.c_str(), config_.port, redis_timeout);
  if (!c || c->err) {
    error = c ? c->errstr : "cannot allocate a Redis context";
    if (c)
      redisFree(c);
    return nullptr;
  }
  redisSetTimeout(c, redis_timeout);
  if (!config_.password.empty()) {
    Reply r = command(c, "AUTH %b", config_.password.data(), config_.password.size());
    if (!r || r->type == REDIS_REPLY_ERROR) {
      error = "AUTH: " + failure(c, r.get());
      redisFree(c);
      return nullptr;
    }
  }
  return c;
}

void Cluster::link_up(bool up, const std::string& why) {
  bool was = connected_.exchange(up);
  if (up && !was && logged_down_) {
    io::log("cluster: redis %s:%u reachable again", config_.host.c_str(), config_.port);
    logged_down_ = false;
  } else if (!up && !logged_down_) {
    io::log("cluster: redis %s:%u unreachable (%s); keeping the overrides this instance has",
            config_.host.c_str(), config_.port, why.c_str());
    logged_down_ = true;
  }
}

// One look: the version, and the overrides when it changed (into `out`, with `changed`).
bool Cluster::poll(redisContext*& c, std::vector<Override>& out, bool& changed) {
  changed = false;
  std::string error;
  bool fresh = !c; // a new connection reads the set whatever the version says
  if (!c && !(c = connect(error))) {
    errors_.fetch_add(1);
    link_up(false, error);
    return false;
  }
  std::string version_key = config_.key_prefix + "overrides:version";
  Reply v = command(c, "GET %b", version_key.data(), version_key.size());
  round_trips_.fetch_add(1);
  if (!v || (v->type != REDIS_REPLY_STRING && v->type != REDIS_REPLY_NIL)) {
    errors_.fetch_add(1);
    link_up(false, failure(c, v.get()));
    redisFree(c);
    c = nullptr;
    return false;
  }
  link_up(true, "");
  int64_t version = v->type == REDIS_REPLY_NIL ? 0 : std::atoll(v->str);
  if (version == version_.load() && !fresh)
    return true;
  std::string hash_key = config_.key_prefix + "overrides";
  Reply all = command(c, "HGETALL %b", hash_key.data(), hash_key.size());
  round_trips_.fetch_add(1);
  if (!all || all->type != REDIS_REPLY_ARRAY) {
    errors_.fetch_add(1);
    link_up(false, failure(c, all.get()));
    redisFree(c);
    c = nullptr;
    return false;
  }
  // Fields "d:POOL BACKEND" (1 drained, 0 enabled) and "w:POOL BACKEND" (weight).
  std::map<std::pair<std::string, std::string>, Override> by_backend;
  for (size_t i = 0; i + 1 < all->elements; i += 2) {
    const redisReply* f = all->element[i];
    const redisReply* val = all->element[i + 1];
    if (f->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
      continue;
    std::string field(f->str, f->len);
    size_t space = field.find(' ');
    if (field.size() < 3 || field[1] != ':' || space == std::string::npos)
      continue;
    std::string pool = field.substr(2, space - 2), backend = field.substr(space + 1);
    Override& o = by_backend[{pool, backend}];
    o.pool = pool;
    o.backend = backend;
    // "VALUE@VERSION": the version that wrote it.
    std::string text(val->str, val->len);
    size_t at = text.find('@');
    long n = std::atol(text.substr(0, at).c_str());
    int64_t stamp = at == std::string::npos ? 0 : std::atoll(text.c_str() + at + 1);
    if (field[0] == 'd') {
      o.drained = n ? 1 : 0;
      o.drained_stamp = stamp;
    } else if (field[0] == 'w' && n >= 0 && n <= 1000) {
      o.weight = static_cast<int>(n);
      o.weight_stamp = stamp;
    }
  }
  out.clear();
  for (auto& [k, o] : by_backend)
    out.push_back(std::move(o));
  int64_t before = version_.exchange(version);
  went_down_.store(before > 0 && version < before);
  changed = true;
  return true;
}

bool Cluster::fetch_now(std::vector<Override>& overrides) {
  bool changed = false;
  return poll(poll_context_, overrides, changed);
}

void Cluster::start() {
  thread_ = std::thread([this] { run(); });
}

void Cluster::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

void Cluster::run() {
  for (;;) {
    std::vector<Override> overrides;
    bool changed = false;
    if (poll(poll_context_, overrides, changed) && changed)
      apply_(std::move(overrides));
    std::unique_lock lock(mutex_);
    if (wake_.wait_for(lock, poll_interval, [&] { return stopping_; }))
      return;
  }
}

std::string Cluster::publish(const Override& o) {
  std::lock_guard lock(publish_mutex_);
  std::string error;
  redisContext* c = connect(error);
  if (!c) {
    errors_.fetch_add(1);
    return "not written, nothing changed: redis " + config_.host + ":" +
           std::to_string(config_.port) + ": " + error;
  }
  std::string hash_key = config_.key_prefix + "overrides";
  std::string version_key = config_.key_prefix + "overrides:version";
  std::string field = override_field(o.pool, o.backend);
  // The new version and the fields stamped with it, in one script (atomic).
  static const std::string script =
      "local v = redis.call('INCR', KEYS[2]) "
      "for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '@' .. v) end "
      "return v";
  std::vector<std::string> args = {"EVAL", script, "2", hash_key, version_key};
  if (o.drained >= 0) {
    args.push_back("d:" + field);
    args.push_back(std::to_string(o.drained));
  }
  if (o.weight >= 0) {
    args.push_back("w:" + field);
    args.push_back(std::to_string(o.weight));
  }
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  Reply r(static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
  std::string why;
  if (!r)
    why = failure(c, nullptr) + " (the write may or may not have been applied)";
  else if (r->type != REDIS_REPLY_INTEGER)
    why = failure(c, r.get());
  round_trips_.fetch_add(1);
  redisFree(c);
  if (!why.empty()) {
    errors_.fetch_add(1);
    return (r ? "not written, nothing changed: redis " : "outcome unknown: redis ") + config_.host +
           ":" + std::to_string(config_.port) + ": " + why;
  }
  return {};
}

LinkStatus Cluster::status() const {
  return {config_.host + ":" + std::to_string(config_.port), connected_.load(), round_trips_.load(),
          errors_.load(), version_.load()};
}

} // namespace lb::cluster
