#pragma once
// ACME state shared by the instances of a tier through Redis (see
// acme::SharedStorage). Keys, under the cluster's key_prefix:
//   acme:accounts           hash: directory URL -> account key (PEM)
//   acme:cert:NAME          the key and chain of the certificate for NAME (PEM)
//   acme:lock:NAME          the instance ordering NAME, with an expiry
//   acme:challenges         hash: "http TOKEN" / "alpn DOMAIN" -> key authorization
//   acme:challenges:version bumped on every change of the challenges
//   acme:seen               hash: instance -> the challenges version it answers
// Every instance's Cluster polls the challenges' version with the overrides'
// and says in acme:seen which version it answers; publish_challenge() waits
// for cluster.instances of them.

#include "config/config_types.hpp"
#include "lb/acme/acme.hpp"

#include <string>

namespace lb::cluster {

class AcmeShare : public acme::SharedStorage {
public:
  explicit AcmeShare(const config::Cluster& config);

  bool account_key(const std::string& directory, std::string& pem, std::string& error) override;
  bool certificate(const std::string& name, std::string& pem, std::string& error) override;
  bool store_certificate(const std::string& name, const std::string& pem, int64_t expires,
                         std::string& error) override;
  int lock(const std::string& name, std::chrono::seconds ttl, std::string& error) override;
  void unlock(const std::string& name) override;
  bool publish_challenge(const std::string& field, const std::string& key_authorization,
                         std::string& error) override;
  void withdraw_challenge(const std::string& field) override;

private:
  config::Cluster config_;
  std::string owner_; // this instance, in the lock's value
};

} // namespace lb::cluster
