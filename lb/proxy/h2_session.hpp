#pragma once
// HTTP/2 to clients (RFC 9113): frames, HPACK, flow control and the
// protocol's state machine come from libnghttp2; this file maps streams to
// requests.
//
// A client connection turns into an H2Session when TLS negotiated "h2" by
// ALPN, or when a cleartext connection starts with the HTTP/2 connection
// preface (prior knowledge). Every stream is then one request served by a
// ClientConnection of its own in stream mode: it reads an HTTP/1.1 request
// built from the stream's HEADERS and DATA (pseudo-headers to a request line
// and Host, cookie crumbs joined with "; ", a body of unknown length sent
// chunked) and writes an HTTP/1.1 response that becomes HEADERS and DATA
// (names lower case, connection-specific fields dropped, the body
// dechunked). So a stream is routed, balanced, retried, timed, counted and
// logged exactly as an HTTP/1.1 request is, over the same backend pools.
//
// Flow control follows backpressure: a stream's receive window opens only
// as its ClientConnection takes the body bytes (that is, as its backend
// accepts them), and a stream's response waits, at most 64 KiB of it, until
// the client's window and the socket take it; its backend is not read
// meanwhile. The connection's window is opened as bytes arrive (each
// stream's is the bound).
//
// Floods (what broke other servers) end the connection with GOAWAY
// ENHANCE_YOUR_CALM: frames that cost lb work but carry no request (PING,
// SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty frames, invalid
// ones) are paid from a budget that requests, DATA sent and time refill
// (counted from the frame headers as the bytes come, so frames nghttp2
// ignores pay too), but for up to 10 WINDOW_UPDATEs per DATA frame lb sent
// (what a client reading a stream sends); streams reset by the client before
// their answer (Rapid Reset) are paid from another. nghttp2 bounds
// CONTINUATION frames and unanswered ACKs.

#include "lb/http/chunked.hpp"
#include "lb/io/event_loop.hpp"
#include "lb/proxy/outbox.hpp"
#include "lb/proxy/worker_context.hpp"

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <string>

namespace lb::proxy {

class ClientConnection;
class H2Session;

// The connection preface a cleartext HTTP/2 client starts with.
inline constexpr std::string_view h2_preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// One stream's request and response, between the session and the stream's
// ClientConnection.
class H2Stream {
public:
  // For the stream's ClientConnection. recv: >0 bytes of the HTTP/1.1
  // request; -1 with EAGAIN when none is here yet. write: takes the HTTP/1.1
  // response's bytes; 1 all taken, 0 when 64 KiB wait for the client already.
  ssize_t recv(char* p, size_t n);
  int write(Outbox& out, uint64_t& written);
  // The response has been written whole (the stream ends after its bytes).
  void response_complete();
  // The ClientConnection ends: a stream whose response is not complete is reset.
  void detach();
  bool https() const;
  // The connection's verified client certificate, as X-Forwarded-Client-Cert ("" if none).
  std::string_view client_cert() const;

private:
  friend class H2Session;
  H2Stream(H2Session& session, int32_t id) : session_(session), id_(id) {}
  void reset(); // back to a fresh stream (keeping its buffers' room)
  void take_response_bytes(const char* p, size_t n);
  bool parse_response_head(size_t len);
  bool submit_trailers();

  H2Session& session_;
  int32_t id_;
  ClientConnection* conn_ = nullptr; // until it closes (it detaches then)
  H2Stream* prev_ = nullptr;         // the session's streams
  H2Stream* next_ = nullptr;
  H2Stream* next_pending_ = nullptr; // heads complete, not started yet
  // The request as HTTP/1.1: built from the head, then the body as it comes.
  std::string req_;
  size_t req_off_ = 0;
  std::string method_, path_, authority_, scheme_, cookies_, fields_;
  uint64_t head_bytes_ = 0;
  uint64_t unconsumed_ = 0; // body bytes received, not yet taken by the ClientConnection
  bool head_done_ = false;
  bool too_large_ = false;  // the head passed max_header_bytes: 431
  bool has_length_ = false; // content-length given
  bool chunked_ = false;    // the body goes as chunks (no content-length)
  bool req_ended_ = false;  // END_STREAM from the client
  bool started_ = false;
  bool in_pending_ = false;
  bool zombie_ = false; // closed while pending: start_pending frees it
  // The response: its head as written, then its body waiting for DATA frames.
  std::string resp_head_;
  std::string data_;
  size_t data_off_ = 0;
  bool resp_head_sent_ = false;
  bool resp_complete_ = false;
  bool deferred_ = false;   // nghttp2 waits for more of the body
  bool reset_ = false;      // reset by lb or the client: nothing more is sent
  bool conn_waits_ = false; // the ClientConnection waits for room in data_
  // A chunked response body: decoded here, its trailers kept for HEADERS.
  bool chunked_resp_ = false;
  http::ChunkDecoder chunks_;
  std::string trailers_;
};

class H2Session {
public:
  // Takes over `parent`'s client socket (plain or TLS, `ssl`); `early` holds
  // the bytes read from it already (the preface, maybe more).
  H2Session(ClientConnection& parent, WorkerContext& worker, const ListenerRuntime& listener,
            io::Watch& socket, SSL* ssl, const char* early, size_t early_len);
  ~H2Session();
  H2Session(const H2Session&) = delete;
  H2Session& operator=(const H2Session&) = delete;

  // Socket readiness, or work queued by a stream: reads, starts the streams
  // whose heads came, writes. False when the connection is done (close it).
  bool on_event();
  // Draining (SIGTERM, reload of a removed listener): GOAWAY with the last
  // stream taken; the streams in flight finish, then the connection closes.
  void drain();
  // timeouts.idle passed without a byte either way: GOAWAY (NO_ERROR, or
  // ENHANCE_YOUR_CALM when streams wait for a client that takes nothing),
  // then close.
  void idle_timeout();
  // Whether bytes moved either way since the last call (for the idle timer).
  bool take_progress();

private:
  friend class H2Stream;
  static ssize_t on_send(nghttp2_session*, const uint8_t*, size_t, int, void*);
  static int on_begin_headers(nghttp2_session*, const nghttp2_frame*, void*);
  static int on_header(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                       const uint8_t*, size_t, uint8_t, void*);
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame*, void*);
  static int on_data_chunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*);
  static int on_stream_close(nghttp2_session*, int32_t, uint32_t, void*);
  static int on_invalid_frame(nghttp2_session*, const nghttp2_frame*, int, void*);
  static int on_frame_sent(nghttp2_session*, const nghttp2_frame*, void*);
  static ssize_t read_data(nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t*,
                           nghttp2_data_source*, void*);

  static ListenerMetrics& worker_metrics(H2Session& h);

  H2Stream* acquire_stream(int32_t id);
  void release_stream(H2Stream* s);
  void end_request_head(H2Stream& s, bool end_stream);
  void end_request_body(H2Stream& s);
  void start_pending();
  // `empty`: no body follows (END_STREAM with the HEADERS).
  void submit_response(H2Stream& s, const nghttp2_nv* list, size_t n, bool empty = false);
  void answer_locally(H2Stream& s, int status, const char* reason);
  void wake_conn(H2Stream& s);
  void schedule(); // on_event on the loop's next pass
  // Pays `cost` from `budget` (budget_ or resets_, both refilled first for
  // the time passed); false when it is spent.
  bool charge(double& budget, double cost);
  int flood(const char* what); // an error for nghttp2's callback to return
  bool scan(const char* p, size_t n);
  void fail(ssize_t rv); // nghttp2 failed: GOAWAY as fits, then close
  bool flush();
  ssize_t sock_recv(char* p, size_t n);
  ssize_t sock_send(const char* p, size_t n);

  ClientConnection& parent_;
  WorkerContext& worker_;
  const ListenerRuntime& listener_;
  io::Watch& socket_;
  SSL* ssl_;
  nghttp2_session* session_ = nullptr;
  H2Stream* streams_ = nullptr;      // every stream nghttp2 has open
  H2Stream* free_streams_ = nullptr; // kept for the next streams
  uint32_t free_count_ = 0;
  H2Stream* pending_ = nullptr; // heads complete, ClientConnections to start
  H2Stream** pending_tail_ = &pending_;
  std::string out_; // frames nghttp2 produced that the socket did not take yet
  size_t out_off_ = 0;
  std::string early_; // bytes read before the session began
  uint32_t open_streams_ = 0;
  // Flood budgets (see the file comment), refilled with time and work.
  double budget_ = 0;
  double resets_ = 0;
  double window_credit_ = 0; // WINDOW_UPDATEs earned by DATA sent
  io::Clock::time_point budget_at_{};
  bool dead_ = false;     // a fatal error: flush what is queued, then close
  bool draining_ = false; // GOAWAY sent: close once the streams are done
  bool closing_ = false;  // being destroyed: streams detach quietly
  bool progress_ = false; // bytes moved since take_progress()
  const char* flood_ = nullptr;
  // scan(): where the byte stream is (the preface, a frame's header, its payload).
  uint8_t preface_left_ = 24;
  uint8_t hd_have_ = 0;
  uint8_t hd_[9] = {};
  uint32_t payload_left_ = 0;
  const Runtime* runtime_seen_ = nullptr; // the worker's snapshot when last looked at
};

} // namespace lb::proxy
