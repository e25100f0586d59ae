#pragma once
// YAML -> validated, immutable Config. Every problem is reported as
// "FILE:LINE:COL: message" (1-based, the offending node), all of them at once.

#include "config/config_types.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lb::config {

struct LoadResult {
  std::shared_ptr<const Config> config; // null when errors is not empty
  std::vector<std::string> errors;      // "FILE:LINE:COL: message"
};

// Reads and validates FILE. Never throws.
LoadResult load_file(const std::string& path);

// Validates YAML text; `name` stands for the file name in error messages. Never throws.
LoadResult load_string(const std::string& text, const std::string& name);

// "250ms", "2s", "5m", "1h" -> milliseconds. nullopt when malformed.
std::optional<Duration> parse_duration(const std::string& text);

// "16KiB", "10MiB", "1GiB", "512" -> bytes. nullopt when malformed.
std::optional<uint64_t> parse_size(const std::string& text);

// "1.2.3.4:80", "[::1]:80" -> Address (numeric only). nullopt when malformed.
std::optional<Address> parse_address(const std::string& text);

} // namespace lb::config
