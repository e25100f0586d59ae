#include "lb/cluster/cluster.hpp"

#include "lb/cluster/redis.hpp"
#include "lb/io/acme_challenges.hpp"
#include "lb/io/log.hpp"
#include "lb/proxy/rate_limit.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>

namespace lb::cluster {

namespace {

constexpr auto poll_interval = std::chrono::milliseconds(250);
constexpr auto exchange_interval = std::chrono::milliseconds(100);
constexpr auto reconnect_interval = std::chrono::milliseconds(500);
// A peer whose counts have not moved for this long has stopped: its field is deleted.
constexpr auto forget_after = std::chrono::seconds(10);
constexpr size_t periods_kept = 4;
proxy::RateLimiter::Mode mode_for(const proxy::RateLimiter& l, bool up) {
  if (up)
    return proxy::RateLimiter::Mode::shared;
  return l.config().on_redis_error == config::RateLimit::OnRedisError::open
             ? proxy::RateLimiter::Mode::open
             : proxy::RateLimiter::Mode::local;
}

} // namespace

std::string override_field(const std::string& pool, const std::string& backend) {
  return pool + " " + backend;
}

Cluster::Cluster(const config::Cluster& config, std::function<void(std::vector<Override>)> apply)
    : config_(config), apply_(std::move(apply)) {
  std::random_device random;
  char id[40];
  std::snprintf(id, sizeof id, "%08x%08x", random(), random());
  instance_ = id;
}

Cluster::~Cluster() {
  stop();
  if (poll_context_)
    redisFree(poll_context_);
}

redisContext* Cluster::connect(std::string& error) const { return connect_redis(config_, error); }

void Cluster::link_up(bool up, const std::string& why) {
  bool was = connected_.exchange(up);
  if (up && !was && logged_down_) {
    io::log("cluster: redis %s:%u reachable again", config_.host.c_str(), config_.port);
    logged_down_ = false;
  } else if (!up && !logged_down_) {
    io::log("cluster: redis %s:%u unreachable (%s); keeping the overrides this instance has%s",
            config_.host.c_str(), config_.port, why.c_str(),
            thread_limits_.empty() ? ""
                                   : "; rate limits with scope: cluster fall back "
                                     "(on_redis_error) until it is back");
    logged_down_ = true;
  }
}

redisContext* Cluster::link() {
  if (poll_context_)
    return poll_context_;
  auto now = std::chrono::steady_clock::now();
  if (now < next_connect_)
    return nullptr; // Redis was just found down: not every 100 ms
  std::string error;
  redisContext* c = connect(error);
  if (!c) {
    next_connect_ = now + reconnect_interval;
    errors_.fetch_add(1);
    link_up(false, error);
    return nullptr;
  }
  poll_context_ = c;
  fresh_ = true;   // poll() reads the overrides and challenges whole again
  seeded_ = false; // exchange_counts() reads the tier's seed again
  for (auto& [id, peer] : peers_)
    peer.changed = now; // (this instance was away: not they)
  return c;
}

// The tier's hash seed for shared rate limits: the first instance sets it.
bool Cluster::read_seed(redisContext* c) {
  std::string seed_key = config_.key_prefix + "ratelimit:seed";
  std::random_device random;
  std::string mine = std::to_string((uint64_t(random()) << 32 | random()) | 1);
  Reply set =
      command(c, "SET %b %b NX", seed_key.data(), seed_key.size(), mine.data(), mine.size());
  if (!set || set->type == REDIS_REPLY_ERROR) {
    drop(failure(c, set.get()));
    return false;
  }
  Reply got = command(c, "GET %b", seed_key.data(), seed_key.size());
  round_trips_.fetch_add(2);
  if (!got || got->type != REDIS_REPLY_STRING) {
    drop(failure(c, got.get()));
    return false;
  }
  uint64_t seed = std::strtoull(got->str, nullptr, 10);
  seed = seed ? seed : 1;
  if (seed_.exchange(seed) != seed)
    periods_.clear(); // hashed with the seed before: meaningless now
  seeded_ = true;
  return true;
}

void Cluster::drop(const std::string& why) {
  errors_.fetch_add(1);
  link_up(false, why);
  if (poll_context_)
    redisFree(poll_context_);
  poll_context_ = nullptr;
  next_connect_ = std::chrono::steady_clock::now() + reconnect_interval;
}

// One look: the version, and the overrides when it changed (into `out`, with `changed`).
bool Cluster::poll(std::vector<Override>& out, bool& changed) {
  changed = false;
  redisContext* c = link();
  if (!c)
    return false;
  bool fresh = std::exchange(fresh_, false); // a new connection: read whole, whatever the versions
  // The overrides' version and the ACME challenges' in one command.
  std::string version_key = config_.key_prefix + "overrides:version";
  std::string challenges_key = config_.key_prefix + "acme:challenges:version";
  std::string seed_key = config_.key_prefix + "ratelimit:seed";
  Reply v = command(c, "MGET %b %b %b", version_key.data(), version_key.size(),
                    challenges_key.data(), challenges_key.size(), seed_key.data(), seed_key.size());
  round_trips_.fetch_add(1);
  if (!v || v->type != REDIS_REPLY_ARRAY || v->elements != 3) {
    drop(failure(c, v.get()));
    return false;
  }
  link_up(true, "");
  // The seed gone (Redis emptied) or changed: the next exchange reads it again.
  if (std::strtoull(text(v->element[2]).c_str(), nullptr, 10) != seed_.load())
    seeded_ = false;
  int64_t challenges = std::atoll(text(v->element[1]).c_str());
  if (challenges != challenges_version_ || fresh) {
    if (!take_challenges(c, challenges))
      return false;
  }
  int64_t version = std::atoll(text(v->element[0]).c_str()); // (none: 0)
  if (version == version_.load() && !fresh)
    return true;
  std::string hash_key = config_.key_prefix + "overrides";
  Reply all = command(c, "HGETALL %b", hash_key.data(), hash_key.size());
  round_trips_.fetch_add(1);
  if (!all || all->type != REDIS_REPLY_ARRAY) {
    drop(failure(c, all.get()));
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

// The tier's ACME challenges (another instance's order may be validated
// through this one), then "this instance answers version V" in acme:seen.
bool Cluster::take_challenges(redisContext* c, int64_t version) {
  std::string hash = config_.key_prefix + "acme:challenges";
  Reply all = command(c, "HGETALL %b", hash.data(), hash.size());
  round_trips_.fetch_add(1);
  if (!all || all->type != REDIS_REPLY_ARRAY) {
    drop(failure(c, all.get()));
    return false;
  }
  std::map<std::string, std::string> now;
  for (size_t i = 0; i + 1 < all->elements; i += 2)
    now[text(all->element[i])] = text(all->element[i + 1]);
  io::AcmeChallenges& table = io::AcmeChallenges::instance();
  for (const auto& [field, value] : challenges_)
    if (!now.count(field)) {
      if (field.starts_with("http "))
        table.remove_http(field.substr(5));
      else if (field.starts_with("alpn "))
        table.remove_alpn(field.substr(5));
    }
  for (const auto& [field, value] : now) {
    auto it = challenges_.find(field);
    if (it != challenges_.end() && it->second == value)
      continue;
    if (field.starts_with("http "))
      table.put_http(field.substr(5), value);
    else if (field.starts_with("alpn "))
      if (std::string why = table.put_alpn_authorization(field.substr(5), value); !why.empty())
        io::log("cluster: acme challenge for %s: %s", field.c_str() + 5, why.c_str());
  }
  challenges_ = std::move(now);
  challenges_version_ = version;
  if (version > 0) {
    std::string seen = config_.key_prefix + "acme:seen";
    std::string v = std::to_string(version);
    Reply r = command(c, "HSET %b %b %b", seen.data(), seen.size(), instance_.data(),
                      instance_.size(), v.data(), v.size());
    round_trips_.fetch_add(1);
    if (!r || r->type == REDIS_REPLY_ERROR) {
      drop(failure(c, r.get()));
      return false;
    }
  }
  return true;
}

bool Cluster::fetch_now(std::vector<Override>& overrides) {
  bool changed = false;
  return poll(overrides, changed);
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
  auto next_poll = std::chrono::steady_clock::now();
  auto next_exchange = next_poll;
  for (;;) {
    auto now = std::chrono::steady_clock::now();
    if (now >= next_poll) {
      std::vector<Override> overrides;
      bool changed = false;
      if (poll(overrides, changed) && changed)
        apply_(std::move(overrides));
      next_poll = now + poll_interval;
    }
    {
      std::lock_guard lock(mutex_);
      if (limits_changed_) {
        thread_limits_ = limits_;
        limits_changed_ = false;
      }
    }
    auto wake = next_poll;
    if (!thread_limits_.empty()) {
      if (now >= next_exchange) {
        exchange_counts();
        next_exchange = now + exchange_interval;
      }
      wake = std::min(wake, next_exchange);
    }
    std::unique_lock lock(mutex_);
    if (wake_.wait_until(lock, wake, [&] { return stopping_ || limits_changed_; }) && stopping_)
      return;
  }
}

void Cluster::set_limits(std::vector<SharedLimit> limits) {
  {
    std::lock_guard lock(mutex_);
    limits_ = limits;
    limits_changed_ = true;
  }
  wake_.notify_all();
  bool up = connected_.load();
  uint64_t seed = seed_.load();
  for (const auto& l : limits) {
    if (seed)
      l.limiter->set_seed(seed);
    l.limiter->set_mode(mode_for(*l.limiter, up));
  }
}

void Cluster::set_modes() {
  bool up = connected_.load();
  uint64_t seed = seed_.load();
  for (const auto& l : thread_limits_) {
    if (seed)
      l.limiter->set_seed(seed);
    l.limiter->set_mode(mode_for(*l.limiter, up));
  }
}

// Every 100 ms: this instance's counts out, the others' in, in one round trip.
void Cluster::exchange_counts() {
  redisContext* c = link();
  if (c && !seeded_ && read_seed(c))
    set_modes(); // a new seed starts the buckets afresh, before anything is drained
  c = poll_context_;
  // What passed here since the last exchange: a new period.
  ++sequence_;
  std::string period;
  char line[64];
  for (const auto& l : thread_limits_)
    l.limiter->drain_counts([&](uint64_t key, uint32_t n) {
      int len = std::snprintf(line, sizeof line, "%llu %llx %u ",
                              static_cast<unsigned long long>(sequence_),
                              static_cast<unsigned long long>(key), n);
      period.append(line, static_cast<size_t>(len));
      period += l.id;
      period += '\n';
    });
  periods_.push_back(std::move(period));
  if (periods_.size() > periods_kept)
    periods_.erase(periods_.begin());
  if (!c) {
    set_modes();
    return;
  }
  // "lb1 SEQUENCE SEED": a peer that hashes with another seed is not read.
  std::string blob = "lb1 " + std::to_string(sequence_) + " " + std::to_string(seed_.load()) + "\n";
  for (const auto& p : periods_)
    blob += p;
  std::string key = config_.key_prefix + "ratelimit";
  auto now = std::chrono::steady_clock::now();
  std::vector<std::string> gone; // instances that stopped writing: their fields go
  for (auto it = peers_.begin(); it != peers_.end();)
    if (now - it->second.changed > forget_after) {
      gone.push_back(it->first);
      it = peers_.erase(it);
    } else {
      ++it;
    }
  // HSET, HDEL of the gone, PEXPIRE now and then, HGETALL last.
  unsigned commands = 0;
  bool queued = true;
  auto queue = [&](int rc) {
    queued = queued && rc == REDIS_OK;
    ++commands;
  };
  queue(redisAppendCommand(c, "HSET %b %b %b", key.data(), key.size(), instance_.data(),
                           instance_.size(), blob.data(), blob.size()));
  for (const auto& g : gone)
    queue(redisAppendCommand(c, "HDEL %b %b", key.data(), key.size(), g.data(), g.size()));
  if (exchanges_++ % 10 == 0) // the counts go a minute after every instance has stopped
    queue(redisAppendCommand(c, "PEXPIRE %b 60000", key.data(), key.size()));
  queue(redisAppendCommand(c, "HGETALL %b", key.data(), key.size()));
  if (!queued) {
    drop("cannot queue a command");
    set_modes();
    return;
  }
  round_trips_.fetch_add(1);
  std::vector<Reply> replies;
  for (unsigned i = 0; i < commands; ++i) {
    void* r = nullptr;
    if (redisGetReply(c, &r) != REDIS_OK) {
      drop(failure(c, nullptr));
      set_modes();
      return;
    }
    replies.emplace_back(static_cast<redisReply*>(r));
  }
  const redisReply* all = replies.back().get();
  if (replies[0]->type == REDIS_REPLY_ERROR || all->type != REDIS_REPLY_ARRAY) {
    drop(failure(c, replies[0]->type == REDIS_REPLY_ERROR ? replies[0].get() : all));
    set_modes();
    return;
  }
  link_up(true, "");
  set_modes();
  int64_t now_us = proxy::steady_us();
  for (size_t i = 0; i + 1 < all->elements; i += 2) {
    const redisReply* f = all->element[i];
    const redisReply* v = all->element[i + 1];
    if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
      continue;
    std::string_view field(f->str, f->len), text(v->str, v->len);
    if (field == instance_ || !text.starts_with("lb1 "))
      continue;
    char* end = nullptr;
    uint64_t seq = std::strtoull(text.data() + 4, &end, 10);
    uint64_t seed = std::strtoull(end, nullptr, 10);
    auto [it, fresh] = peers_.try_emplace(std::string(field));
    Peer& peer = it->second;
    if (fresh || seq != peer.seen) {
      peer.seen = seq;
      peer.changed = now; // alive
    }
    // Nothing new (a sequence that went back is Redis restored from older
    // data: those periods were added already), or hashed with another seed
    // (it reads the tier's seed again soon).
    if ((!fresh && seq <= peer.applied) || seed != seed_.load())
      continue;
    size_t pos = text.find('\n');
    while (pos != std::string_view::npos && pos + 1 < text.size()) {
      size_t end = text.find('\n', pos + 1);
      std::string_view l =
          text.substr(pos + 1, end == std::string_view::npos ? end : end - pos - 1);
      pos = end;
      unsigned long long pseq = 0, hash = 0;
      unsigned n = 0;
      int used = 0;
      std::string entry(l);
      if (std::sscanf(entry.c_str(), "%llu %llx %u %n", &pseq, &hash, &n, &used) < 3 || used <= 0)
        continue;
      if (pseq <= peer.applied || n == 0)
        continue;
      std::string_view id = l.substr(static_cast<size_t>(used));
      for (const auto& lim : thread_limits_)
        if (lim.id == id) {
          lim.limiter->add(hash, n, now_us);
          break;
        }
    }
    peer.applied = seq;
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
