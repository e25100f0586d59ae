// libFuzzer target: the config loader never crashes or throws, whatever the YAML.
#include "config/config.hpp"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto result = lb::config::load_string(text, "fuzz.yaml");
  if (!result.config && result.errors.empty())
    __builtin_trap(); // an error says why
  return 0;
}
