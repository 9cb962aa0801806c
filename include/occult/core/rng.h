// Deterministic random numbers whose streams do not depend on the standard library or on the
// rank count (std distributions are implementation-defined; these are not).
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

namespace occult {

// FNV-1a 64-bit hash of a string: names a random stream (e.g. one per parameter tensor).
inline std::uint64_t fnv1a64(std::string_view text) {
  std::uint64_t h = 1469598103934665603ull;
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and every 64-bit seed is a good stream.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  // The next 64 random bits.
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n) (n >= 1); the modulo bias is below 2^-40 for n < 2^24.
  std::uint64_t below(std::uint64_t n) { return next() % n; }
  // Standard normal (Box-Muller; one value per call).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t state_;
};

}  // namespace occult
