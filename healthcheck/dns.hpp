#pragma once
// DNS discovery of backends. A `dns:` backend names a host whose A and AAAA records are the
// backends; a `srv:` backend names an SRV RRset whose targets' addresses are, with the port,
// priority and weight of their SRV records. Resolver is one c-ares channel driven by poll() on
// the calling thread; Discovery re-resolves a fixed list of queries on its own thread, each one
// when its answer's TTL runs out, and reports the record sets that changed through a callback:
// the proxy maps a query to its pool, as it does for the checker's transitions.
//
// Depends on c-ares (kept out of this header) and Boost.Asio's address types only.

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/udp.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

struct ares_channeldata; // c-ares' channel: ares_channel is a pointer to it

namespace lb::healthcheck {

struct DnsSettings {
  std::vector<boost::asio::ip::udp::endpoint> servers; // empty: the system's (/etc/resolv.conf)
  // An answer's TTL is clamped to [min_ttl, max_ttl] to schedule its next resolution. min_ttl is
  // taken as at least 100 ms: a TTL of 0 must not turn into a query loop.
  std::chrono::milliseconds min_ttl{1000};
  std::chrono::milliseconds max_ttl{300000};
  std::chrono::milliseconds timeout{2000}; // per resolution, every try and server together
};

struct DnsQuery {
  enum class Kind { host, srv };
  Kind kind = Kind::host;
  std::string name;  // "app.internal" (host) or "_http._tcp.app.internal" (srv), no search list
  uint16_t port = 0; // host queries only: the port every address gets
};

// One backend address.
struct DnsRecord {
  boost::asio::ip::address address;
  uint16_t port = 0;
  uint32_t priority = 0; // the SRV record's (0 for host queries)
  uint32_t weight = 1;   // the SRV record's, as given, 0 included (1 for host queries)
  std::string target;    // the SRV target in lower case, or the queried host name

  friend bool operator==(const DnsRecord&, const DnsRecord&) = default;
  // Priority first, so that a sorted set lists the preferred records first.
  friend bool operator<(const DnsRecord& a, const DnsRecord& b) {
    return std::tie(a.priority, a.target, a.address, a.port, a.weight) <
           std::tie(b.priority, b.target, b.address, b.port, b.weight);
  }
};

struct DnsAnswer {
  bool ok = false;
  // Why not, naming what failed: "app.internal: NXDOMAIN", "app.internal: timeout",
  // "_http._tcp.app.internal: web-1.internal: SERVFAIL".
  std::string error;
  std::vector<DnsRecord> records; // sorted, no duplicates; empty unless ok
  // The smallest TTL of the records used (CNAMEs, SRV and address records), unclamped; 0 when
  // there are none.
  std::chrono::milliseconds ttl{0};
};

// Host queries ask for A and AAAA at once; either may be empty, and a name with neither is an
// empty answer (ok) if it exists, NXDOMAIN (an error) if it does not. SRV queries ask for the
// SRV records, then take each target's addresses from the additional section when the server put
// any there, else ask for its A and AAAA. An SRV target that does not exist, or is "." (no
// service), adds no record. A failed A or AAAA question (a host's or a target's) is tolerated
// when the other family of the same name found addresses: some resolvers fail or drop AAAA
// questions, and would otherwise keep the name from ever resolving. Any other failure fails the
// whole answer, so that a partial answer is not taken for the full set.
class Resolver {
public:
  // Throws std::runtime_error when c-ares cannot set up a channel.
  explicit Resolver(const DnsSettings& settings);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Blocks the calling thread up to settings.timeout. One thread at a time.
  DnsAnswer resolve(const DnsQuery& query);
  // Resolves all of them at once on the channel: the whole batch takes at most settings.timeout.
  // Answers in query order.
  std::vector<DnsAnswer> resolve(const std::vector<DnsQuery>& queries);

  // Any thread: the resolve() in progress, and every later one, returns at once with its
  // unfinished answers failed ("...: cancelled"). For shutting down.
  void cancel();

private:
  struct Batch;
  struct Lookup;
  struct Ask;
  struct Family;
  struct Socket {
    int fd;
    bool read;
    bool write;
  };

  static void on_socket_state(void* self, int fd, int read, int write);
  static void on_answer(void* ask, int status, int timeouts, unsigned char* answer, int size);
  void ask(Batch& batch, Lookup& lookup, std::string name, int type, std::vector<DnsRecord> uses,
           Family* family = nullptr);
  // The A and AAAA questions of one name, as one Family.
  void ask_addresses(Batch& batch, Lookup& lookup, std::string name, std::vector<DnsRecord> uses);
  void answered(Ask& a, int status, const unsigned char* answer, int size);
  void on_srv(Batch& batch, Lookup& lookup, const unsigned char* answer, int size);
  void on_addresses(Lookup& lookup, const Ask& ask, const unsigned char* answer, int size);
  void drive(Batch& batch);

  std::chrono::milliseconds timeout_;
  ares_channeldata* channel_ = nullptr;
  std::vector<Socket> sockets_; // c-ares' sockets, kept by on_socket_state
  int wake_fd_ = -1;            // an eventfd: cancel() makes it readable for poll()
  std::atomic<bool> cancelled_{false};
};

// Re-resolves each query when its answer's TTL (clamped to [min_ttl, max_ttl]) runs out, all on
// one thread; the queries due together are resolved together. A failed resolution keeps the last
// good set (nothing is reported), is logged once per failure episode and is retried every
// max(min_ttl, 1 s); the answer that ends the episode is logged too.
class Discovery {
public:
  // Called on the discovery thread whenever a query's record set differs from the last one
  // reported; the first successful answer is always reported, even if empty. It must not call
  // stop() or destroy the Discovery.
  using Report = std::function<void(size_t query, const std::vector<DnsRecord>& records)>;
  // One line per event, without a prefix, e.g. "dns: app.internal: timeout; keeping the last 3
  // records, retrying every 1000 ms". lb passes lb::io::log; empty: "lb: LINE" on stderr.
  using Log = std::function<void(const std::string& line)>;

  Discovery(std::vector<DnsQuery> queries, DnsSettings settings, Report report, Log log = {});
  ~Discovery(); // stop()
  Discovery(const Discovery&) = delete;
  Discovery& operator=(const Discovery&) = delete;

  // Resolves every query once on the calling thread (at startup, lb resolves before it serves)
  // and returns the answers in query order: up to settings.timeout in all. The records of the ok
  // ones count as reported; the errors of the others are the caller's to log. Before start()
  // only (throws std::logic_error after).
  std::vector<DnsAnswer> resolve_all();
  // Starts the thread. Queries resolve_all() answered are next resolved at their clamped TTL,
  // failed ones after the retry delay, the others at once. Call once.
  void start();
  // Stops the thread, abandoning a resolution in flight: returns promptly, whatever the TTLs and
  // the timeout. Idempotent; not from Report.
  void stop();

  const std::vector<DnsQuery>& queries() const { return queries_; }

private:
  using Clock = std::chrono::steady_clock;
  struct State {                 // one query's, touched by one thread at a time
    Clock::time_point due{};     // its next resolution
    bool reported = false;       // `last` was reported (or returned by resolve_all)
    std::vector<DnsRecord> last; // the set reported last
    uint64_t failures = 0;       // in a row: the current failure episode
  };

  void run();
  void apply(size_t i, const DnsAnswer& answer, bool startup);
  void write_log(const std::string& line) const;

  std::vector<DnsQuery> queries_;
  DnsSettings settings_;
  std::chrono::milliseconds retry_;
  Report report_;
  Log log_;
  Resolver resolver_;
  std::vector<State> states_;
  std::mutex mutex_; // with wake_: the thread's waits for due queries or stop()
  std::condition_variable wake_;
  std::atomic<bool> stopping_{false}; // set under mutex_
  std::mutex thread_mutex_;           // guards thread_, started_, stopped_
  std::thread thread_;
  bool started_ = false;
  bool stopped_ = false;
};

} // namespace lb::healthcheck
