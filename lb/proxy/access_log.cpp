#include "lb/proxy/access_log.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace lb::proxy {

namespace {
constexpr size_t capacity = LogWriter::batch_capacity;
constexpr size_t max_queued = 64;      // batches (4 MiB) waiting for a slow destination
constexpr size_t flush_at = 48 * 1024; // leaves room for one long line
constexpr size_t max_field = 2048;     // longer targets and agents are cut
} // namespace

LogWriter::LogWriter(int fd) : fd_(fd), thread_([this] { run(); }) {}

LogWriter::~LogWriter() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
  for (char* b : free_)
    std::free(b);
}

char* LogWriter::submit(char* batch, size_t used, size_t lines) {
  char* fresh = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() >= max_queued) {
      dropped_ += lines; // the destination is too slow: drop, never block
      return batch;
    }
    queue_.emplace_back(batch, used);
    if (!free_.empty()) {
      fresh = free_.back();
      free_.pop_back();
    }
  }
  wake_.notify_one();
  return fresh ? fresh : static_cast<char*>(std::malloc(capacity));
}

uint64_t LogWriter::dropped_lines() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

void LogWriter::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_ || !queue_.empty(); });
    if (dropped_ != reported_) {
      std::fprintf(stderr, "lb: access_log: dropped %llu lines: the destination is too slow\n",
                   static_cast<unsigned long long>(dropped_ - reported_));
      reported_ = dropped_;
    }
    if (queue_.empty()) {
      if (stopping_)
        return;
      continue;
    }
    auto [batch, used] = queue_.front();
    queue_.pop_front();
    lock.unlock();
    size_t off = 0;
    while (off < used) {
      ssize_t n = ::write(fd_, batch + off, used - off);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break; // a broken log destination must not stop the proxy
      off += static_cast<size_t>(n);
    }
    lock.lock();
    if (free_.size() < max_queued)
      free_.push_back(batch);
    else
      std::free(batch);
  }
}

AccessLog::AccessLog(LogWriter* writer, config::AccessLog::Format format)
    : writer_(writer), format_(format),
      buffer_(writer ? static_cast<char*>(std::malloc(capacity)) : nullptr) {}

AccessLog::~AccessLog() {
  flush();
  std::free(buffer_);
}

void AccessLog::flush() {
  if (!writer_ || used_ == 0)
    return;
  buffer_ = writer_->submit(buffer_, used_, lines_);
  used_ = 0;
  lines_ = 0;
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
    if (used_ + 6 >= capacity)
      break;
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
  if (now == formatted_second_)
    return;
  formatted_second_ = now;
  struct tm tm;
  gmtime_r(&now, &tm);
  std::strftime(iso_time_, sizeof iso_time_, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::strftime(clf_time_, sizeof clf_time_, "%d/%b/%Y:%H:%M:%S +0000", &tm);
}

void AccessLog::write(const AccessRecord& r) {
  if (!writer_)
    return;
  ++lines_;
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
    if (r.route >= 0) {
      int n = std::snprintf(num, sizeof num, ",\"route\":%d", r.route);
      append({num, static_cast<size_t>(n)});
    } else {
      append(",\"route\":null");
    }
    append(",\"pool\":");
    append_json_string(r.pool);
    append(",\"backend\":");
    append_json_string(r.backend);
    append(",\"method\":");
    append_json_string(r.method);
    append(",\"target\":");
    append_json_string(r.target);
    append(r.http2                ? std::string_view(",\"protocol\":\"HTTP/2\"")
           : r.version_minor == 0 ? std::string_view(",\"protocol\":\"HTTP/1.0\"")
                                  : std::string_view(",\"protocol\":\"HTTP/1.1\""));
    if (r.grpc_status >= 0) {
      int g = std::snprintf(num, sizeof num, ",\"grpc_status\":%d", r.grpc_status);
      append({num, static_cast<size_t>(g)});
    }
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
    append(r.http2 ? " HTTP/2.0\" " : r.version_minor == 0 ? " HTTP/1.0\" " : " HTTP/1.1\" ");
    int n = std::snprintf(num, sizeof num, "%d %llu \"", r.status,
                          static_cast<unsigned long long>(r.bytes_out));
    append({num, static_cast<size_t>(n)});
    append(r.referer.empty() ? std::string_view("-") : r.referer.substr(0, max_field));
    append("\" \"");
    append(r.user_agent.empty() ? std::string_view("-") : r.user_agent.substr(0, max_field));
    append("\"\n");
  }
  if (used_ >= flush_at)
    flush();
}

} // namespace lb::proxy
