// Parsers for the value syntaxes of the config: durations, sizes, addresses.
#include "config/config.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstdint>
#include <string_view>

namespace lb::config {

namespace {

// The leading run of decimal digits of `text` as a number; `rest` gets what follows.
// nullopt when there is no digit or the number does not fit.
std::optional<uint64_t> leading_number(std::string_view text, std::string_view& rest) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
    ++digits;
  if (digits == 0)
    return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec != std::errc())
    return std::nullopt;
  rest = text.substr(digits);
  return value;
}

} // namespace

std::optional<Duration> parse_duration(const std::string& text) {
  std::string_view unit;
  auto value = leading_number(text, unit);
  if (!value)
    return std::nullopt;
  uint64_t ms_per_unit = 0;
  if (unit == "ms")
    ms_per_unit = 1;
  else if (unit == "s")
    ms_per_unit = 1000;
  else if (unit == "m")
    ms_per_unit = 60 * 1000;
  else if (unit == "h")
    ms_per_unit = 60 * 60 * 1000;
  else
    return std::nullopt; // including no unit: "30" is not a duration
  // Keep the result representable as signed milliseconds.
  if (*value > uint64_t(INT64_MAX) / ms_per_unit)
    return std::nullopt;
  return Duration(int64_t(*value * ms_per_unit));
}

std::optional<uint64_t> parse_size(const std::string& text) {
  std::string_view unit;
  auto value = leading_number(text, unit);
  if (!value)
    return std::nullopt;
  uint64_t multiplier = 0;
  if (unit.empty())
    multiplier = 1;
  else if (unit == "KiB")
    multiplier = uint64_t(1) << 10;
  else if (unit == "MiB")
    multiplier = uint64_t(1) << 20;
  else if (unit == "GiB")
    multiplier = uint64_t(1) << 30;
  else
    return std::nullopt;
  if (*value > UINT64_MAX / multiplier)
    return std::nullopt;
  return *value * multiplier;
}

std::optional<Address> parse_address(const std::string& text) {
  std::string_view view = text;
  std::string host;
  std::string_view port_text;
  Address address;
  if (!view.empty() && view.front() == '[') {
    size_t close = view.find(']');
    if (close == std::string_view::npos || close + 1 >= view.size() || view[close + 1] != ':')
      return std::nullopt;
    host = view.substr(1, close - 1);
    port_text = view.substr(close + 2);
    address.ipv6 = true;
  } else {
    size_t colon = view.rfind(':');
    if (colon == std::string_view::npos)
      return std::nullopt;
    host = view.substr(0, colon);
    port_text = view.substr(colon + 1);
    if (host.find(':') != std::string::npos)
      return std::nullopt; // IPv6 needs brackets
  }

  std::string_view rest;
  auto port = leading_number(port_text, rest);
  if (!port || !rest.empty() || port_text.size() > 5 || *port > 65535)
    return std::nullopt;
  address.port = uint16_t(*port);

  // Numeric only, stored in canonical form so equal addresses compare equal as text.
  unsigned char binary[sizeof(in6_addr)];
  char canonical[INET6_ADDRSTRLEN];
  int family = address.ipv6 ? AF_INET6 : AF_INET;
  if (inet_pton(family, host.c_str(), binary) != 1)
    return std::nullopt;
  if (!inet_ntop(family, binary, canonical, sizeof canonical))
    return std::nullopt;
  address.host = canonical;
  return address;
}

} // namespace lb::config
