#pragma once
// HTTP/2 to backends (pools with `protocol: h2` or `h2c`), with libnghttp2.
//
// Each worker keeps a few connections per backend and multiplexes requests
// over them as streams, up to the backend's SETTINGS_MAX_CONCURRENT_STREAMS
// per connection (another connection opens beyond it). A connection that got
// GOAWAY takes no new stream and closes when its streams are done; streams
// the backend did not process (above GOAWAY's last stream, or reset with
// REFUSED_STREAM) say so, and go to another backend whatever their method.
//
// A request's exchange sees its stream as it sees an HTTP/1.1 backend
// connection: it writes the request lb built (the head, then the body framed
// by Content-Length or chunked), and reads the response as HTTP/1.1: the
// status line and fields, the body (chunked when no Content-Length came),
// the trailers in the last chunk (where grpc-status lives). So the exchange's
// steps, timers, retries, metrics and logs serve both protocols. The stream's
// readiness is a watch with no socket (the exchange's): made ready and
// scheduled on the loop when bytes come, room opens, the connection is up or
// anything fails.
//
// Flow control ties both sides: a stream's receive window opens as the
// exchange takes its bytes; the request body waits (at most 64 KiB per
// stream) for the backend's window.

#include "lb/http/chunked.hpp"
#include "lb/io/event_loop.hpp"
#include "lb/io/tls.hpp"
#include "lb/upstream/pool.hpp"

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lb::proxy {

class H2Connection;

// One request's stream (see the file comment).
class H2Call {
public:
  // The connection is not up yet (connecting, TLS, ALPN).
  bool pending() const;
  // The connection failed before it was up: the connect's errno, and for TLS
  // (or a backend that does not speak h2) a reason.
  int error() const { return error_; }
  const std::string& failure() const { return failure_; }
  // The connection served streams before this one.
  bool reused() const { return reused_; }
  // The backend refused the stream before processing it (REFUSED_STREAM, or
  // above the last stream of its GOAWAY): safe to send anywhere again.
  bool refused() const { return refused_; }
  // The response's grpc-status (trailers, or a trailers-only head); -1: none.
  int grpc_status() const { return grpc_status_; }

  // Takes bytes of the HTTP/1.1 request. Returns how many (> 0); -1 with
  // EAGAIN when 64 KiB of body wait already (the watch's out_ready comes
  // back with room), E2BIG for a head of more than 128 fields, or another
  // errno when the stream or connection failed.
  ssize_t send(const char* p, size_t n);
  // The HTTP/1.1 response's bytes: > 0; -1 with EAGAIN (none yet); 0 after
  // the response ended, or when the connection closed before it did; -1
  // with ECONNRESET when the stream or connection was reset.
  ssize_t recv(char* p, size_t n);

private:
  friend class H2Connection;
  friend class H2Client;
  void wake(bool in, bool out);
  bool submit_head();
  void take_body(const char* p, size_t n);
  void head_done(bool end_stream);
  void trailers_done();
  void ended();
  void fail(bool reset);
  void clear();
  static ssize_t read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                           nghttp2_data_source* source, void*);

  H2Connection* conn_ = nullptr; // until the stream or its connection ends
  io::Watch* watch_ = nullptr;   // the exchange's
  io::EventLoop* loop_ = nullptr;
  H2Call* prev_ = nullptr; // the connection's calls
  H2Call* next_ = nullptr;
  int32_t id_ = -1;
  int error_ = 0;
  std::string failure_;
  // The request: its head as lb wrote it, then its body waiting for DATA.
  std::string head_;
  std::string body_;
  size_t body_off_ = 0;
  std::string req_trailers_; // a chunked request's trailer section (dropped)
  http::ChunkDecoder chunks_;
  uint64_t body_left_ = 0; // Content-Length: bytes still to come
  enum class Body : uint8_t { none, length, chunked } body_kind_ = Body::none;
  bool head_sent_ = false;
  bool body_done_ = false;
  bool deferred_ = false;   // nghttp2 waits for body bytes
  bool send_waits_ = false; // the exchange waits for room
  // The response as HTTP/1.1 bytes the exchange has not read yet.
  std::string in_;
  size_t in_off_ = 0;
  std::string fields_;      // a head's fields as they come
  uint64_t unconsumed_ = 0; // DATA bytes received, not yet taken by the exchange
  int status_ = 0;
  int grpc_status_ = -1;
  bool has_length_ = false;
  bool final_head_ = false; // the final (non-1xx) head is in
  bool chunked_ = false;    // the body goes to the exchange chunked
  bool ended_ = false;      // the whole response is in
  bool reset_ = false;
  bool eof_ = false; // the connection closed before the response ended
  bool refused_ = false;
  bool reused_ = false;
  bool tls_scheme_ = false;    // :scheme https (h2) or http (h2c)
  bool stream_closed_ = false; // nghttp2 closed the stream (both sides ended, or reset)
  bool head_request_ = false;  // a HEAD: no body follows its response head
};

// A worker's HTTP/2 connections to backends. Not thread-safe: one per worker.
class H2Client {
public:
  explicit H2Client(io::EventLoop& loop) : loop_(loop) {}
  ~H2Client();
  H2Client(const H2Client&) = delete;
  H2Client& operator=(const H2Client&) = delete;

  // A new stream to `backend`, on a connection with room (or a new one):
  // TLS with `tls` (h2), cleartext without (h2c); a new connection closes
  // after `idle_timeout` without streams. `watch` is the exchange's:
  // readiness and wake-ups go to it. Never null: a connection that cannot
  // even start fails the call (error()).
  H2Call* open(const upstream::Backend& backend, const std::shared_ptr<const io::TlsClient>& tls,
               std::chrono::milliseconds idle_timeout, io::Watch& watch);
  // The exchange is done with `call`: a stream not ended is reset (CANCEL).
  void release(H2Call* call);
  // Closes connections idle for longer than their pool's idle timeout.
  void sweep(io::Clock::time_point now);
  // Connections to backends no longer in any pool (`live[id]` false): the
  // idle ones close, the others take no new stream.
  void retain(const std::vector<bool>& live);
  // Closes every connection (its streams fail).
  void close_all();
  size_t connection_count() const;
  // Told of every connection opened (+1) and closed (-1), by backend id (for
  // a per-worker gauge).
  using Counter = void (*)(void* context, uint32_t backend, int delta);
  void count_connections_with(Counter counter, void* context) {
    counter_ = counter;
    counter_context_ = context;
  }

private:
  friend class H2Connection;
  void place(H2Call* c, const upstream::Backend& backend,
             const std::shared_ptr<const io::TlsClient>& tls,
             std::chrono::milliseconds idle_timeout);
  // A call that sent nothing yet goes to another connection (`from` has no room).
  void move(H2Call* c, H2Connection& from);
  void forget(H2Connection* c);
  io::EventLoop& loop_;
  std::vector<std::vector<H2Connection*>> by_backend_;
  std::vector<H2Call*> free_calls_;
  Counter counter_ = nullptr;
  void* counter_context_ = nullptr;
  void counted(uint32_t backend, int delta) {
    if (counter_)
      counter_(counter_context_, backend, delta);
  }
};

} // namespace lb::proxy
