#pragma once
// One client connection: reads requests, routes each to a pool, forwards it to a
// backend and streams the response back, one request at a time (pipelined
// requests wait in the read buffer and are answered in order).
//
// Written as do_x / on_x steps in the order a request flows. The session lives
// on its worker thread; a pending operation holds a reference to it.

#include "lb/http/parser.hpp"
#include "lb/io/handler_memory.hpp"
#include "lb/io/timeouts.hpp"
#include "lb/proxy/worker_context.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>

namespace lb::proxy {

class Session {
public:
  // Takes over an accepted connection and starts serving it.
  // `peer` is the client's address as accept() gave it.
  static void start(WorkerContext& worker, const ListenerRuntime& listener,
                    boost::asio::ip::tcp::socket socket, const sockaddr* peer);

  // Draining: closes the connection now if it is between requests; otherwise it
  // closes after the response in flight.
  // An idle TLS connection gives OpenSSL's record buffers back (the worker
  // calls this every second: freeing them after every request costs more).
  void trim_if_idle();
  void close_if_idle();
  // A queued request tries again to get a backend below its connection limit.
  void retry_queued();

  void add_ref() { ++refs_; }
  void release() {
    if (--refs_ == 0)
      delete this;
  }

  Session* prev_in_worker = nullptr;
  Session* next_in_worker = nullptr;

private:
  bool adopt_runtime();
  void start_backend_tls();
  void backend_handshake();

  BackendMetrics& backend_metrics() {
    return worker_.metrics->backends.at(pool_->backends()[static_cast<size_t>(backend_)].id);
  }
  class Ref;
  struct Outbox {
    static constexpr unsigned capacity = 128;
    iovec v[capacity];
    unsigned count = 0;
    unsigned first = 0;
    bool add(const void* p, size_t n);
    bool add(std::string_view s) { return add(s.data(), s.size()); }
    bool empty() const { return first == count; }
    void clear() { count = first = 0; }
    void advance(size_t n);
  };
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
  enum class Failure : uint8_t {
    connect,         // nothing was sent: any request may go to another backend
    refused,         // ... and the backend refused at once: does not use up a retry
    reused_early,    // a pooled connection failed before any response byte: replay
    before_response, // a fresh connection failed before any response byte
    backend,         // anything else: not retried
  };

  Session(WorkerContext& worker, const ListenerRuntime& listener,
          boost::asio::ip::tcp::socket socket, const sockaddr* peer);
  ~Session();

  void set_client_address(const sockaddr* peer);
  // Client I/O, plain or TLS. recv: >0 bytes, 0 end of stream, -1 with errno
  // (EAGAIN: wait for readability). write: 1 all written, 0 would block, -1 error.
  ssize_t client_recv(char* p, size_t n);
  int client_write(Outbox& out, uint64_t& written);
  ssize_t backend_recv(char* p, size_t n);
  int backend_write(Outbox& out, uint64_t& written);
  int tls_write(SSL* ssl, Outbox& out, io::Buffer*& stage, uint64_t& written);
  // TLS: finishes the handshake. 1 done, 0 waiting (reading resumes), -1 close.
  int tls_handshake();
  int take_proxy_header(); // 1 read, 0 wait for more, -1 close
  template <void (Session::*Step)()>
  void wait_then(boost::asio::ip::tcp::socket& socket, boost::asio::socket_base::wait_type what,
                 io::HandlerSlot& slot);
  // Request head.
  void do_read_request();
  void read_request_head();
  void skip_empty_lines();
  void on_request_head();
  // Choosing a backend and connecting.
  void do_attempt();
  void do_connect();
  void on_connect(const boost::system::error_code& ec, uint32_t attempt);
  // Sending the request.
  void do_send_request_head();
  void do_write_backend();
  void on_backend_writable(const boost::system::error_code& ec, uint32_t attempt);
  void on_request_bytes_sent();
  void stop_request_body();
  void do_read_request_body();
  void read_request_body();
  // Receiving the response.
  void do_read_response();
  void on_backend_readable(const boost::system::error_code& ec, uint32_t attempt);
  void read_response();
  void parse_response();
  void on_response_head();
  void do_write_client();
  void on_client_writable(const boost::system::error_code& ec);
  void on_response_bytes_sent();
  void on_response_complete();
  // Upgraded connections (WebSocket): bytes both ways until either side ends.
  void start_tunnel();
  void pump_up();   // client -> backend
  void pump_down(); // backend -> client
  void tunnel_half_closed();
  // Ends.
  void backend_failed(Failure failure, const char* reason);
  void respond_error(int status, const char* reason, bool close);
  void respond_maintenance();
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
  void timed_out();
  bool idempotent() const;
  void learn_keep_alive(std::string_view value);
  std::string_view request_id() const;
  // A new request id, unless the client sent one or request ids are off.
  void assign_request_id();

  WorkerContext& worker_;
  const ListenerRuntime* listener_;        // in runtime_
  std::shared_ptr<const Runtime> runtime_; // the snapshot this request started with
  boost::asio::ip::tcp::socket client_;
  int refs_ = 0;
  bool closed_ = false;

  // Client side: the read buffer holds the current request head (from offset 0),
  // the body bytes in flight after it and maybe the next pipelined request.
  io::Buffer* cbuf_ = nullptr;
  uint32_t c_len_ = 0;    // bytes in cbuf_
  uint32_t c_parsed_ = 0; // bytes given to the request parser
  uint32_t head_end_ = 0; // end of the request head
  uint32_t msg_end_ = 0;  // end of the request bytes forwarded so far
  http::Parser req_{http::Parser::Kind::request};
  http::Span authority_; // of an absolute-form target; replaces Host

  // The exchange with a backend.
  upstream::Pool* pool_ = nullptr;
  int route_ = -1; // the listener's route that matched (access log)
  int backend_ = -1;
  upstream::Connection* conn_ = nullptr;
  bool conn_reused_ = false;
  upstream::TriedSet tried_;
  unsigned attempts_ = 0;       // backends tried for this request
  unsigned replays_ = 0;        // replays after a pooled connection failed early
  unsigned refusals_ = 0;       // attempts refused at once (not counted against retries)
  uint32_t attempt_ = 0;        // generation: handlers of an abandoned attempt ignore
  bool req_done_ = false;       // the whole request was read from the client
  bool req_sent_ = false;       // ... and written to the backend
  bool body_discarded_ = false; // body bytes were sent and dropped from the buffer
  bool resp_started_ = false;   // a response byte went to the client
  bool resp_done_ = false;
  bool keep_client_ = true; // keep the client connection after this response
  bool client_writing_ = false;
  bool backend_writing_ = false;
  bool reading_response_ = false;   // the response read loop runs for this attempt
  bool in_response_head_ = false;   // an interim (1xx) response is being passed on
  bool backend_keep_alive_ = false; // the backend connection may serve another request
  bool answered_locally_ = false;   // lb answers this request itself (an error)
  uint32_t request_chain_ = 0;      // body chunks forwarded without waiting
  uint32_t response_chain_ = 0;
  uint32_t serve_chain_ = 0;       // requests served without returning to the event loop
  uint32_t request_gen_ = 0;       // one per request on this connection
  uint32_t lingered_ = 0;          // bytes discarded while closing
  bool upgrade_requested_ = false; // the request asks to switch protocols
  bool tunnel_pending_ = false;    // a 101 is being passed on; the tunnel follows
  bool tunnel_ = false;
  bool dechunk_ = false;       // a chunked response to an HTTP/1.0 client
  bool proxy_pending_ = false; // the PROXY header has not been read yet
  SSL* ssl_ = nullptr;         // HTTPS listener: the client's TLS connection
  bool handshake_done_ = false;
  bool write_wants_read_ = false;           // the last TLS write waits for the peer's bytes
  io::Buffer* tls_stage_ = nullptr;         // gathers a write for SSL_write
  io::Buffer* backend_tls_stage_ = nullptr; // the same toward an HTTPS backend
  bool queued_ = false;                     // waiting in the worker's queue (circuit breaker)
  bool acquired_ = false;                   // holds a slot in the backend's active count
  bool has_hash_ = false;                   // hash_ is the request's ring_hash/maglev key
  uint64_t hash_ = 0;
  int sticky_backend_ = -1; // the backend the client's sticky cookie names
  bool up_done_ = false;    // the client ended its side of the tunnel
  bool down_done_ = false;  // the backend ended its side

  io::Buffer* ubuf_ = nullptr; // response bytes from the backend
  uint32_t u_len_ = 0;
  uint32_t u_parsed_ = 0;
  uint32_t u_sent_ = 0; // response bytes of the buffer queued to the client
  http::Parser resp_{http::Parser::Kind::response};

  Outbox to_backend_;
  Outbox to_client_;
  char resp_extra_[192];  // ... to the response
  char error_page_[512];  // a response lb answers itself
  char max_forwards_[40]; // "Max-Forwards: N\r\n" toward the backend (OPTIONS, TRACE)
  uint8_t max_forwards_len_ = 0;
  char request_id_[20];
  uint8_t request_id_len_ = 0;
  char client_ip_[48];
  uint8_t client_ip_len_ = 0;

  int status_ = 0;
  uint64_t bytes_in_ = 0;
  uint64_t bytes_out_ = 0;
  uint64_t counted_in_ = 0; // of bytes_in_/bytes_out_, already in the metrics
  uint64_t counted_out_ = 0;
  int active_backend_ = -1; // counted in its pool's active requests
  io::Clock::time_point started_{};
  io::Clock::time_point upstream_started_{};
  double upstream_ms_ = -1;

  struct TimerEntry : io::Timeouts::Entry {
    Session* owner = nullptr;
  };
  TimerEntry timer_;
  Timer timer_kind_ = Timer::none;
  io::HandlerSlot client_read_slot_;
  io::HandlerSlot client_write_slot_;
  io::HandlerSlot backend_read_slot_;
  io::HandlerSlot backend_write_slot_;
};

} // namespace lb::proxy
