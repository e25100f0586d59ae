#include "lb/http/request_line.hpp"

namespace lb::http {

namespace {

RequestLineCheck refuse(int status, const char* reason) { return {status, reason, {}}; }

} // namespace

RequestLineCheck check_request_line(const Head& head) {
  if (head.major != 1)
    return refuse(505, "only HTTP/1.0 and HTTP/1.1 are spoken here");
  if (head.target.n > max_target_bytes)
    return refuse(414, "request target longer than 8 KiB");
  if (head.method.view() == "CONNECT")
    return refuse(405, "CONNECT is not supported: lb is not a forward proxy");
  std::string_view target = head.target.view();
  if (target.find('#') != std::string_view::npos)
    return refuse(400, "a fragment (#) in the request target");
  if (target == "*" && head.method.view() != "OPTIONS")
    return refuse(400, "request target * is for OPTIONS only");
  if (target.empty() || target.front() == '/' || target == "*")
    return {};
  size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos || !(iequals(target.substr(0, scheme_end), "http") ||
                                                iequals(target.substr(0, scheme_end), "https")))
    return refuse(400, "request target is neither origin-form nor absolute-form");
  size_t start = scheme_end + 3;
  size_t end = target.find_first_of("/?#", start);
  if (end == std::string_view::npos)
    end = target.size();
  if (end == start || target.substr(start, end - start).find('@') != std::string_view::npos)
    return refuse(400, "invalid authority in the request target");
  return {0, nullptr, {head.target.p + start, static_cast<uint32_t>(end - start)}};
}

} // namespace lb::http
