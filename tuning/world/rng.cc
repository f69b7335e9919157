#include "tuning/world/rng.h"

#include <algorithm>
#include <cmath>

namespace optrec {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

uint64_t RotateLeft(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

uint64_t SplitMix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t StreamSeed(uint64_t seed, StreamKind kind, uint64_t index) {
  uint64_t state = seed;
  uint64_t h = SplitMix64(state);
  state = h ^ (static_cast<uint64_t>(kind) * 0xD1B54A32D192ED03ULL);
  h = SplitMix64(state);
  state = h ^ (index * 0x8CB92BA72F3D8DD7ULL + 0x632BE59BD9B4E019ULL);
  return SplitMix64(state);
}

Rng::Rng(uint64_t seed) {
  uint64_t state = seed;
  for (uint64_t& word : s_) word = SplitMix64(state);
}

Rng::Rng(uint64_t seed, StreamKind kind, uint64_t index)
    : Rng(StreamSeed(seed, kind, index)) {}

uint64_t Rng::Next() {
  const uint64_t result = RotateLeft(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = RotateLeft(s_[3], 45);
  return result;
}

double Rng::Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

double Rng::Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }

uint64_t Rng::UniformInt(uint64_t n) {
  // Reject the top partial block so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x = Next();
  while (x >= limit) x = Next();
  return x % n;
}

bool Rng::Bernoulli(double p) { return Uniform() < p; }

double Rng::Normal() {
  if (has_spare_normal_) {
    has_spare_normal_ = false;
    return spare_normal_;
  }
  // 1 - Uniform() lies in (0, 1], so the log is finite.
  const double radius = std::sqrt(-2.0 * std::log(1.0 - Uniform()));
  const double angle = kTwoPi * Uniform();
  spare_normal_ = radius * std::sin(angle);
  has_spare_normal_ = true;
  return radius * std::cos(angle);
}

double Rng::Normal(double mean, double stddev) {
  return mean + stddev * Normal();
}

double Rng::Gamma(double shape) {
  if (shape < 1.0) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a).
    const double u = 1.0 - Uniform();
    return Gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    double x = Normal();
    double v = 1.0 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    const double u = 1.0 - Uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

std::vector<double> Rng::Dirichlet(absl::Span<const double> alpha) {
  std::vector<double> draws(alpha.size());
  double total = 0;
  for (size_t i = 0; i < alpha.size(); ++i) {
    draws[i] = Gamma(alpha[i]);
    total += draws[i];
  }
  if (total <= 0) {
    // Every gamma underflowed (tiny alphas): put the mass on one entry.
    std::fill(draws.begin(), draws.end(), 0.0);
    if (!draws.empty()) draws[UniformInt(draws.size())] = 1.0;
    return draws;
  }
  for (double& d : draws) d /= total;
  return draws;
}

int Rng::Poisson(double mean) {
  const double limit = std::exp(-std::min(mean, 30.0));
  int k = 0;
  double product = Uniform();
  while (product > limit) {
    ++k;
    product *= Uniform();
  }
  return k;
}

double Rng::Exponential(double mean) {
  return -mean * std::log(1.0 - Uniform());
}

int Rng::Categorical(absl::Span<const double> weights) {
  double total = 0;
  for (double w : weights) total += w;
  double target = Uniform() * total;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (target < weights[i]) return static_cast<int>(i);
    target -= weights[i];
  }
  // Rounding left a sliver: the last entry with weight takes it.
  for (size_t i = weights.size(); i > 0; --i) {
    if (weights[i - 1] > 0) return static_cast<int>(i - 1);
  }
  return 0;
}

int64_t Rng::FromCumulative(absl::Span<const double> cumulative) {
  const double target = Uniform() * cumulative.back();
  auto it = std::upper_bound(cumulative.begin(), cumulative.end(), target);
  if (it == cumulative.end()) --it;
  return it - cumulative.begin();
}

}  // namespace optrec
