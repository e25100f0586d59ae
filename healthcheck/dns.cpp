// Resolver: every DnsQuery of a batch is a Lookup, and every DNS question a Lookup needs is an
// Ask (host: A and AAAA; SRV: the SRV question, then A and AAAA of the targets the additional
// section leaves out). c-ares calls on_answer once per Ask, on the resolving thread, from inside
// ares_process_fd(), or from ares_cancel() at the deadline; an answer may add Asks. drive() polls
// until no Ask is left in flight.
//
// Discovery: one thread waits on a condition variable for the earliest due query (or stop()),
// resolves every query due by then as one batch, and compares the answers with what it reported.
#include "healthcheck/dns.hpp"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <stdexcept>
#include <system_error>

namespace lb::healthcheck {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string lower(std::string name) {
  for (char& c : name)
    c = char(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string describe(int status) {
  switch (status) {
  case ARES_ENOTFOUND:
    return "NXDOMAIN";
  case ARES_ETIMEOUT:
    return "timeout";
  case ARES_ESERVFAIL:
    return "SERVFAIL";
  case ARES_EREFUSED:
    return "REFUSED";
  case ARES_EFORMERR:
    return "FORMERR";
  case ARES_ENOTIMP:
    return "NOTIMP";
  case ARES_ECONNREFUSED:
    // Also what c-ares 1.18 says when it could not even send (its initial error status).
    return "connection refused";
  default: {
    std::string text = ares_strerror(status);
    if (!text.empty())
      text[0] = char(std::tolower(static_cast<unsigned char>(text[0])));
    return text;
  }
  }
}

std::string count(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// One resource record of a DNS message, as read by for_each_record().
struct Record {
  int section; // ns_s_an, ns_s_ns or ns_s_ar
  std::string owner;
  uint16_t type;
  uint16_t klass;
  uint32_t ttl; // seconds, RFC 2181 section 8: one with the top bit set counts as 0
  const unsigned char* data;
  uint16_t size;
};

uint16_t get16(const unsigned char* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t get32(const unsigned char* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

// Calls f(record) for each record of the answer, authority and additional sections of message
// `m`, skipping names with ares_expand_name (they may be compressed). False if `m` is malformed.
// c-ares 1.18 parses SRV replies without their TTLs and never looks at the additional section:
// both are read here.
template <class F> bool for_each_record(const unsigned char* m, int size, F&& f) {
  constexpr int header = 12, question = 4, fixed = 10;
  if (size < header)
    return false;
  const unsigned counts[4] = {get16(m + 4), get16(m + 6), get16(m + 8), get16(m + 10)};
  const unsigned char* p = m + header;
  const unsigned char* const end = m + size;
  for (int section = ns_s_qd; section <= ns_s_ar; ++section) {
    for (unsigned i = 0; i < counts[section]; ++i) {
      char* name = nullptr;
      long length = 0;
      if (ares_expand_name(p, m, size, &name, &length) != ARES_SUCCESS)
        return false;
      std::string owner = name;
      ares_free_string(name);
      p += length;
      const int after = section == ns_s_qd ? question : fixed;
      if (end - p < after)
        return false;
      if (section == ns_s_qd) {
        p += question;
        continue;
      }
      const uint32_t ttl = get32(p + 4);
      Record record{.section = section,
                    .owner = std::move(owner),
                    .type = get16(p),
                    .klass = get16(p + 2),
                    .ttl = ttl > uint32_t(INT32_MAX) ? 0 : ttl,
                    .data = p + fixed,
                    .size = get16(p + 8)};
      p += fixed;
      if (end - p < record.size)
        return false;
      p += record.size;
      f(record);
    }
  }
  return true;
}

} // namespace

// ---- Resolver ----------------------------------------------------------------------------------

// The A and AAAA questions of one name (a `dns:` name, an SRV target): the failure of one
// fails the Lookup only if the other found no address. A resolver that fails AAAA questions
// must not hide the A records.
struct Resolver::Family {
  std::string error; // the first failure of the two
  size_t found = 0;  // addresses found by the two
  int open = 2;      // questions not answered yet
};

// One DnsQuery being resolved: what its Asks found so far.
struct Resolver::Lookup {
  const DnsQuery* query = nullptr;
  std::vector<DnsRecord> records;
  uint32_t ttl = UINT32_MAX;   // seconds: the smallest of the records used
  std::string error;           // the first failure: the answer fails with it
  std::deque<Family> families; // Asks point into it

  void fail(const std::string& name, const std::string& why) {
    if (error.empty())
      error = (name == query->name ? name : query->name + ": " + name) + ": " + why;
  }
  void fail(const Ask& a, const std::string& why);
  void add(const boost::asio::ip::address& address, uint32_t record_ttl,
           const std::vector<DnsRecord>& uses) {
    for (const DnsRecord& use : uses) {
      records.push_back(use);
      records.back().address = address;
    }
    ttl = std::min(ttl, record_ttl);
  }
};

// One question on the channel. Address questions carry the records each address they find
// becomes: the port, priority, weight and target of every SRV record naming the target.
struct Resolver::Ask {
  Resolver* resolver;
  Batch* batch;
  Lookup* lookup;
  std::string name;
  int type;
  std::vector<DnsRecord> uses;
  Family* family; // address questions: the pair this one belongs to
};

void Resolver::Lookup::fail(const Ask& a, const std::string& why) {
  if (!a.family)
    return fail(a.name, why);
  if (a.family->error.empty())
    a.family->error = why;
}

struct Resolver::Batch {
  std::vector<Lookup> lookups; // sized once: Asks point into it
  std::deque<Ask> asks;        // grows from callbacks; c-ares holds pointers to its elements
  size_t in_flight = 0;
  const char* closing = nullptr; // once set, why the Asks not answered fail: no new Ask starts
};

Resolver::Resolver(const DnsSettings& settings) : timeout_(std::max(settings.timeout, 1ms)) {
  // ares_library_init is not thread-safe in 1.18 (and a no-op on Linux): once per process.
  static const int library = ares_library_init(ARES_LIB_INIT_ALL);
  if (library != ARES_SUCCESS)
    throw std::runtime_error(std::string("c-ares: ") + ares_strerror(library));
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0)
    throw std::system_error(errno, std::generic_category(), "eventfd");

  // c-ares waits `timeout` for a try and doubles it after each round of the servers: a third of
  // ours gives one server two tries. Our deadline, not c-ares, ends a resolution.
  ares_options options{};
  options.timeout = int(std::max<int64_t>(1, timeout_.count() / 3));
  options.tries = 3;
  options.sock_state_cb = &Resolver::on_socket_state;
  options.sock_state_cb_data = this;
  int status = ares_init_options(&channel_, &options,
                                 ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB);
  if (status == ARES_SUCCESS && !settings.servers.empty()) {
    std::vector<ares_addr_port_node> nodes(settings.servers.size());
    for (size_t i = 0; i < nodes.size(); ++i) {
      const auto& server = settings.servers[i];
      ares_addr_port_node& node = nodes[i];
      node.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
      if (server.address().is_v4()) {
        node.family = AF_INET;
        node.addr.addr4.s_addr = htonl(server.address().to_v4().to_uint());
      } else {
        node.family = AF_INET6;
        const auto bytes = server.address().to_v6().to_bytes();
        std::memcpy(&node.addr.addr6, bytes.data(), bytes.size());
      }
      node.udp_port = node.tcp_port = server.port();
    }
    status = ares_set_servers_ports(channel_, nodes.data());
    if (status != ARES_SUCCESS)
      ares_destroy(channel_);
  }
  if (status != ARES_SUCCESS) {
    ::close(wake_fd_);
    throw std::runtime_error(std::string("c-ares: ") + ares_strerror(status));
  }
}

Resolver::~Resolver() {
  ares_destroy(channel_); // nothing in flight: resolve() never returns with Asks pending
  ::close(wake_fd_);
}

void Resolver::cancel() {
  cancelled_.store(true);
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one); // stays readable: cancel is final
}

DnsAnswer Resolver::resolve(const DnsQuery& query) {
  return std::move(resolve(std::vector<DnsQuery>{query}).at(0));
}

std::vector<DnsAnswer> Resolver::resolve(const std::vector<DnsQuery>& queries) {
  Batch batch;
  batch.lookups.resize(queries.size());
  if (cancelled_.load())
    batch.closing = "cancelled";
  for (size_t i = 0; i < queries.size(); ++i) {
    const DnsQuery& query = queries[i];
    Lookup& lookup = batch.lookups[i];
    lookup.query = &query;
    if (query.kind == DnsQuery::Kind::srv)
      ask(batch, lookup, query.name, ns_t_srv, {});
    else
      ask_addresses(batch, lookup, query.name, {DnsRecord{{}, query.port, 0, 1, query.name}});
  }
  drive(batch);

  std::vector<DnsAnswer> answers(queries.size());
  for (size_t i = 0; i < queries.size(); ++i) {
    Lookup& lookup = batch.lookups[i];
    DnsAnswer& answer = answers[i];
    if (!lookup.error.empty()) {
      answer.error = std::move(lookup.error);
      continue;
    }
    answer.ok = true;
    answer.records = std::move(lookup.records);
    std::sort(answer.records.begin(), answer.records.end());
    answer.records.erase(std::unique(answer.records.begin(), answer.records.end()),
                         answer.records.end());
    if (lookup.ttl != UINT32_MAX)
      answer.ttl = std::chrono::seconds(lookup.ttl);
  }
  return answers;
}

void Resolver::ask(Batch& batch, Lookup& lookup, std::string name, int type,
                   std::vector<DnsRecord> uses, Family* family) {
  if (batch.closing)
    return lookup.fail(name, batch.closing);
  Ask& a = batch.asks.emplace_back(
      Ask{this, &batch, &lookup, std::move(name), type, std::move(uses), family});
  ++batch.in_flight; // before ares_query: it may answer at once (e.g. a malformed name)
  ares_query(channel_, a.name.c_str(), ns_c_in, type, &Resolver::on_answer, &a);
}

void Resolver::ask_addresses(Batch& batch, Lookup& lookup, std::string name,
                             std::vector<DnsRecord> uses) {
  Family* family = &lookup.families.emplace_back();
  ask(batch, lookup, name, ns_t_a, uses, family);
  ask(batch, lookup, std::move(name), ns_t_aaaa, std::move(uses), family);
}

void Resolver::drive(Batch& batch) {
  const auto deadline = Clock::now() + timeout_;
  std::vector<pollfd> fds;
  while (batch.in_flight > 0) {
    const auto now = Clock::now();
    const char* stop = cancelled_.load() ? "cancelled" : now >= deadline ? "timeout" : nullptr;
    if (stop) {
      batch.closing = stop;
      ares_cancel(channel_); // on_answer(ARES_ECANCELLED) for every Ask in flight
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now);
    timeval max{time_t(left.count() / 1'000'000), suseconds_t(left.count() % 1'000'000)};
    timeval tv{};
    const timeval* next = ares_timeout(channel_, &max, &tv);
    // Rounded up: waking before c-ares' timeout is due would only poll again at once.
    const int ms = int(next->tv_sec * 1000 + (next->tv_usec + 999) / 1000);

    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    for (const Socket& s : sockets_)
      fds.push_back({s.fd, short((s.read ? POLLIN : 0) | (s.write ? POLLOUT : 0)), 0});
    const int n = ::poll(fds.data(), fds.size(), ms);
    if (n < 0 && errno != EINTR) {
      batch.closing = "poll failed";
      ares_cancel(channel_);
      break;
    }
    if (n <= 0) {
      ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD); // c-ares' timeouts
      continue;
    }
    // fds is a copy: processing may close sockets and so change sockets_.
    for (size_t i = 1; i < fds.size(); ++i) {
      const short events = fds[i].revents;
      if (events == 0)
        continue;
      ares_process_fd(channel_, events & (POLLIN | POLLERR | POLLHUP) ? fds[i].fd : ARES_SOCKET_BAD,
                      events & POLLOUT ? fds[i].fd : ARES_SOCKET_BAD);
    }
  }
}

void Resolver::on_socket_state(void* self, int fd, int read, int write) {
  auto& sockets = static_cast<Resolver*>(self)->sockets_;
  auto it =
      std::find_if(sockets.begin(), sockets.end(), [fd](const Socket& s) { return s.fd == fd; });
  if (!read && !write) {
    if (it != sockets.end())
      sockets.erase(it);
  } else if (it != sockets.end()) {
    it->read = read;
    it->write = write;
  } else {
    sockets.push_back({fd, bool(read), bool(write)});
  }
}

void Resolver::on_answer(void* arg, int status, int, unsigned char* answer, int size) {
  Ask& a = *static_cast<Ask*>(arg);
  --a.batch->in_flight;
  // Called from C: nothing may escape.
  try {
    a.resolver->answered(a, status, answer, size);
  } catch (const std::exception& e) {
    a.lookup->fail(a, e.what());
  }
  Family* family = a.family;
  if (family && --family->open == 0 && family->found == 0 && !family->error.empty())
    a.lookup->fail(a.name, family->error);
}

void Resolver::answered(Ask& a, int status, const unsigned char* answer, int size) {
  Lookup& lookup = *a.lookup;
  if (status == ARES_ECANCELLED)
    return lookup.fail(a, a.batch->closing ? a.batch->closing : "cancelled");
  if (status == ARES_ENODATA)
    return; // the name exists, without records of this type
  if (status == ARES_ENOTFOUND && a.type != ns_t_srv && lookup.query->kind == DnsQuery::Kind::srv)
    return; // an SRV target that does not exist serves nothing
  if (status != ARES_SUCCESS)
    return lookup.fail(a, describe(status));
  if (a.type == ns_t_srv)
    on_srv(*a.batch, lookup, answer, size);
  else
    on_addresses(lookup, a, answer, size);
}

void Resolver::on_srv(Batch& batch, Lookup& lookup, const unsigned char* answer, int size) {
  const std::string& name = lookup.query->name;
  ares_srv_reply* list = nullptr;
  const int status = ares_parse_srv_reply(answer, size, &list);
  std::unique_ptr<ares_srv_reply, void (*)(void*)> replies(list, &ares_free_data);
  if (status == ARES_ENODATA)
    return;
  if (status != ARES_SUCCESS)
    return lookup.fail(name, "bad SRV answer: " + describe(status));
  // The targets in answer order, each with the records its addresses become.
  std::vector<std::pair<std::string, std::vector<DnsRecord>>> targets;
  for (const ares_srv_reply* r = replies.get(); r; r = r->next) {
    std::string target = lower(r->host);
    if (target.empty() || target == ".")
      continue; // RFC 2782: the service is decidedly not available here
    auto it = std::find_if(targets.begin(), targets.end(),
                           [&](const auto& t) { return t.first == target; });
    if (it == targets.end())
      it = targets.insert(targets.end(), {target, {}});
    it->second.push_back(DnsRecord{{}, r->port, r->priority, r->weight, target});
  }

  struct Extra {
    std::string owner;
    boost::asio::ip::address address;
    uint32_t ttl;
  };
  std::vector<Extra> extras;
  const bool well_formed = for_each_record(answer, size, [&](const Record& r) {
    if (r.klass != ns_c_in)
      return;
    if (r.section == ns_s_an && (r.type == ns_t_srv || r.type == ns_t_cname)) {
      lookup.ttl = std::min(lookup.ttl, r.ttl);
    } else if (r.section == ns_s_ar && r.type == ns_t_a && r.size == 4) {
      extras.push_back({lower(r.owner), boost::asio::ip::address_v4(get32(r.data)), r.ttl});
    } else if (r.section == ns_s_ar && r.type == ns_t_aaaa && r.size == 16) {
      boost::asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), r.data, bytes.size());
      extras.push_back({lower(r.owner), boost::asio::ip::address_v6(bytes), r.ttl});
    }
  });
  if (!well_formed)
    return lookup.fail(name, "malformed SRV answer");

  for (auto& [target, uses] : targets) {
    bool found = false;
    for (const Extra& extra : extras) {
      if (extra.owner == target) {
        lookup.add(extra.address, extra.ttl, uses);
        found = true;
      }
    }
    if (!found)
      ask_addresses(batch, lookup, target, std::move(uses));
  }
}

void Resolver::on_addresses(Lookup& lookup, const Ask& a, const unsigned char* answer, int size) {
  // Room for every address the message can hold (an A record takes 16 bytes at least, an AAAA
  // 28): the parsers silently stop at the count given.
  const size_t room = size_t(size) / 16 + 1;
  int n = int(room);
  int status;
  const size_t before = lookup.records.size();
  if (a.type == ns_t_a) {
    std::vector<ares_addrttl> found(room);
    status = ares_parse_a_reply(answer, size, nullptr, found.data(), &n);
    for (int i = 0; status == ARES_SUCCESS && i < n; ++i)
      lookup.add(boost::asio::ip::address_v4(ntohl(found[i].ipaddr.s_addr)),
                 uint32_t(std::max(found[i].ttl, 0)), a.uses);
  } else {
    std::vector<ares_addr6ttl> found(room);
    status = ares_parse_aaaa_reply(answer, size, nullptr, found.data(), &n);
    for (int i = 0; status == ARES_SUCCESS && i < n; ++i) {
      boost::asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), &found[i].ip6addr, bytes.size());
      lookup.add(boost::asio::ip::address_v6(bytes), uint32_t(std::max(found[i].ttl, 0)), a.uses);
    }
  }
  if (a.family)
    a.family->found += lookup.records.size() - before;
  // ENODATA: only CNAMEs, or records of other types.
  if (status != ARES_SUCCESS && status != ARES_ENODATA)
    lookup.fail(a, "bad answer: " + describe(status));
}

// ---- Discovery ---------------------------------------------------------------------------------

namespace {

DnsSettings normalized(DnsSettings settings) {
  settings.min_ttl = std::max(settings.min_ttl, std::chrono::milliseconds(100ms));
  settings.max_ttl = std::max(settings.max_ttl, settings.min_ttl);
  settings.timeout = std::max(settings.timeout, std::chrono::milliseconds(1ms));
  return settings;
}

} // namespace

Discovery::Discovery(std::vector<DnsQuery> queries, DnsSettings settings, Report report, Log log)
    : queries_(std::move(queries)), settings_(normalized(std::move(settings))),
      retry_(std::max(settings_.min_ttl, std::chrono::milliseconds(1s))),
      report_(std::move(report)), log_(std::move(log)), resolver_(settings_),
      states_(queries_.size()) {}

Discovery::~Discovery() { stop(); }

std::vector<DnsAnswer> Discovery::resolve_all() {
  {
    std::lock_guard lock(thread_mutex_);
    if (started_)
      throw std::logic_error("Discovery::resolve_all() after start()");
  }
  auto answers = resolver_.resolve(queries_);
  for (size_t i = 0; i < answers.size(); ++i)
    apply(i, answers[i], true);
  return answers;
}

void Discovery::start() {
  std::lock_guard lock(thread_mutex_);
  if (started_ || stopped_)
    return;
  started_ = true;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "lb-dns");
    run();
  });
}

void Discovery::stop() {
  std::lock_guard lock(thread_mutex_);
  if (stopped_)
    return;
  stopped_ = true;
  {
    std::lock_guard wait_lock(mutex_);
    stopping_.store(true);
  }
  wake_.notify_all();
  resolver_.cancel(); // a resolution in flight ends now, not at its timeout
  if (thread_.joinable())
    thread_.join();
}

void Discovery::run() {
  std::vector<size_t> due;
  std::vector<DnsQuery> batch;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      auto stopping = [this] { return stopping_.load(); };
      if (states_.empty()) {
        wake_.wait(lock, stopping);
      } else {
        auto next = states_[0].due;
        for (const State& s : states_)
          next = std::min(next, s.due);
        wake_.wait_until(lock, next, stopping);
      }
      if (stopping_.load())
        return;
    }
    const auto now = Clock::now();
    due.clear();
    batch.clear();
    for (size_t i = 0; i < states_.size(); ++i) {
      if (states_[i].due <= now) {
        due.push_back(i);
        batch.push_back(queries_[i]);
      }
    }
    if (due.empty())
      continue;
    const auto answers = resolver_.resolve(batch);
    if (stopping_.load())
      return; // abandoned, not failed: nothing to log
    for (size_t k = 0; k < due.size(); ++k)
      apply(due[k], answers[k], false);
  }
}

void Discovery::apply(size_t i, const DnsAnswer& answer, bool startup) {
  State& s = states_[i];
  const auto now = Clock::now();
  if (!answer.ok) {
    s.due = now + retry_;
    if (s.failures++ == 0 && !startup)
      write_log("dns: " + answer.error + "; " +
                (s.reported ? "keeping the last " + count(s.last.size(), "record", "records")
                            : std::string("no records yet")) +
                ", retrying every " + std::to_string(retry_.count()) + " ms");
    return;
  }
  s.due = now + std::clamp(answer.ttl, settings_.min_ttl, settings_.max_ttl);
  if (s.failures > 0)
    write_log("dns: " + queries_[i].name + ": resolved again after " +
              count(s.failures, "failed attempt", "failed attempts") + ": " +
              count(answer.records.size(), "record", "records"));
  s.failures = 0;
  if (s.reported && answer.records == s.last)
    return;
  s.last = answer.records;
  s.reported = true;
  if (!startup && report_)
    report_(i, s.last);
}

void Discovery::write_log(const std::string& line) const {
  if (log_)
    return log_(line);
  const std::string text = "lb: " + line + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr); // one write: lines from threads stay whole
}

} // namespace lb::healthcheck
