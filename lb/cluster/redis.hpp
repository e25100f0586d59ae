#pragma once
// The few pieces of hiredis lb's cluster code shares: a connection made with
// short timeouts (and AUTH), replies freed by RAII, and an error in words.

#include "config/config_types.hpp"

#include <hiredis/hiredis.h>

#include <memory>
#include <string>

namespace lb::cluster {

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Connection = std::unique_ptr<redisContext, ContextFree>;

// Connects to `config`'s Redis (500 ms timeouts for the connection, the TLS
// handshake with `tls`, and each command) and authenticates; null with
// `error` when it cannot.
redisContext* connect_redis(const config::Cluster& config, std::string& error);

// One command, printf-like as redisCommand (%s, %b with a length).
Reply command(redisContext* c, const char* format, ...);

// Why a command failed: the server's error, the connection's, or "no answer".
std::string failure(redisContext* c, const redisReply* r);

// A string reply's text ("" for anything else).
inline std::string text(const redisReply* r) {
  return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : std::string();
}

} // namespace lb::cluster
