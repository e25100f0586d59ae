#pragma once
// Access log, one line per request, json or combined. Each worker formats into
// its own buffer and hands it over in batches (when it fills or on the worker's
// tick) to the log writer thread, which does the write(2): logging costs a
// worker no syscall and no blocking, and one short lock per batch.

#include "config/config_types.hpp"

#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace lb::proxy {

struct AccessRecord {
  std::string_view request_id;
  std::string_view client;
  std::string_view listener;
  std::string_view pool;
  int route = -1; // index of the listener's route that matched; -1: none
  std::string_view backend;
  std::string_view method;
  std::string_view target;
  std::string_view user_agent;
  std::string_view referer;
  int version_minor = 1;
  bool http2 = false; // the request came on an HTTP/2 stream
  int status = 0;
  int grpc_status = -1; // a gRPC call's grpc-status; < 0: none
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  double upstream_ms = -1; // < 0: no upstream involved
  double total_ms = 0;
};

// The thread that writes the workers' batches to the log destination. When the
// destination cannot keep up, batches beyond a bound are dropped (and counted,
// and reported once a second on stderr) rather than slow the proxy down.
class LogWriter {
public:
  static constexpr size_t batch_capacity = 64 * 1024;
  explicit LogWriter(int fd); // fd not owned
  ~LogWriter();               // writes what is queued, then stops
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Takes a filled batch and returns an empty one (any thread).
  char* submit(char* batch, size_t used, size_t lines);
  uint64_t dropped_lines() const;

private:
  void run();
  int fd_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<char*, size_t>> queue_;
  std::vector<char*> free_;
  uint64_t dropped_ = 0;
  uint64_t reported_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

class AccessLog {
public:
  // `writer` == nullptr disables logging.
  AccessLog(LogWriter* writer, config::AccessLog::Format format);
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;
  ~AccessLog();

  bool enabled() const { return writer_ != nullptr; }
  void write(const AccessRecord& r);
  void flush();

private:
  void append_json_string(std::string_view s);
  void append(std::string_view s);
  void refresh_time();

  LogWriter* writer_;
  config::AccessLog::Format format_;
  char* buffer_;
  size_t used_ = 0;
  size_t lines_ = 0;
  time_t formatted_second_ = 0;
  char iso_time_[32] = {}; // 2026-11-25T07:00:00Z
  char clf_time_[40] = {}; // 25/Nov/2026:07:00:00 +0000
};

} // namespace lb::proxy
