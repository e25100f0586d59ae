#include "lb/cluster/acme_share.hpp"

#include "lb/cluster/redis.hpp"
#include "lb/io/log.hpp"

#include <cstdlib>
#include <random>
#include <thread>

namespace lb::cluster {

namespace {

// Waiting for every instance to answer a challenge: this long at most.
constexpr auto seen_wait = std::chrono::seconds(5);
// Without cluster.instances: this long (the instances look every 250 ms).
constexpr auto blind_wait = std::chrono::milliseconds(1500);

} // namespace

AcmeShare::AcmeShare(const config::Cluster& config) : config_(config) {
  std::random_device random;
  owner_ = std::to_string(random()) + "-" + std::to_string(random());
}

bool AcmeShare::account_key(const std::string& directory, std::string& pem, std::string& error) {
  Connection c(connect_redis(config_, error));
  if (!c)
    return false;
  std::string key = config_.key_prefix + "acme:accounts";
  // The first instance's key stays: HSETNX, then whatever is there.
  Reply set = command(c.get(), "HSETNX %b %b %b", key.data(), key.size(), directory.data(),
                      directory.size(), pem.data(), pem.size());
  Reply got = set ? command(c.get(), "HGET %b %b", key.data(), key.size(), directory.data(),
                            directory.size())
                  : Reply();
  if (!got || got->type != REDIS_REPLY_STRING) {
    error = "redis " + config_.host + ":" + std::to_string(config_.port) + ": " +
            failure(c.get(), got ? got.get() : set.get());
    return false;
  }
  pem = text(got.get());
  return true;
}

bool AcmeShare::certificate(const std::string& name, std::string& pem, std::string& error) {
  Connection c(connect_redis(config_, error));
  if (!c)
    return false;
  std::string key = config_.key_prefix + "acme:cert:" + name;
  Reply r = command(c.get(), "HGET %b pem", key.data(), key.size());
  if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)) {
    error = "redis " + config_.host + ":" + std::to_string(config_.port) + ": " +
            failure(c.get(), r.get());
    return false;
  }
  pem = text(r.get());
  return true;
}

bool AcmeShare::store_certificate(const std::string& name, const std::string& pem, int64_t expires,
                                  std::string& error) {
  Connection c(connect_redis(config_, error));
  if (!c)
    return false;
  std::string key = config_.key_prefix + "acme:cert:" + name;
  std::string at = std::to_string(expires);
  // Never a certificate that expires sooner over one that expires later (an
  // instance that ordered alone while the store was away).
  static const char* script =
      "local cur = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0') "
      "if tonumber(ARGV[2]) > cur then "
      "redis.call('HSET', KEYS[1], 'pem', ARGV[1], 'expires', ARGV[2]) return 1 end "
      "return 0";
  Reply r = command(c.get(), "EVAL %s 1 %b %b %b", script, key.data(), key.size(), pem.data(),
                    pem.size(), at.data(), at.size());
  if (!r || r->type != REDIS_REPLY_INTEGER) {
    error = "redis " + config_.host + ":" + std::to_string(config_.port) + ": " +
            failure(c.get(), r.get());
    return false;
  }
  return true;
}

int AcmeShare::lock(const std::string& name, std::chrono::seconds ttl, std::string& error) {
  Connection c(connect_redis(config_, error));
  if (!c)
    return -1;
  std::string key = config_.key_prefix + "acme:lock:" + name;
  std::string ms = std::to_string(std::max<int64_t>(1, ttl.count()) * 1000);
  // Taken when free; kept (its expiry renewed) when this instance holds it.
  static const char* script = "local v = redis.call('GET', KEYS[1]) "
                              "if v == false or v == ARGV[1] then "
                              "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
                              "return 0";
  Reply r = command(c.get(), "EVAL %s 1 %b %b %b", script, key.data(), key.size(), owner_.data(),
                    owner_.size(), ms.data(), ms.size());
  if (!r || r->type != REDIS_REPLY_INTEGER) {
    error = "redis " + config_.host + ":" + std::to_string(config_.port) + ": " +
            failure(c.get(), r.get());
    return -1;
  }
  return r->integer == 1 ? 1 : 0;
}

void AcmeShare::unlock(const std::string& name) {
  std::string error;
  Connection c(connect_redis(config_, error));
  if (!c)
    return; // it expires
  std::string key = config_.key_prefix + "acme:lock:" + name;
  static const char* script =
      "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
      "return 0";
  command(c.get(), "EVAL %s 1 %b %b", script, key.data(), key.size(), owner_.data(), owner_.size());
}

bool AcmeShare::publish_challenge(const std::string& field, const std::string& key_authorization,
                                  std::string& error) {
  Connection c(connect_redis(config_, error));
  if (!c)
    return false;
  std::string hash = config_.key_prefix + "acme:challenges";
  std::string version_key = config_.key_prefix + "acme:challenges:version";
  std::string seen_key = config_.key_prefix + "acme:seen";
  static const char* script = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
                              "redis.call('PEXPIRE', KEYS[1], 900000) "
                              "redis.call('PEXPIRE', KEYS[3], 86400000) "
                              "return redis.call('INCR', KEYS[2])";
  Reply r = command(c.get(), "EVAL %s 3 %b %b %b %b %b", script, hash.data(), hash.size(),
                    version_key.data(), version_key.size(), seen_key.data(), seen_key.size(),
                    field.data(), field.size(), key_authorization.data(), key_authorization.size());
  if (!r || r->type != REDIS_REPLY_INTEGER) {
    error = "redis " + config_.host + ":" + std::to_string(config_.port) + ": " +
            failure(c.get(), r.get());
    return false;
  }
  long long version = r->integer;
  if (config_.instances == 0) {
    std::this_thread::sleep_for(blind_wait);
    return true;
  }
  // Until cluster.instances instances answer this version (or a few seconds).
  auto deadline = std::chrono::steady_clock::now() + seen_wait;
  size_t seen = 0;
  for (;;) {
    Reply all = command(c.get(), "HGETALL %b", seen_key.data(), seen_key.size());
    seen = 0;
    if (all && all->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i + 1 < all->elements; i += 2)
        if (std::atoll(text(all->element[i + 1]).c_str()) >= version)
          ++seen;
    if (seen >= config_.instances || std::chrono::steady_clock::now() >= deadline)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (seen < config_.instances)
    io::log("acme: only %zu of %u instances answer the challenge after %llds; telling the ACME "
            "server anyway",
            seen, config_.instances,
            static_cast<long long>(
                std::chrono::duration_cast<std::chrono::seconds>(seen_wait).count()));
  return true;
}

void AcmeShare::withdraw_challenge(const std::string& field) {
  std::string error;
  Connection c(connect_redis(config_, error));
  if (!c)
    return; // the hash expires
  std::string hash = config_.key_prefix + "acme:challenges";
  std::string version_key = config_.key_prefix + "acme:challenges:version";
  static const char* script = "redis.call('HDEL', KEYS[1], ARGV[1]) "
                              "return redis.call('INCR', KEYS[2])";
  command(c.get(), "EVAL %s 2 %b %b %b", script, hash.data(), hash.size(), version_key.data(),
          version_key.size(), field.data(), field.size());
}

} // namespace lb::cluster
