#include "healthcheck/dns.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using lb::healthcheck::Discovery;
using lb::healthcheck::DnsAnswer;
using lb::healthcheck::DnsQuery;
using lb::healthcheck::DnsRecord;
using lb::healthcheck::DnsSettings;
using lb::healthcheck::Resolver;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kDnsmasq = "/usr/sbin/dnsmasq";

// A loopback port free for both UDP and TCP (dnsmasq serves both on one port).
uint16_t free_port() {
  for (int attempt = 0; attempt < 100; ++attempt) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t size = sizeof a;
    if (bind(udp, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        getsockname(udp, reinterpret_cast<sockaddr*>(&a), &size) != 0) {
      close(udp);
      continue;
    }
    int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool both = bind(tcp, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(tcp);
    close(udp);
    if (both)
      return ntohs(a.sin_port);
  }
  throw std::runtime_error("no free port");
}

// The real dnsmasq on 127.0.0.1 and a port of its own, serving only the records of its config
// lines (no /etc/hosts, no resolv.conf, no upstream: other names are NXDOMAIN), every query
// logged to a file. Killed by the destructor, or with the test process (PR_SET_PDEATHSIG).
class Dnsmasq {
public:
  Dnsmasq() {
    char dir[] = "/tmp/lb-dns-test-XXXXXX";
    if (!mkdtemp(dir))
      throw std::runtime_error("mkdtemp failed");
    dir_ = dir;
  }
  ~Dnsmasq() {
    kill();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  Dnsmasq(const Dnsmasq&) = delete;
  Dnsmasq& operator=(const Dnsmasq&) = delete;

  // Config lines: "host-record=NAME,ADDRESS,TTL", "srv-host=...", "txt-record=...", "cname=...".
  Dnsmasq& host(const std::string& name, const std::string& address, int ttl) {
    lines_.push_back("host-record=" + name + "," + address + "," + std::to_string(ttl));
    return *this;
  }
  Dnsmasq& srv(const std::string& name, const std::string& target, uint16_t port, uint32_t priority,
               uint32_t weight) {
    lines_.push_back("srv-host=" + name + "," + target + "," + std::to_string(port) + "," +
                     std::to_string(priority) + "," + std::to_string(weight));
    return *this;
  }
  Dnsmasq& line(std::string text) {
    lines_.push_back(std::move(text));
    return *this;
  }
  void clear() { lines_.clear(); }
  // The TTL of the records without one of their own: SRV records here.
  void local_ttl(int seconds) { local_ttl_ = seconds; }

  // Starts on a new port, or (restart) again on the same one.
  void start() {
    if (port_ == 0)
      port_ = free_port();
    for (int attempt = 0; attempt < 50; ++attempt) {
      spawn();
      if (ready())
        return;
      kill();
      std::this_thread::sleep_for(100ms);
    }
    throw std::runtime_error("dnsmasq did not start; its output:\n" + read(dir_ + "/output.txt"));
  }
  void restart() {
    kill();
    start();
  }
  void pause() { ::kill(pid_, SIGSTOP); } // stops answering: queries time out
  void resume() { ::kill(pid_, SIGCONT); }
  void kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  uint16_t port() const { return port_; }
  asio::ip::udp::endpoint endpoint() const { return {asio::ip::make_address("127.0.0.1"), port_}; }

  // How many queries of `type` for `name` dnsmasq logged so far.
  int queries(const std::string& type, const std::string& name) const {
    std::istringstream log(read(dir_ + "/dnsmasq.log"));
    const std::string needle = "query[" + type + "] " + name + " from";
    int n = 0;
    for (std::string line; std::getline(log, line);)
      n += line.find(needle) != std::string::npos;
    return n;
  }

private:
  static std::string read(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  void spawn() {
    {
      std::ofstream conf(dir_ + "/dnsmasq.conf", std::ios::trunc);
      for (const auto& l : lines_)
        conf << l << "\n";
    }
    std::vector<std::string> args = {kDnsmasq,
                                     "--no-daemon",
                                     "--conf-file=" + dir_ + "/dnsmasq.conf",
                                     "--no-hosts",
                                     "--no-resolv",
                                     "--local=/#/",
                                     "--bind-interfaces",
                                     "--listen-address=127.0.0.1",
                                     "--port=" + std::to_string(port_),
                                     "--local-ttl=" + std::to_string(local_ttl_),
                                     "--log-queries",
                                     "--log-facility=" + dir_ + "/dnsmasq.log",
                                     "--pid-file=" + dir_ + "/dnsmasq.pid"};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string output = dir_ + "/output.txt";
    int out = open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) { // only async-signal-safe calls from here to exec
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent)
        _exit(1);
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0);
      dup2(out, 1);
      dup2(out, 2);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out);
  }

  // Whether it answers a query (any answer) within 5 s, and has not exited.
  bool ready() {
    // A query for probe.invalid, type A: NXDOMAIN here.
    static const char query[] = "\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" // header
                                "\x05probe\x07invalid\x00"                         // name
                                "\x00\x01\x00\x01";                                // A, IN
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(port_);
    bool answered = false;
    const auto end = Clock::now() + 5s;
    while (!answered && Clock::now() < end && waitpid(pid_, nullptr, WNOHANG) == 0) {
      sendto(s, query, sizeof query - 1, 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
      pollfd p{s, POLLIN, 0};
      if (poll(&p, 1, 100) == 1) {
        unsigned char answer[512];
        answered = recv(s, answer, sizeof answer, 0) >= 12 && answer[0] == 0x12;
      }
    }
    close(s);
    return answered;
  }

  std::string dir_;
  std::vector<std::string> lines_;
  int local_ttl_ = 5;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

DnsSettings settings_for(const Dnsmasq& dns, std::chrono::milliseconds timeout = 1000ms) {
  DnsSettings s;
  s.servers = {dns.endpoint()};
  s.timeout = timeout;
  return s;
}

DnsQuery host(std::string name, uint16_t port) {
  return {DnsQuery::Kind::host, std::move(name), port};
}
DnsQuery srv(std::string name) { return {DnsQuery::Kind::srv, std::move(name), 0}; }

DnsRecord record(const std::string& address, uint16_t port, std::string target,
                 uint32_t priority = 0, uint32_t weight = 1) {
  return {asio::ip::make_address(address), port, priority, weight, std::move(target)};
}

std::string show(const std::vector<DnsRecord>& records) {
  std::string text;
  for (const auto& r : records)
    text += r.target + "=" + r.address.to_string() + ":" + std::to_string(r.port) + "/p" +
            std::to_string(r.priority) + "/w" + std::to_string(r.weight) + " ";
  return text;
}

// Collects what a Discovery reports and logs.
class Recorder {
public:
  struct Report {
    size_t query;
    std::vector<DnsRecord> records;
    Clock::time_point when;
  };

  Discovery::Report report() {
    return [this](size_t query, const std::vector<DnsRecord>& records) {
      std::lock_guard lock(mutex_);
      reports_.push_back({query, records, Clock::now()});
      changed_.notify_all();
    };
  }
  Discovery::Log log() {
    return [this](const std::string& line) {
      std::lock_guard lock(mutex_);
      logs_.push_back(line);
    };
  }

  // Waits until `n` reports came or `timeout` passed; returns them all.
  std::vector<Report> wait(size_t n, Clock::duration timeout) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return reports_.size() >= n; });
    return reports_;
  }
  std::vector<Report> reports() {
    std::lock_guard lock(mutex_);
    return reports_;
  }
  std::vector<std::string> logs() {
    std::lock_guard lock(mutex_);
    return logs_;
  }

private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Report> reports_;
  std::vector<std::string> logs_;
};

class DnsTest : public ::testing::Test {
protected:
  void SetUp() override {
    if (access(kDnsmasq, X_OK) != 0)
      GTEST_SKIP() << kDnsmasq << " is not installed (Debian: dnsmasq-base)";
  }
  Dnsmasq dns;
};

using ResolverTest = DnsTest;
using DiscoveryTest = DnsTest;

} // namespace

TEST_F(ResolverTest, HostRecordsComeSortedWithThePortAndTheirTtl) {
  dns.host("app.internal", "127.0.0.4", 5).host("app.internal", "127.0.0.2", 5);
  dns.host("app.internal", "127.0.0.3", 5).start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(host("app.internal", 8080));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, (std::vector<DnsRecord>{record("127.0.0.2", 8080, "app.internal"),
                                               record("127.0.0.3", 8080, "app.internal"),
                                               record("127.0.0.4", 8080, "app.internal")}))
      << show(a.records);
  EXPECT_EQ(a.ttl, 5s);
  EXPECT_EQ(a.error, "");
}

TEST_F(ResolverTest, AaaaRecordsToo) {
  dns.host("app.internal", "127.0.0.2", 30).host("app.internal", "::1", 20).start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(host("app.internal", 80));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, (std::vector<DnsRecord>{record("127.0.0.2", 80, "app.internal"),
                                               record("::1", 80, "app.internal")}))
      << show(a.records);
  EXPECT_EQ(a.ttl, 20s); // the smallest
  // Only AAAA: fine too.
  dns.clear();
  dns.host("six.internal", "::1", 20).restart();
  a = resolver.resolve(host("six.internal", 80));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, std::vector<DnsRecord>{record("::1", 80, "six.internal")});
}

TEST_F(ResolverTest, ANameWithoutAddressesIsAnEmptyAnswer) {
  dns.line("txt-record=empty.internal,here").start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(host("empty.internal", 80));
  EXPECT_TRUE(a.ok) << a.error;
  EXPECT_TRUE(a.records.empty());
  EXPECT_EQ(a.ttl, 0ms);
}

// A DNS server on a loopback UDP port that answers A questions with `a_address`,
// SRV questions for _http.* with one SRV record (target web.internal, nothing in
// the additional section), and fails every other question with SERVFAIL (some
// resolvers and DNS64 set-ups do that to AAAA). Serves until destroyed.
class AOnlyServer {
public:
  explicit AOnlyServer(const char* a_address) {
    inet_pton(AF_INET, a_address, &address_);
    fd_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof a;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &size) != 0)
      throw std::runtime_error("cannot bind the test DNS server");
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~AOnlyServer() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  DnsSettings settings() const {
    DnsSettings s;
    s.servers = {asio::ip::udp::endpoint(asio::ip::make_address("127.0.0.1"), port_)};
    s.timeout = 1000ms;
    return s;
  }

private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      unsigned char q[512];
      sockaddr_in from{};
      socklen_t from_size = sizeof from;
      ssize_t n = recvfrom(fd_, q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &from_size);
      if (n < 12)
        continue;
      size_t i = 12; // the question's name, then its type and class
      while (i < size_t(n) && q[i] != 0)
        i += q[i] + 1u;
      if (i + 5 > size_t(n))
        continue;
      size_t question_end = i + 5;
      int type = q[i + 1] << 8 | q[i + 2];
      std::vector<unsigned char> r(q, q + question_end);
      r[2] = 0x80 | (q[2] & 0x01); // a response; RD copied
      r[3] = 0x80;                 // RA, NOERROR
      r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0;
      if (type == 1) {
        r[7] = 1; // one answer: the name by pointer, A, IN, TTL 5, 4 bytes
        const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4};
        r.insert(r.end(), rr, rr + sizeof rr);
        const auto* bytes = reinterpret_cast<const unsigned char*>(&address_);
        r.insert(r.end(), bytes, bytes + 4);
      } else if (type == 33 && q[12] == 5 && std::memcmp(q + 13, "_http", 5) == 0) {
        // _http.*: one SRV record, priority 10, weight 3, port 8081, target web.internal,
        // and no additional section: the target's A and AAAA are asked next.
        r[7] = 1;
        const unsigned char rr[] = {0xc0, 0x0c, 0,   33,  0,   1,    0,    0,   0,   5,   0,
                                    20,   0,    10,  0,   3,   0x1f, 0x91, 3,   'w', 'e', 'b',
                                    8,    'i',  'n', 't', 'e', 'r',  'n',  'a', 'l', 0};
        r.insert(r.end(), rr, rr + sizeof rr);
      } else {
        r[3] = 0x80 | 2; // SERVFAIL
      }
      sendto(fd_, r.data(), r.size(), 0, reinterpret_cast<sockaddr*>(&from), from_size);
    }
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  in_addr address_{};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A name whose A question is answered and whose AAAA question fails resolves
// to its A records: the failure of one family must not hide the other.
TEST(ResolverFamilies, AFailedAaaaQuestionKeepsTheARecords) {
  AOnlyServer server("127.0.0.7");
  Resolver resolver(server.settings());
  DnsAnswer a = resolver.resolve(host("app.internal", 8080));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, (std::vector<DnsRecord>{record("127.0.0.7", 8080, "app.internal")}))
      << show(a.records);
  EXPECT_EQ(a.ttl, 5s);
  // So does an SRV target whose AAAA question fails.
  DnsAnswer t = resolver.resolve(srv("_http._tcp.app.internal"));
  ASSERT_TRUE(t.ok) << t.error;
  EXPECT_EQ(t.records, (std::vector<DnsRecord>{record("127.0.0.7", 8081, "web.internal", 10, 3)}))
      << show(t.records);
  // An SRV question that fails is still an error (c-ares may report the
  // SERVFAIL server as refusing by then).
  DnsAnswer s = resolver.resolve(srv("_grpc._tcp.app.internal"));
  EXPECT_FALSE(s.ok);
  EXPECT_TRUE(s.records.empty());
  EXPECT_FALSE(s.error.empty());
}

TEST_F(ResolverTest, NxdomainIsAnError) {
  dns.host("app.internal", "127.0.0.2", 5).start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(host("nope.internal", 80));
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.error, "nope.internal: NXDOMAIN");
  EXPECT_TRUE(a.records.empty());
}

TEST_F(ResolverTest, ASilentServerTimesOutWithinTheTimeout) {
  dns.host("app.internal", "127.0.0.2", 5).start();
  dns.pause();
  Resolver resolver(settings_for(dns, 1000ms));
  auto begin = Clock::now();
  DnsAnswer a = resolver.resolve(host("app.internal", 80));
  auto took = Clock::now() - begin;
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.error, "app.internal: timeout");
  EXPECT_GE(took, 900ms);
  EXPECT_LT(took, 2000ms);
  // It answers again once resumed; the late answers to the old queries are ignored.
  dns.resume();
  a = resolver.resolve(host("app.internal", 80));
  EXPECT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records.size(), 1u);
}

TEST_F(ResolverTest, AnUnusedPortFailsWithinTheTimeout) {
  DnsSettings s;
  s.servers = {{asio::ip::make_address("127.0.0.1"), free_port()}};
  s.timeout = 1000ms;
  Resolver resolver(s);
  auto begin = Clock::now();
  DnsAnswer a = resolver.resolve(host("app.internal", 80));
  auto took = Clock::now() - begin;
  EXPECT_FALSE(a.ok);
  // Loopback answers with ICMP port unreachable: c-ares gives up before the timeout.
  EXPECT_TRUE(a.error == "app.internal: connection refused" || a.error == "app.internal: timeout")
      << a.error;
  EXPECT_LT(took, 2000ms);
}

TEST_F(ResolverTest, TheNextServerAnswersWhenTheFirstDoesNot) {
  dns.host("app.internal", "127.0.0.2", 5).start();
  DnsSettings s = settings_for(dns);
  s.servers.insert(s.servers.begin(), {asio::ip::make_address("127.0.0.1"), free_port()});
  Resolver resolver(s);
  DnsAnswer a = resolver.resolve(host("app.internal", 80));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, std::vector<DnsRecord>{record("127.0.0.2", 80, "app.internal")});
}

TEST_F(ResolverTest, SrvRecordsGiveTheirTargetsAddressesPortsPrioritiesAndWeights) {
  dns.srv("_http._tcp.app.internal", "web1.internal", 8081, 10, 1);
  dns.srv("_http._tcp.app.internal", "web2.internal", 8082, 20, 3);
  dns.host("web1.internal", "127.0.0.5", 7).host("web2.internal", "127.0.0.6", 9);
  dns.host("web2.internal", "::2", 9);
  dns.local_ttl(3); // the SRV records': smaller than the addresses'
  dns.start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(srv("_http._tcp.app.internal"));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, (std::vector<DnsRecord>{record("127.0.0.5", 8081, "web1.internal", 10, 1),
                                               record("127.0.0.6", 8082, "web2.internal", 20, 3),
                                               record("::2", 8082, "web2.internal", 20, 3)}))
      << show(a.records);
  EXPECT_EQ(a.ttl, 3s);
  // dnsmasq put the addresses in the additional section: no question about the targets.
  EXPECT_EQ(dns.queries("A", "web1.internal"), 0);
  EXPECT_EQ(dns.queries("AAAA", "web2.internal"), 0);
}

TEST_F(ResolverTest, SrvTargetsMissingFromTheAdditionalSectionAreAskedFor) {
  // dnsmasq adds no additional record for a target that is a CNAME.
  dns.srv("_http._tcp.app.internal", "alias.internal", 8081, 1, 1);
  dns.line("cname=alias.internal,web1.internal,4").host("web1.internal", "127.0.0.5", 7);
  dns.local_ttl(30);
  dns.start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(srv("_http._tcp.app.internal"));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, std::vector<DnsRecord>{record("127.0.0.5", 8081, "alias.internal", 1, 1)})
      << show(a.records);
  EXPECT_EQ(a.ttl, 4s); // the CNAME's
  EXPECT_EQ(dns.queries("A", "alias.internal"), 1);
  EXPECT_EQ(dns.queries("AAAA", "alias.internal"), 1);
}

TEST_F(ResolverTest, SrvTargetsThatDoNotExistOrAreTheRootServeNothing) {
  dns.srv("_http._tcp.app.internal", "ghost.internal", 8081, 1, 1);
  dns.line("srv-host=_http._tcp.app.internal,.,8082,1,1");
  dns.srv("_http._tcp.app.internal", "web1.internal", 8083, 1, 1);
  dns.host("web1.internal", "127.0.0.5", 7);
  dns.start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(srv("_http._tcp.app.internal"));
  ASSERT_TRUE(a.ok) << a.error;
  EXPECT_EQ(a.records, std::vector<DnsRecord>{record("127.0.0.5", 8083, "web1.internal", 1, 1)})
      << show(a.records);
}

TEST_F(ResolverTest, AnSrvNameThatDoesNotExistIsAnError) {
  dns.host("web1.internal", "127.0.0.5", 7).start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(srv("_http._tcp.nope.internal"));
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.error, "_http._tcp.nope.internal: NXDOMAIN");
}

TEST_F(ResolverTest, AnAnswerTooLargeForUdpComesOverTcp) {
  for (int i = 1; i <= 100; ++i)
    dns.host("big.internal", "10.0.0." + std::to_string(i), 30);
  dns.start();
  Resolver resolver(settings_for(dns));
  DnsAnswer a = resolver.resolve(host("big.internal", 80));
  ASSERT_TRUE(a.ok) << a.error;
  ASSERT_EQ(a.records.size(), 100u);
  EXPECT_EQ(a.records.front().address.to_string(), "10.0.0.1");
  EXPECT_TRUE(std::is_sorted(a.records.begin(), a.records.end()));
}

TEST_F(ResolverTest, ABatchAnswersInQueryOrderWithinOneTimeout) {
  dns.host("a.internal", "127.0.0.2", 5).host("b.internal", "127.0.0.3", 6).start();
  Resolver resolver(settings_for(dns));
  auto answers = resolver.resolve(std::vector<DnsQuery>{
      host("b.internal", 1), host("nope.internal", 2), host("a.internal", 3)});
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_EQ(answers[0].records, std::vector<DnsRecord>{record("127.0.0.3", 1, "b.internal")});
  EXPECT_EQ(answers[0].ttl, 6s);
  EXPECT_EQ(answers[1].error, "nope.internal: NXDOMAIN");
  EXPECT_EQ(answers[2].records, std::vector<DnsRecord>{record("127.0.0.2", 3, "a.internal")});

  dns.pause();
  auto begin = Clock::now();
  answers = resolver.resolve(std::vector<DnsQuery>{host("a.internal", 1), host("b.internal", 2)});
  EXPECT_LT(Clock::now() - begin, 2000ms); // one timeout for the batch, not one each
  EXPECT_EQ(answers.at(0).error, "a.internal: timeout");
  EXPECT_EQ(answers.at(1).error, "b.internal: timeout");
}

TEST_F(ResolverTest, CancelEndsAResolutionAtOnceAndEveryLaterOne) {
  dns.host("app.internal", "127.0.0.2", 5).start();
  dns.pause();
  Resolver resolver(settings_for(dns, 10s));
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    resolver.cancel();
  });
  auto begin = Clock::now();
  DnsAnswer a = resolver.resolve(host("app.internal", 80));
  canceller.join();
  EXPECT_LT(Clock::now() - begin, 1s);
  EXPECT_EQ(a.error, "app.internal: cancelled");
  dns.resume();
  a = resolver.resolve(host("app.internal", 80));
  EXPECT_EQ(a.error, "app.internal: cancelled");
}

TEST_F(DiscoveryTest, ReportsTheNewSetWithinTheTtlAfterTheRecordsChange) {
  dns.host("app.internal", "127.0.0.2", 1).host("app.internal", "127.0.0.3", 1).start();
  Recorder recorder;
  Discovery discovery({host("other.internal", 1), host("app.internal", 8080)}, settings_for(dns),
                      recorder.report(), recorder.log());
  auto answers = discovery.resolve_all();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_FALSE(answers[0].ok);
  ASSERT_TRUE(answers[1].ok) << answers[1].error;
  EXPECT_EQ(answers[1].records.size(), 2u);
  discovery.start();

  dns.clear();
  dns.host("app.internal", "127.0.0.3", 1).host("app.internal", "127.0.0.4", 1).restart();
  const auto changed = Clock::now();
  auto reports = recorder.wait(1, 3s);
  // resolve_all's answer counts as reported: the first report is the change.
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].query, 1u);
  EXPECT_EQ(reports[0].records, (std::vector<DnsRecord>{record("127.0.0.3", 8080, "app.internal"),
                                                        record("127.0.0.4", 8080, "app.internal")}))
      << show(reports[0].records);
  EXPECT_LT(reports[0].when - changed, 3s);
  // Unchanged answers are not reported again.
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(recorder.reports().size(), 1u);
  discovery.stop();
}

TEST_F(DiscoveryTest, KeepsTheLastSetWhileTheServerIsSilentAndLogsTheEpisodeOnce) {
  dns.host("app.internal", "127.0.0.2", 1).start();
  Recorder recorder;
  DnsSettings s = settings_for(dns, 300ms);
  Discovery discovery({host("app.internal", 80)}, s, recorder.report(), recorder.log());
  discovery.start();
  auto reports = recorder.wait(1, 3s);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].records, std::vector<DnsRecord>{record("127.0.0.2", 80, "app.internal")});

  dns.pause();
  std::this_thread::sleep_for(4s);          // three or four failed attempts, a second apart
  EXPECT_EQ(recorder.reports().size(), 1u); // no empty set
  auto logs = recorder.logs();
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0],
            "dns: app.internal: timeout; keeping the last 1 record, retrying every 1000 ms");

  dns.resume();
  ASSERT_TRUE([&] {
    for (auto end = Clock::now() + 3s; Clock::now() < end; std::this_thread::sleep_for(20ms))
      if (recorder.logs().size() == 2)
        return true;
    return false;
  }());
  EXPECT_TRUE(recorder.logs()[1].starts_with("dns: app.internal: resolved again after "))
      << recorder.logs()[1];
  EXPECT_TRUE(recorder.logs()[1].ends_with(" failed attempts: 1 record")) << recorder.logs()[1];
  EXPECT_EQ(recorder.reports().size(), 1u); // the same set
}

TEST_F(DiscoveryTest, MinTtlClampsATtlOfZero) {
  dns.host("zero.internal", "127.0.0.9", 0).start();
  Recorder recorder;
  DnsSettings s = settings_for(dns);
  s.min_ttl = 1000ms;
  Discovery discovery({host("zero.internal", 80)}, s, recorder.report(), recorder.log());
  discovery.start();
  ASSERT_EQ(recorder.wait(1, 2s).size(), 1u);
  const auto first = Clock::now();
  std::this_thread::sleep_for(3200ms);
  discovery.stop();
  std::this_thread::sleep_for(200ms); // dnsmasq writes its log asynchronously
  // Resolutions at about 0, 1, 2 and 3 s: not a query loop.
  const int asked = dns.queries("A", "zero.internal");
  EXPECT_GE(asked, 3);
  EXPECT_LE(asked, 5);
  EXPECT_LT(Clock::now() - first, 4s);
}

TEST_F(DiscoveryTest, TheFirstAnswerIsReportedEvenIfEmpty) {
  dns.line("txt-record=empty.internal,here").start();
  Recorder recorder;
  Discovery discovery({host("empty.internal", 80)}, settings_for(dns), recorder.report(),
                      recorder.log());
  discovery.start();
  auto reports = recorder.wait(1, 3s);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(reports[0].records.empty());
}

TEST_F(DiscoveryTest, AFailedStartupResolutionIsRetriedAndLoggedWhenItRecovers) {
  dns.start();
  Recorder recorder;
  Discovery discovery({srv("_http._tcp.app.internal")}, settings_for(dns), recorder.report(),
                      recorder.log());
  auto answers = discovery.resolve_all();
  EXPECT_EQ(answers.at(0).error, "_http._tcp.app.internal: NXDOMAIN");
  discovery.start();
  dns.srv("_http._tcp.app.internal", "web1.internal", 8081, 1, 2);
  dns.host("web1.internal", "127.0.0.5", 7).restart();
  auto reports = recorder.wait(1, 3s);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].records,
            std::vector<DnsRecord>{record("127.0.0.5", 8081, "web1.internal", 1, 2)});
  auto logs = recorder.logs(); // the startup failure is the caller's to log, not the thread's
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0],
            "dns: _http._tcp.app.internal: resolved again after 1 failed attempt: 1 record");
}

TEST_F(DiscoveryTest, StopIsPromptEvenWithAResolutionInFlight) {
  dns.host("app.internal", "127.0.0.2", 300).start();
  dns.pause();
  Recorder recorder;
  Discovery discovery({host("app.internal", 80)}, settings_for(dns, 10s), recorder.report(),
                      recorder.log());
  discovery.start();
  std::this_thread::sleep_for(300ms);
  auto begin = Clock::now();
  discovery.stop();
  EXPECT_LT(Clock::now() - begin, 500ms);
  discovery.stop();                     // idempotent
  EXPECT_TRUE(recorder.logs().empty()); // abandoned, not failed
  EXPECT_TRUE(recorder.reports().empty());
}

TEST_F(DiscoveryTest, StopIsPromptWhileWaitingOutALongTtl) {
  dns.host("app.internal", "127.0.0.2", 300).start();
  Recorder recorder;
  Discovery discovery({host("app.internal", 80)}, settings_for(dns), recorder.report(),
                      recorder.log());
  discovery.start();
  ASSERT_EQ(recorder.wait(1, 3s).size(), 1u);
  auto begin = Clock::now();
  discovery.stop();
  EXPECT_LT(Clock::now() - begin, 100ms);
}

TEST_F(DiscoveryTest, ResolveAllAfterStartIsRefused) {
  Discovery discovery({}, DnsSettings{}, {}, {});
  discovery.start();
  EXPECT_THROW(discovery.resolve_all(), std::logic_error);
  discovery.stop();
}
