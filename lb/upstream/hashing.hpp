#pragma once
// Hashing for balancing decisions that every lb instance must make alike
// (SPEC "Many lb instances"): ring_hash and maglev keys, their tables, and the
// sticky cookie's value. XXH3 (Debian's libxxhash, header only here): its output
// is specified and stable across versions and machines since xxHash 0.8.0.

#include <cstdint>
#include <string>
#include <string_view>

namespace lb::upstream {

// XXH3-64 of `data` with `seed`. Any thread; no allocation. Identical on every
// machine, process and run: never mixes in anything local.
uint64_t hash64(std::string_view data, uint64_t seed = 0);

// The sticky cookie's value for a backend: 16 lowercase hex characters, a stable
// keyed hash of the backend's identity (its "host:port"). Any thread.
//
// The key is `secret` (the top-level `sticky_secret`, may be empty): a 64-bit seed
// derived as hash64(secret) under a fixed domain seed, then
// hash64("lb-sticky:" + identity, seed). This is NOT a MAC and XXH3 is not a
// cryptographic hash: the value is an opaque id, the same on every instance with
// the same secret, that does not show the backend's address and that a client
// cannot compute for a backend without knowing the secret. A client can always
// replay a value it was given; that only pins it to a backend it may use anyway.
std::string sticky_value(std::string_view secret, std::string_view backend_identity);

} // namespace lb::upstream
