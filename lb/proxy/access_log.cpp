#include "lb/proxy/access_log.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace lb::proxy {

namespace {
constexpr size_t capacity = 64 * 1024;
constexpr size_t flush_at = 48 * 1024;  // leaves room for one long line
constexpr size_t max_field = 2048;      // longer targets and agents are cut
}  // namespace

AccessLog::AccessLog(int fd, config::AccessLog::Format format)
    : fd_(fd), format_(format), buffer_(static_cast<char*>(std::malloc(capacity))) {}

AccessLog::~AccessLog() {
  flush();
  std::free(buffer_);
}

void AccessLog::flush() {
  size_t off = 0;
  while (off < used_ && fd_ >= 0) {
    ssize_t n = ::write(fd_, buffer_ + off, used_ - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // a broken log destination must not stop the proxy
    off += static_cast<size_t>(n);
  }
  used_ = 0;
}

void AccessLog::append(std::string_view s) {
  s = s.substr(0, std::min(s.size(), capacity - used_));
  std::memcpy(buffer_ + used_, s.data(), s.size());
  used_ += s.size();
}

void AccessLog::append_json_string(std::string_view s) {
  append("\"");
  s = s.substr(0, std::min(s.size(), max_field));
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (used_ + 6 >= capacity) break;
    if (c == '"' || c == '\\') {
      buffer_[used_++] = '\\';
      buffer_[used_++] = static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      used_ += static_cast<size_t>(std::snprintf(buffer_ + used_, 7, "\\u%04x", c));
    } else {
      buffer_[used_++] = static_cast<char>(c);
    }
  }
  append("\"");
}

void AccessLog::refresh_time() {
  time_t now = ::time(nullptr);
  if (now == formatted_second_) return;
  formatted_second_ = now;
  struct tm tm;
  gmtime_r(&now, &tm);
  std::strftime(iso_time_, sizeof iso_time_, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::strftime(clf_time_, sizeof clf_time_, "%d/%b/%Y:%H:%M:%S +0000", &tm);
}

void AccessLog::write(const AccessRecord& r) {
  if (fd_ < 0) return;
  refresh_time();
  char num[160];
  if (format_ == config::AccessLog::Format::json) {
    append("{\"time\":\"");
    append(iso_time_);
    append("\",\"request_id\":");
    append_json_string(r.request_id);
    append(",\"client\":");
    append_json_string(r.client);
    append(",\"listener\":");
    append_json_string(r.listener);
    append(",\"pool\":");
    append_json_string(r.pool);
    append(",\"backend\":");
    append_json_string(r.backend);
    append(",\"method\":");
    append_json_string(r.method);
    append(",\"target\":");
    append_json_string(r.target);
    int n = std::snprintf(num, sizeof num,
                          ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                          "\"upstream_ms\":%.3f,\"total_ms\":%.3f}\n",
                          r.status, static_cast<unsigned long long>(r.bytes_in),
                          static_cast<unsigned long long>(r.bytes_out),
                          r.upstream_ms < 0 ? 0.0 : r.upstream_ms, r.total_ms);
    append({num, static_cast<size_t>(n)});
  } else {
    // NCSA combined: client - - [time] "request" status bytes "referer" "agent"
    append(r.client);
    append(" - - [");
    append(clf_time_);
    append("] \"");
    append(r.method.substr(0, max_field));
    append(" ");
    append(r.target.substr(0, max_field));
    append(r.version_minor == 0 ? " HTTP/1.0\" " : " HTTP/1.1\" ");
    int n = std::snprintf(num, sizeof num, "%d %llu \"", r.status,
                          static_cast<unsigned long long>(r.bytes_out));
    append({num, static_cast<size_t>(n)});
    append(r.referer.empty() ? std::string_view("-") : r.referer.substr(0, max_field));
    append("\" \"");
    append(r.user_agent.empty() ? std::string_view("-") : r.user_agent.substr(0, max_field));
    append("\"\n");
  }
  if (used_ >= flush_at) flush();
}

}  // namespace lb::proxy
