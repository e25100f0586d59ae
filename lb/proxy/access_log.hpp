#pragma once
// Access log, one line per request, json or combined. Each worker formats into
// its own buffer and writes it out in batches (when it fills or on the worker's
// tick), so logging costs no syscall per request and no lock.

#include "config/config_types.hpp"

#include <ctime>
#include <string>
#include <string_view>

namespace lb::proxy {

struct AccessRecord {
  std::string_view request_id;
  std::string_view client;
  std::string_view listener;
  std::string_view pool;
  std::string_view backend;
  std::string_view method;
  std::string_view target;
  std::string_view user_agent;
  std::string_view referer;
  int version_minor = 1;
  int status = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  double upstream_ms = -1;  // < 0: no upstream involved
  double total_ms = 0;
};

class AccessLog {
 public:
  // `fd` < 0 disables logging. The fd is shared by all workers and not owned.
  AccessLog(int fd, config::AccessLog::Format format);
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;
  ~AccessLog();

  bool enabled() const { return fd_ >= 0; }
  void write(const AccessRecord& r);
  void flush();

 private:
  void append_json_string(std::string_view s);
  void append(std::string_view s);
  void refresh_time();

  int fd_;
  config::AccessLog::Format format_;
  char* buffer_;
  size_t used_ = 0;
  time_t formatted_second_ = 0;
  char iso_time_[32] = {};   // 2026-11-25T07:00:00Z
  char clf_time_[40] = {};   // 25/Nov/2026:07:00:00 +0000
};

}  // namespace lb::proxy
