#pragma once
// Certificates from an ACME server (RFC 8555) for TLS listeners with
// `tls.acme`. One client per such listener, on its own thread (blocking
// requests with timeouts, off the data path): it creates or loads the
// account (an ES256 key kept in `storage`), orders one certificate naming all
// `domains`, answers the authorizations with HTTP-01 or TLS-ALPN-01 (through
// io::AcmeChallenges, which the workers serve), finalizes with a CSR and
// stores the key and chain in `storage` (0600). It renews at two thirds of
// the lifetime; a failed order is logged, counted and tried again with
// backoff while the current certificate keeps serving.
//
// A stored certificate that covers the domains and is not due is used as it
// is: a restart makes no new order.
//
// With a SharedStorage (a `cluster:` block: Redis) the instances of a tier
// share the account, the certificates and the challenges: one instance
// orders at a time (a lock with expiry), publishes each challenge to every
// instance before it tells the CA, and stores the certificate for the others,
// which take it from there. N instances behind one name make one order.

#include "config/config_types.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace lb::acme {

// Where the instances of a tier share ACME state. Calls block briefly (a
// client's thread, never the data path); false (or -1) with `error` when the
// store cannot be reached; the client then waits, or orders alone when it
// has no certificate or little time left.
class SharedStorage {
public:
  virtual ~SharedStorage() = default;
  // The tier's account key for `directory`: the stored one, else `pem`
  // (this instance's) is stored. `pem` is set to the key to use.
  virtual bool account_key(const std::string& directory, std::string& pem, std::string& error) = 0;
  // The key and chain stored for `name` ("" when none); `name` is the first
  // domain and a hash of the directory and all domains.
  virtual bool certificate(const std::string& name, std::string& pem, std::string& error) = 0;
  // Stores `pem` unless the store holds one that expires later (`expires`:
  // its notAfter).
  virtual bool store_certificate(const std::string& name, const std::string& pem, int64_t expires,
                                 std::string& error) = 0;
  // Takes (or keeps) the lock on ordering `name` for `ttl`: 1 this instance
  // holds it, 0 another one does, -1 the store cannot be reached.
  virtual int lock(const std::string& name, std::chrono::seconds ttl, std::string& error) = 0;
  virtual void unlock(const std::string& name) = 0;
  // A challenge every instance answers: `field` is "http TOKEN" or "alpn
  // DOMAIN", the value the key authorization. Returns once every instance
  // has it (cluster.instances of them), or after a few seconds.
  virtual bool publish_challenge(const std::string& field, const std::string& key_authorization,
                                 std::string& error) = 0;
  virtual void withdraw_challenge(const std::string& field) = 0;
};

struct RenewalCount {
  std::string listener;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
};

class Manager {
public:
  // `on_certificate` runs on a client's thread after a new certificate is
  // stored: the listeners must be built again to serve it.
  explicit Manager(std::function<void()> on_certificate);
  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  // Clients for `config`'s ACME listeners: unchanged ones go on, others stop
  // or start.
  void update(const config::Config& config);
  // Shares the clients' state with other instances (before the first update()).
  void set_shared(std::shared_ptr<SharedStorage> shared) { shared_ = std::move(shared); }
  void stop();
  std::vector<RenewalCount> counts() const;

  class Client;

private:
  std::function<void()> on_certificate_;
  std::shared_ptr<SharedStorage> shared_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<RenewalCount> retired_; // counts of clients that stopped
};

} // namespace lb::acme
