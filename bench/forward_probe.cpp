// The io_uring question of lb's event loop, measured on the smallest proxy
// that has lb's kernel work: each client connection gets its own origin
// connection and bytes are forwarded both ways (an L4 relay; keep-alive HTTP
// passes through unchanged). Two I/O backends, chosen with --io:
//
//   epoll     as lb's loop: every socket added once, edge-triggered with
//             EPOLLRDHUP, readiness kept in user space (a short read means
//             drained), writes tried at once, EPOLLOUT awaited only after a
//             short write. Per request: recv + send on each side, and the
//             epoll_wait passes.
//   splice    as epoll, but the bytes go from one socket to the other through
//             a pipe (splice in, splice out: the relay never copies them;
//             the pipe holds up to 1 MiB): whether splice would pay for long
//             bodies and tunnels in lb. A splice in that comes back short is
//             not taken as drained (the pipe may have run out of slots):
//             the next splice in says so with EAGAIN.
//   io_uring  multishot recv into a ring of provided buffers, each send
//             queued as a submission and every pass's submissions sent with
//             its wait in one io_uring_enter (SINGLE_ISSUER, DEFER_TASKRUN,
//             the ring's descriptor registered, no SQPOLL). The bytes a recv filled are sent from
//             the same buffer, which goes back to the ring when the send completes.
//
// bench/forward_probe.sh runs both against the same origins with wrk, in one
// run, and reports CPU and system calls per request: what lb's epoll loop
// would save by moving to io_uring, before anyone rewrites it.
//
//   forward_probe --io epoll|splice|io_uring --origin 127.0.0.1:PORT [--origin ...] [--listen
//   127.0.0.1:0] (several origins: each new connection goes to the next, round robin) prints
//   "listening on PORT", runs until SIGTERM/SIGINT.

#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t stopping = 0;
void on_signal(int) { stopping = 1; }

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "forward_probe: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

sockaddr_in parse_address(const std::string& text) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  size_t colon = text.rfind(':');
  if (colon == std::string::npos ||
      inet_pton(AF_INET, text.substr(0, colon).c_str(), &a.sin_addr) != 1) {
    std::fprintf(stderr, "forward_probe: expected IPv4:PORT, got %s\n", text.c_str());
    std::exit(2);
  }
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(text.c_str() + colon + 1)));
  return a;
}

int listen_on(const sockaddr_in& a) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(fd, 4096) != 0)
    die("listen");
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  std::printf("listening on %u\n", ntohs(bound.sin_port));
  std::fflush(stdout);
  return fd;
}

std::vector<sockaddr_in> origins; // round robin, a connection each
size_t next_origin = 0;

// A blocking connect (at accept time, outside the measured keep-alive
// traffic) to the next origin, then non-blocking.
int connect_origin() {
  const sockaddr_in& origin = origins[next_origin++ % origins.size()];
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&origin), sizeof origin) != 0) {
    if (fd >= 0)
      ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

void prepare_client(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

constexpr size_t buffer_size = 16384;

// ---- epoll ------------------------------------------------------------------

struct EpollPair;
struct EpollSide {
  int fd = -1;
  EpollPair* pair = nullptr;
  bool in_ready = false, out_ready = true, hangup = false;
  EpollSide* peer = nullptr;
  // Bytes read from this side not yet written to the peer.
  char buf[buffer_size];
  size_t begin = 0, end = 0;
  // --io splice: the pipe this side's bytes go through, and how many it holds.
  int pipe_r = -1, pipe_w = -1;
  size_t in_pipe = 0;
};

struct EpollPair {
  EpollSide client, origin;
  bool closed = false;
};

void close_pair(int ep, EpollPair* p, std::vector<EpollPair*>& dead) {
  if (p->closed)
    return;
  p->closed = true;
  ::epoll_ctl(ep, EPOLL_CTL_DEL, p->client.fd, nullptr);
  ::epoll_ctl(ep, EPOLL_CTL_DEL, p->origin.fd, nullptr);
  ::close(p->client.fd);
  ::close(p->origin.fd);
  for (EpollSide* side : {&p->client, &p->origin})
    if (side->pipe_r >= 0) {
      ::close(side->pipe_r);
      ::close(side->pipe_w);
    }
  dead.push_back(p);
}

constexpr size_t pipe_bytes = 1 << 20;

// pump() through the side's pipe.
bool pump_splice(EpollSide& from) {
  EpollSide& to = *from.peer;
  for (;;) {
    if (from.in_pipe > 0) {
      if (!to.out_ready)
        return true;
      ssize_t n = ::splice(from.pipe_r, nullptr, to.fd, nullptr, from.in_pipe,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0 && errno == EAGAIN) {
        to.out_ready = false;
        return true;
      }
      if (n <= 0)
        return false;
      from.in_pipe -= static_cast<size_t>(n);
      if (from.in_pipe > 0) {
        to.out_ready = false; // short write: wait for EPOLLOUT
        return true;
      }
    }
    if (!from.in_ready)
      return true;
    ssize_t n = ::splice(from.fd, nullptr, from.pipe_w, nullptr, pipe_bytes,
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EAGAIN) {
      from.in_ready = false;
      return true;
    }
    if (n <= 0)
      return false;
    from.in_pipe = static_cast<size_t>(n);
  }
}

bool use_splice = false;

// Moves what `from` holds to its peer; reads more while the peer takes it.
// false: the pair is done.
bool pump(EpollSide& from) {
  EpollSide& to = *from.peer;
  for (;;) {
    if (from.begin < from.end) {
      if (!to.out_ready)
        return true;
      ssize_t n = ::send(to.fd, from.buf + from.begin, from.end - from.begin, MSG_NOSIGNAL);
      if (n < 0 && errno == EAGAIN) {
        to.out_ready = false;
        return true;
      }
      if (n <= 0)
        return false;
      from.begin += static_cast<size_t>(n);
      if (from.begin < from.end) {
        to.out_ready = false; // short write: wait for EPOLLOUT
        return true;
      }
      from.begin = from.end = 0;
    }
    if (!from.in_ready)
      return true;
    ssize_t n = ::recv(from.fd, from.buf, buffer_size, 0);
    if (n < 0 && errno == EAGAIN) {
      from.in_ready = false;
      return true;
    }
    if (n <= 0)
      return false;
    from.end = static_cast<size_t>(n);
    if (static_cast<size_t>(n) < buffer_size && !from.hangup)
      from.in_ready = false; // short read: drained until the next edge
  }
}

void run_epoll(int listener) {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event lev{EPOLLIN, {.ptr = nullptr}};
  ::epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev);
  std::vector<EpollPair*> dead;
  epoll_event events[256];
  while (!stopping) {
    int n = ::epoll_wait(ep, events, 256, 200);
    for (int i = 0; i < n; ++i) {
      if (!events[i].data.ptr) {
        for (;;) {
          int c = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0)
            break;
          int o = connect_origin();
          if (o < 0) {
            ::close(c);
            continue;
          }
          prepare_client(c);
          auto* p = new EpollPair;
          p->client.fd = c;
          p->origin.fd = o;
          p->client.peer = &p->origin;
          p->origin.peer = &p->client;
          p->client.pair = p->origin.pair = p;
          for (EpollSide* s : {&p->client, &p->origin}) {
            if (use_splice) {
              int fds[2];
              if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
                die("pipe2");
              ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(pipe_bytes));
              s->pipe_r = fds[0];
              s->pipe_w = fds[1];
            }
            epoll_event ev{EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, {.ptr = s}};
            ::epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
          }
        }
        continue;
      }
      auto* side = static_cast<EpollSide*>(events[i].data.ptr);
      EpollPair* pair = side->pair;
      if (pair->closed)
        continue;
      uint32_t e = events[i].events;
      if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        side->in_ready = true;
      if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        side->hangup = true;
      if (e & EPOLLOUT)
        side->out_ready = true;
      // This side's bytes to the peer, and (when it became writable) the
      // peer's pending bytes to it.
      bool ok = use_splice ? pump_splice(*side) && pump_splice(*side->peer)
                           : pump(*side) && pump(*side->peer);
      if (!ok)
        close_pair(ep, pair, dead);
    }
    for (EpollPair* p : dead)
      delete p;
    dead.clear();
  }
}

// ---- io_uring ---------------------------------------------------------------

constexpr unsigned ring_entries = 4096;
constexpr unsigned buffers = 4096; // provided buffers (a power of two)
constexpr unsigned buf_group = 1;
constexpr unsigned small_buffer = 4096; // per provided buffer

struct UringPair;
struct UringSide {
  int fd = -1;
  UringPair* pair = nullptr;
  UringSide* peer = nullptr;
  bool receiving = false; // a multishot recv is armed
  // Buffers received from the peer, waiting to be sent here (one send in
  // flight at a time keeps them in order).
  struct Chunk {
    uint16_t bid;
    uint32_t off, len;
  };
  std::deque<Chunk> outq;
  bool sending = false;
};

struct UringPair {
  UringSide client, origin;
  int inflight = 0; // operations the kernel still holds
  bool closing = false;
};

// user_data: the side's address with the operation in the low bits.
enum Op : uintptr_t { op_recv = 0, op_send = 1, op_accept = 2 };
inline uint64_t tag(void* p, Op op) { return reinterpret_cast<uintptr_t>(p) | op; }

class Uring {
public:
  explicit Uring(int listener) : listener_(listener) {
    io_uring_params params{};
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                   IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
    params.cq_entries = ring_entries * 4;
    int rc = io_uring_queue_init_params(ring_entries, &ring_, &params);
    if (rc < 0) {
      errno = -rc;
      die("io_uring_queue_init_params (io_uring refused: seccomp or kernel.io_uring_disabled?)");
    }
    // The ring's own descriptor registered: io_uring_enter skips its lookup.
    io_uring_register_ring_fd(&ring_);
    size_t ring_bytes = sizeof(io_uring_buf) * buffers;
    void* mem =
        ::mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
      die("mmap");
    br_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uintptr_t>(br_);
    reg.ring_entries = buffers;
    reg.bgid = buf_group;
    if ((rc = io_uring_register_buf_ring(&ring_, &reg, 0)) < 0) {
      errno = -rc;
      die("io_uring_register_buf_ring");
    }
    data_ = std::make_unique<char[]>(size_t(buffers) * small_buffer);
    for (unsigned i = 0; i < buffers; ++i)
      io_uring_buf_ring_add(br_, data_.get() + size_t(i) * small_buffer, small_buffer,
                            static_cast<uint16_t>(i), io_uring_buf_ring_mask(buffers),
                            static_cast<int>(i));
    io_uring_buf_ring_advance(br_, static_cast<int>(buffers));
  }

  void run() {
    arm_accept();
    __kernel_timespec wait{0, 200 * 1000 * 1000};
    while (!stopping) {
      io_uring_cqe* cqe = nullptr;
      // This pass's submissions and the wait for the next completions: one
      // system call.
      int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &wait, nullptr);
      if (rc < 0 && rc != -ETIME && rc != -EINTR) {
        errno = -rc;
        die("io_uring_submit_and_wait_timeout");
      }
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        complete(cqe);
      }
      io_uring_cq_advance(&ring_, seen);
      if (returned_) {
        io_uring_buf_ring_advance(br_, returned_);
        returned_ = 0;
      }
    }
  }

private:
  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    if (!s) {
      io_uring_submit(&ring_);
      s = io_uring_get_sqe(&ring_);
    }
    return s;
  }

  void arm_accept() {
    io_uring_sqe* s = sqe();
    io_uring_prep_multishot_accept(s, listener_, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, tag(&accept_tag_, op_accept));
  }

  void arm_recv(UringSide& side) {
    io_uring_sqe* s = sqe();
    io_uring_prep_recv_multishot(s, side.fd, nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = buf_group;
    io_uring_sqe_set_data64(s, tag(&side, op_recv));
    side.receiving = true;
    ++side.pair->inflight;
  }

  void send_next(UringSide& to) {
    if (to.sending || to.outq.empty() || to.pair->closing)
      return;
    const UringSide::Chunk& c = to.outq.front();
    io_uring_sqe* s = sqe();
    io_uring_prep_send(s, to.fd, data_.get() + size_t(c.bid) * small_buffer + c.off, c.len,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, tag(&to, op_send));
    to.sending = true;
    ++to.pair->inflight;
  }

  void give_back(uint16_t bid) {
    io_uring_buf_ring_add(br_, data_.get() + size_t(bid) * small_buffer, small_buffer, bid,
                          io_uring_buf_ring_mask(buffers), returned_++);
  }

  void close_pair(UringPair* p) {
    if (!p->closing) {
      p->closing = true;
      // Cancels the armed recvs (their final completions come back), frees
      // the queued buffers.
      for (UringSide* s : {&p->client, &p->origin}) {
        ::shutdown(s->fd, SHUT_RDWR);
        for (const auto& c : s->outq)
          give_back(c.bid);
        s->outq.clear();
      }
    }
    if (p->inflight == 0) {
      ::close(p->client.fd);
      ::close(p->origin.fd);
      delete p;
    }
  }

  void complete(io_uring_cqe* cqe) {
    uint64_t data = io_uring_cqe_get_data64(cqe);
    Op op = static_cast<Op>(data & 3);
    void* ptr = reinterpret_cast<void*>(data & ~uint64_t(3));
    if (op == op_accept) {
      if (cqe->res >= 0)
        accepted(cqe->res);
      if (!(cqe->flags & IORING_CQE_F_MORE))
        arm_accept();
      return;
    }
    auto* side = static_cast<UringSide*>(ptr);
    UringPair* p = side->pair;
    if (op == op_recv) {
      bool more = cqe->flags & IORING_CQE_F_MORE;
      if (!more) {
        side->receiving = false;
        --p->inflight;
      }
      if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
        auto bid = static_cast<uint16_t>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        if (p->closing) {
          give_back(bid);
        } else {
          side->peer->outq.push_back({bid, 0, static_cast<uint32_t>(cqe->res)});
          send_next(*side->peer);
        }
      } else if (cqe->res == -ENOBUFS && !p->closing) {
        // Out of provided buffers: armed again once sends have returned some.
      } else if (cqe->res <= 0) {
        close_pair(p);
        return;
      }
      if (!side->receiving && !p->closing)
        arm_recv(*side);
      if (p->closing)
        close_pair(p);
      return;
    }
    // op_send
    --p->inflight;
    side->sending = false;
    if (p->closing) {
      close_pair(p);
      return;
    }
    if (cqe->res <= 0) {
      close_pair(p);
      return;
    }
    UringSide::Chunk& c = side->outq.front();
    if (static_cast<uint32_t>(cqe->res) < c.len) {
      c.off += static_cast<uint32_t>(cqe->res);
      c.len -= static_cast<uint32_t>(cqe->res);
    } else {
      give_back(c.bid);
      side->outq.pop_front();
    }
    send_next(*side);
  }

  void accepted(int c) {
    int o = connect_origin();
    if (o < 0) {
      ::close(c);
      return;
    }
    prepare_client(c);
    auto* p = new UringPair;
    p->client.fd = c;
    p->origin.fd = o;
    p->client.pair = p->origin.pair = p;
    p->client.peer = &p->origin;
    p->origin.peer = &p->client;
    arm_recv(p->client);
    arm_recv(p->origin);
  }

  io_uring ring_{};
  io_uring_buf_ring* br_ = nullptr;
  std::unique_ptr<char[]> data_;
  int returned_ = 0; // buffers given back this pass
  int listener_;
  alignas(8) char accept_tag_ = 0;
};

} // namespace

int main(int argc, char** argv) {
  std::string io = "epoll", listen = "127.0.0.1:0";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--io")
      io = argv[i + 1];
    else if (k == "--listen")
      listen = argv[i + 1];
    else if (k == "--origin")
      origins.push_back(parse_address(argv[i + 1]));
  }
  if (origins.empty() || (io != "epoll" && io != "splice" && io != "io_uring")) {
    std::fprintf(stderr, "usage: forward_probe --io epoll|splice|io_uring --origin IPv4:PORT "
                         "[--listen IPv4:PORT]\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  int l = listen_on(parse_address(listen));
  use_splice = io == "splice";
  if (io != "io_uring")
    run_epoll(l);
  else
    Uring(l).run();
  return 0;
}
