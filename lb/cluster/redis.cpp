#include "lb/cluster/redis.hpp"

#include "lb/cluster/tls_pipe.hpp"

#include <cstdarg>

namespace lb::cluster {

namespace {
constexpr timeval redis_timeout{0, 500 * 1000};
}

redisContext* connect_redis(const config::Cluster& config, std::string& error) {
  redisContext* c = nullptr;
  if (config.tls.enabled) {
    int fd = tls_pipe(config, static_cast<int>(redis_timeout.tv_usec / 1000), error);
    if (fd < 0)
      return nullptr;
    c = redisConnectFd(fd); // (freeing the context closes the pipe's end)
  } else {
    c = redisConnectWithTimeout(config.host.c_str(), config.port, redis_timeout);
  }
  if (!c || c->err) {
    error = c ? c->errstr : "cannot allocate a Redis context";
    if (c)
      redisFree(c);
    return nullptr;
  }
  redisSetTimeout(c, redis_timeout);
  if (!config.password.empty()) {
    Reply r = command(c, "AUTH %b", config.password.data(), config.password.size());
    if (!r || r->type == REDIS_REPLY_ERROR) {
      error = "AUTH: " + failure(c, r.get());
      redisFree(c);
      return nullptr;
    }
  }
  return c;
}

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
  if (c && c->err) {
    std::string why = tls_pipe_reason(c->fd); // over TLS: what Redis's end said
    return why.empty() ? std::string(c->errstr) : std::string(c->errstr) + " (TLS: " + why + ")";
  }
  return "no answer";
}

} // namespace lb::cluster
