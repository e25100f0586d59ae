#pragma once
// GET /status: lb's state as JSON, for people (the status page) and scripts.

#include "lb/admin/metrics.hpp"
#include "lb/server/server.hpp"

#include <string>

namespace lb::admin {

// The /status document (see docs/admin.md). Admin thread.
std::string status_json(const server::Server& server, double uptime_seconds, bool draining,
                        const ClusterLink* cluster = nullptr);

} // namespace lb::admin
