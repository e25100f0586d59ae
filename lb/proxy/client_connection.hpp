#pragma once
// One client connection: reads requests, routes each to a pool, forwards it to a
// backend and streams the response back, one request at a time (pipelined
// requests wait in the read buffer and are answered in order).
//
// Written as do_x / on_x steps in the order a request flows, in three files:
// client_connection.cpp (the connection: PROXY header, TLS, heads, routing,
// lb's own answers, keep-alive, timers), upstream_exchange.cpp (the request
// toward its backend) and tunnel.cpp (after a 101). While idle it holds its
// socket, its timer entry, a few flags and (TLS) its SSL object; a request
// borrows an Exchange (exchange.hpp) for what it needs in flight. The
// connection lives on its worker thread, its socket in the worker's event
// loop from accept to close (that registration holds a reference, as does
// whoever runs one of its steps).
//
// Waiting is a step stored per socket and direction (client_in_, ...,
// Exchange::backend_in_, ...): the socket's next edge runs it. Readiness is
// the loop's (io::Watch): a read that comes back short means drained, so the
// next read waits for an edge instead of asking the kernel.

#include "lb/io/event_loop.hpp"
#include "lb/io/timeouts.hpp"
#include "lb/proxy/exchange.hpp"
#include "lb/proxy/header_rules.hpp"
#include "lb/proxy/worker_context.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>

namespace lb::proxy {

class H2Session;
class H2Stream;

// (Its timeout entry is a base: no pointer back to the connection.)
class ClientConnection : private io::Timeouts::Entry {
public:
  // Takes over an accepted connection (non-blocking) and starts serving it.
  // `peer` is the client's address as accept() gave it.
  static void start(WorkerContext& worker, const ListenerRuntime& listener, int fd,
                    const sockaddr* peer);
  // HTTP/2: a connection that serves one stream of `parent`'s session (its
  // "socket" is the stream). Holds a reference until it closes; run_stream()
  // starts it.
  static ClientConnection* new_stream(WorkerContext& worker, const ListenerRuntime& listener,
                                      H2Stream& stream, const ClientConnection& parent);
  void run_stream();
  // The stream has request bytes or room for response bytes.
  void stream_ready();

  // Draining: closes the connection now if it is between requests; otherwise it
  // closes after the response in flight.
  // An idle TLS connection gives OpenSSL's record buffers back (the worker
  // calls this every second: freeing them after every request costs more).
  void trim_if_idle();
  void close_if_idle();
  // A forced stop: closes now, whatever is in flight.
  void close_now() { close(); }
  // A queued request tries again to get a backend below its connection limit.
  void retry_queued();
  // The client's verified certificate as X-Forwarded-Client-Cert's value ("" if none).
  std::string_view client_cert() const;

  void add_ref() { ++refs_; }
  void release() {
    if (--refs_ == 0)
      delete this;
  }

  ClientConnection* prev_in_worker = nullptr;
  ClientConnection* next_in_worker = nullptr;

private:
  bool adopt_runtime();
  void start_backend_tls();
  void backend_handshake();

  BackendMetrics& backend_metrics() {
    return worker_.metrics->backends.at(
        x_->pool_->backends()[static_cast<size_t>(x_->backend_)].id);
  }
  // Borrows an exchange for the request that starts (no-op when one is held).
  void ensure_exchange();
  // Gives the exchange back once the connection is idle.
  void release_exchange();
  class Ref;
  // `answer`: lb writes its own answer (an error page); the client has
  // timeouts.idle to take it.
  enum class Timer : uint8_t {
    none,
    idle,
    header,
    connect,
    exchange,
    linger,
    tunnel,
    queue,
    answer
  };

  ClientConnection(WorkerContext& worker, const ListenerRuntime& listener, int fd,
                   const sockaddr* peer, H2Stream* stream = nullptr);
  // The connection speaks HTTP/2 from here on (`early`: bytes read already).
  void start_h2(const char* early, size_t n);
  ~ClientConnection();

  void set_client_address(const sockaddr* peer);
  void format_client_address(); // into the exchange
  std::string_view client_ip() const { return {x_->client_ip_, x_->client_ip_len_}; }
  // Client I/O, plain or TLS. recv: >0 bytes, 0 end of stream, -1 with errno
  // (EAGAIN: wait for readability). write: 1 all written, 0 would block, -1 error.
  ssize_t client_recv(char* p, size_t n);
  int client_write(Outbox& out, uint64_t& written);
  ssize_t backend_recv(char* p, size_t n);
  int backend_write(Outbox& out, uint64_t& written);
  int tls_write(io::Watch& w, SSL* ssl, Outbox& out, io::Buffer*& stage, uint64_t& written);
  // TLS: finishes the handshake. 1 done, 0 waiting (reading resumes), -1 close.
  int tls_handshake();
  int take_proxy_header(); // 1 read, 0 wait for more, -1 close
  // Waiting. in: run `s` when the socket is readable; now: on the loop's
  // next pass; out: when writable (or readable: TLS wants to read first).
  void wait_client_in(Step s);
  void client_in_next_pass(Step s);
  void wait_client_out(Step s, bool on_in);
  void wait_backend_in(Step s);
  void backend_in_next_pass(Step s);
  void wait_backend_out(Step s, bool on_in);
  static void on_client_event(void* self, uint32_t events);
  static void on_backend_event(void* self, uint32_t events);
  void client_event();
  void backend_event();
  void own_backend_socket();
  // ---- The client side (client_connection.cpp).
  // Request head.
  void do_read_request();
  void read_request_head();
  void skip_empty_lines();
  void on_request_head();
  // What the exchange asks of its client side; each resumes the exchange's
  // next step. The request body as it comes (then on to the backend), the
  // response as it goes (then on_response_bytes_sent), lb's own answer
  // (respond_error), the end of the connection (close), the timer of the
  // step under way (arm). The exchange calls no client socket itself; it
  // still reads the request's bytes from the client's read buffer and says
  // whether the connection may stay open (keep_client_): what another
  // protocol on the client side (HTTP/2 streams) must give it besides.
  void do_read_request_body();
  void read_request_body();
  void do_write_client();
  void on_client_writable();
  // ---- The exchange toward the backend (upstream_exchange.cpp).
  // Choosing a backend and connecting.
  void do_attempt();
  void do_connect();
  void on_connect();
  void connect_failed(int error);
  void on_connected();
  void do_open_stream();
  void on_stream_open();
  void stream_refused();
  // Sending the request.
  void do_send_request_head();
  void do_write_backend();
  void on_backend_writable();
  void on_request_bytes_sent();
  void stop_request_body();
  // Receiving the response.
  void do_read_response();
  void read_response();
  void parse_response();
  void on_response_head();
  void on_response_bytes_sent();
  void on_response_complete();
  // A long Content-Length body, socket to socket through a pipe (splice):
  // the response's, the request's.
  bool splice_possible() const;
  void splice_body();
  void resume_splice_body();
  void on_splice_writable();
  bool request_splice_possible() const;
  void splice_request_body();
  void resume_request_splice();
  void on_request_splice_writable();
  void request_send_failed();
  // ---- Upgraded connections (tunnel.cpp): bytes both ways until either side ends.
  void start_tunnel();
  void pump_up();   // client -> backend
  void pump_down(); // backend -> client
  bool tunnel_splice_possible() const;
  void splice_up(); // ... by splice, once a direction carries bulk data
  void splice_down();
  void tunnel_half_closed();
  // Ends.
  void backend_failed(Failure failure, const char* reason);
  bool retry_on_status(int status);
  bool retry_budget_allows();
  bool another_backend_left() const;
  void start_try_clock();
  void respond_error(int status, const char* reason, bool close,
                     const RateLimitFields* rate_limit = nullptr);
  // 429 from the route's rate limit.
  void respond_rate_limited(const CompiledRoute& route, uint32_t retry_after);
  void respond_maintenance();
  void respond_redirect();
  // The answer to a pending HTTP-01 challenge; false (nothing sent) for an unknown token.
  bool respond_acme_challenge(const http::Head& head);
  std::string_view key_of(const config::HashKey& key) const;
  HeaderVars header_vars() const;
  // OPTIONS or TRACE whose Max-Forwards is 0: lb is the final recipient.
  void respond_final_recipient();
  // Sends what to_client_ holds as lb's own answer.
  void send_local_answer();
  void leave_queue();
  void finish_request();
  void finish_request_log();
  void finish_request_state();
  void close();
  void close_gracefully(bool request_read);
  void linger_read();
  void release_backend(bool reusable);
  void count_bytes();
  void arm(Timer t);
  static void on_timeout(io::Timeouts::Entry* e);
  static void on_try_timeout(io::Timeouts::Entry* e);
  void try_timed_out();
  void timed_out();
  void learn_keep_alive(std::string_view value);
  std::string_view request_id() const;
  // A new request id, unless the client sent one or request ids are off.
  void assign_request_id();
  void find_grpc(const http::Head& head);
  // A gRPC call from an HTTP/2 client to a pool that speaks HTTP/2.
  bool grpc_stream() const;

  WorkerContext& worker_;
  const ListenerRuntime* listener_;        // in runtime_
  std::shared_ptr<const Runtime> runtime_; // the snapshot this request started with
  io::Watch client_;                       // the client's socket in the event loop
  Step client_in_ = nullptr;
  Step client_out_ = nullptr;
  // The request in flight (from its first byte until the connection is idle
  // again); nullptr while idle.
  Exchange* x_ = nullptr;
  SSL* ssl_ = nullptr;         // HTTPS listener: the client's TLS connection
  std::string client_cert_;    // its verified client certificate, as X-Forwarded-Client-Cert
  H2Session* h2_ = nullptr;    // the connection speaks HTTP/2: its session
  H2Stream* stream_ = nullptr; // serving one HTTP/2 stream (no socket of its own)
  // Client side: the read buffer holds the current request head (from offset 0),
  // the body bytes in flight after it and maybe the next pipelined request.
  io::Buffer* cbuf_ = nullptr;
  uint32_t c_len_ = 0;      // bytes in cbuf_ (the offsets into it are the exchange's)
  uint16_t refs_ = 0;       // the loop's registration, running steps, the queue
  uint8_t serve_chain_ = 0; // requests served without returning to the event loop
  Timer timer_kind_ = Timer::none;
  bool closed_ = false;
  bool keep_client_ = true;    // keep the client connection after this response
  bool proxy_pending_ = false; // the PROXY header has not been read yet
  bool handshake_done_ = false;
  bool write_wants_read_ = false; // the last TLS write waits for the peer's bytes
  bool client_in_now_ = false;    // client_in_ runs on the next pass, ready or not
  bool client_out_on_in_ = false; // client_out_ waits for readability (TLS)
  bool of_stream_ = false;        // serves an HTTP/2 stream (stream_ until it closes)
  uint8_t client_family_ = 0;     // AF_INET, AF_INET6; 0: unknown
  uint8_t client_addr_[16] = {};  // the client's address (after a PROXY header)

  io::Timeouts::Entry& timer() { return *this; }
};

} // namespace lb::proxy
