#pragma once
// TLS to Redis for a hiredis that has none (Debian 12's 0.14): a TCP
// connection to Redis, its TLS handshake done here (OpenSSL, verified as
// `cluster.tls` says), and a socket pair whose near end hiredis gets
// (redisConnectFd). A thread of the connection's own moves the bytes
// between the far end and TLS until either side closes: when hiredis frees
// its context, or Redis or the network ends the connection.

#include "config/config_types.hpp"

#include <string>

namespace lb::cluster {

// The near end of a new pipe to `config`'s Redis over TLS (the handshake
// done, within `timeout_ms` for the connect and again for the handshake),
// or -1 with `error`.
int tls_pipe(const config::Cluster& config, int timeout_ms, std::string& error);

// Why the pipe whose near end is `fd` ended on the TLS side ("" when it did
// not, or it was asked already): what Redis's end said, for the error hiredis
// reports (a broken pipe, an end of file).
std::string tls_pipe_reason(int fd);

} // namespace lb::cluster
