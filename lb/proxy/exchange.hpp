#pragma once
// What one request needs while it is in flight, apart from its client
// connection: the parsers and their head spans, the gather lists of the
// writes, the backend connection and the retry state, lb's own answers.
//
// A client connection borrows an Exchange from its worker's ExchangePool when
// the first byte of a request arrives and gives it back when it is idle
// again, so the number of exchanges follows the requests in flight, not the
// connections: an idle keep-alive connection holds none.

#include "lb/http/parser.hpp"
#include "lb/io/buffer_pool.hpp"
#include "lb/io/pipe_pool.hpp"
#include "lb/io/timeouts.hpp"
#include "lb/proxy/local_answer.hpp"
#include "lb/proxy/outbox.hpp"
#include "lb/proxy/retry_policy.hpp"
#include "lb/upstream/balancer.hpp"
#include "lb/upstream/connection.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace lb::upstream {
class Pool;
}

namespace lb::proxy {

class ClientConnection;
class H2Call;
struct CompiledRoute;
// A step of a request, run when a socket is ready (or on the loop's next pass).
using Step = void (ClientConnection::*)();

// The per-request fields, each back to its start for every request.
struct ExchangeFields {
  upstream::Pool* pool_ = nullptr;
  // Offsets into the client connection's read buffer.
  uint32_t c_parsed_ = 0;               // bytes given to the request parser
  uint32_t head_end_ = 0;               // end of the request head
  uint32_t msg_end_ = 0;                // end of the request bytes forwarded so far
  uint32_t lingered_ = 0;               // bytes discarded while closing
  int route_ = -1;                      // the listener's route that matched (access log)
  const CompiledRoute* rule_ = nullptr; // ... itself (in the request's snapshot)
  int backend_ = -1;
  upstream::Connection* conn_ = nullptr;
  H2Call* h2_ = nullptr; // a pool that speaks HTTP/2: the stream (conn_'s watch is its readiness)
  bool conn_reused_ = false;
  bool grpc_ = false;    // content-type application/grpc*: lb's own answers are gRPC-shaped
  int grpc_status_ = -1; // the response's grpc-status (access log, metrics)
  // grpc-timeout: the response must come within this (0: no such field).
  std::chrono::milliseconds grpc_timeout_{0};
  bool grpc_deadline_armed_ = false; // the exchange timer waits for the grpc-timeout
  upstream::TriedSet tried_;
  RetryState retry_;
  bool req_done_ = false;       // the whole request was read from the client
  bool req_sent_ = false;       // ... and written to the backend
  bool body_discarded_ = false; // body bytes were sent and dropped from the buffer
  bool resp_started_ = false;   // a response byte went to the client
  bool resp_done_ = false;
  bool client_writing_ = false;
  bool backend_writing_ = false;
  bool reading_response_ = false; // the response read loop runs for this attempt
  // What waits for the backend connection: to read (or to run on the loop's
  // next pass, `backend_in_now_`), to write (or to read, when TLS must read
  // before it can write: `backend_out_on_in_`).
  Step backend_in_ = nullptr;
  Step backend_out_ = nullptr;
  bool backend_in_now_ = false;
  bool backend_out_on_in_ = false;
  bool in_response_head_ = false;   // an interim (1xx) response is being passed on
  bool backend_keep_alive_ = false; // the backend connection may serve another request
  bool answered_locally_ = false;   // lb answers this request itself (an error)
  bool upgrade_requested_ = false;  // the request asks to switch protocols
  bool tunnel_pending_ = false;     // a 101 is being passed on; the tunnel follows
  bool tunnel_ = false;
  bool dechunk_ = false;       // a chunked response to an HTTP/1.0 client
  bool queued_ = false;        // waiting in the worker's queue (circuit breaker)
  bool acquired_ = false;      // holds a slot in the backend's active count
  bool has_hash_ = false;      // hash_ is the request's ring_hash/maglev key
  bool up_done_ = false;       // the client ended its side of the tunnel
  bool down_done_ = false;     // the backend ended its side
  uint32_t request_chain_ = 0; // body chunks forwarded without waiting
  uint32_t response_chain_ = 0;
  uint64_t hash_ = 0;
  int sticky_backend_ = -1;                 // the backend the client's sticky cookie names
  http::Span authority_;                    // of an absolute-form target; replaces Host
  io::Buffer* client_tls_stage_ = nullptr;  // gathers a write for SSL_write (HTTPS listener)
  io::Buffer* backend_tls_stage_ = nullptr; // ... toward an HTTPS backend
  io::Buffer* ubuf_ = nullptr;              // response bytes from the backend
  io::Pipe* pipe_ = nullptr;                // ... or a long body's, spliced to the client
  io::Pipe* up_pipe_ =
      nullptr; // a long request body's (or a tunnel's upstream), spliced to the backend
  uint32_t u_len_ = 0;
  uint32_t u_parsed_ = 0;
  uint32_t u_sent_ = 0; // response bytes of the buffer queued to the client
  uint8_t max_forwards_len_ = 0;
  uint8_t request_id_len_ = 0;
  int status_ = 0;
  uint64_t bytes_in_ = 0;
  uint64_t bytes_out_ = 0;
  uint64_t counted_in_ = 0; // of bytes_in_/bytes_out_, already in the metrics
  uint64_t counted_out_ = 0;
  int active_backend_ = -1; // counted in its pool's active requests
  io::Clock::time_point started_{};
  io::Clock::time_point upstream_started_{};
  uint8_t retry_reason_ = 0; // why the next attempt runs (RetryReason)
  double upstream_ms_ = -1;
};

struct Exchange : ExchangeFields {
  // The fields back to their start (the parsers are left as they are: a
  // pipelined request continues where the last one ended).
  void reset_fields() { static_cast<ExchangeFields&>(*this) = ExchangeFields{}; }

  // (Ordered by use: what every request touches comes first, in few cache
  // lines; the large and rarely used arrays last.)
  Exchange* next_free_ = nullptr;
  char client_ip_[46]; // the client's address as text (INET6_ADDRSTRLEN)
  uint8_t client_ip_len_ = 0;
  // ... and in binary: an exchange that served the same address keeps its text.
  uint8_t client_family_ = 0;
  uint8_t client_addr_[16] = {};
  char request_id_[20];
  // per_try_timeout: armed when an attempt's request is all sent, disarmed by
  // its response head or the end of the attempt.
  struct TryTimer : io::Timeouts::Entry {
    ClientConnection* owner = nullptr;
  } try_timer_;
  http::Parser req_{http::Parser::Kind::request};
  http::Parser resp_{http::Parser::Kind::response};
  Outbox to_backend_;
  Outbox to_client_;
  char max_forwards_[40]; // "Max-Forwards: N\r\n" toward the backend (OPTIONS, TRACE)
  char resp_extra_[192];  // a field lb adds to the response (the sticky cookie)
  char reason_[AnswerBuffer::max_reason]; // why the last attempt failed
  AnswerBuffer answer_;                   // a response lb answers itself
  std::string acme_answer_;               // an ACME HTTP-01 challenge's answer (its body)
};

// Per-worker free-list of exchanges. Not thread-safe: one per worker thread.
class ExchangePool {
public:
  ExchangePool() = default;
  ~ExchangePool();
  ExchangePool(const ExchangePool&) = delete;
  ExchangePool& operator=(const ExchangePool&) = delete;

  // An exchange with its fields at their start and its request parser reset.
  Exchange* acquire();
  // Back to the free-list.
  void release(Exchange* x);
  // Frees the exchanges that stayed unused since the last trim (beyond a few).
  // Returns how many it freed.
  size_t trim();
  size_t in_use() const { return in_use_; }
  size_t free_count() const { return free_count_; }

private:
  static constexpr size_t reserve = 4;
  Exchange* free_ = nullptr;
  size_t free_count_ = 0;
  size_t min_free_ = 0; // the fewest free since the last trim
  size_t in_use_ = 0;
};

} // namespace lb::proxy
