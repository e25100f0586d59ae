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

#include "config/config_types.hpp"

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace lb::acme {

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
  void stop();
  std::vector<RenewalCount> counts() const;

  class Client;

private:
  std::function<void()> on_certificate_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<RenewalCount> retired_; // counts of clients that stopped
};

} // namespace lb::acme
