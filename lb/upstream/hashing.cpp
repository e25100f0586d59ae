#include "lb/upstream/hashing.hpp"

// Header only: XXH3 inlined here, no link or run-time dependency on libxxhash.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace lb::upstream {

namespace {
// Domain separation: a secret's seed is not the plain hash64 of the secret.
constexpr uint64_t kStickySecretSeed = 0x6c622d737469636bULL; // "lb-stick"
} // namespace

uint64_t hash64(std::string_view data, uint64_t seed) {
  return XXH3_64bits_withSeed(data.data(), data.size(), seed);
}

std::string sticky_value(std::string_view secret, std::string_view backend_identity) {
  uint64_t seed = hash64(secret, kStickySecretSeed);
  std::string input = "lb-sticky:";
  input.append(backend_identity);
  uint64_t h = hash64(input, seed);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4)
    out[i] = kHex[h & 0xf];
  return out;
}

} // namespace lb::upstream
