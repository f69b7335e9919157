// A portable random number generator for the shop world. The standard
// library's distributions are implementation-defined (libstdc++ and libc++
// draw different numbers from the same engine), so every draw here is
// hand-written: SplitMix64 seeds a xoshiro256** engine, and uniform, normal
// (Box-Muller), gamma (Marsaglia-Tsang), Dirichlet, Poisson, Bernoulli and
// categorical draws are built on 53-bit uniforms. Same seed, same numbers,
// on every platform and compiler.
//
// Not thread-safe: give each thread (and each simulated entity) its own Rng.
#ifndef OPTREC_TUNING_WORLD_RNG_H_
#define OPTREC_TUNING_WORLD_RNG_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace optrec {

// What a random stream belongs to. Each (seed, kind, index) names an
// independent stream, so one user's draws never depend on another's.
enum class StreamKind : uint64_t {
  kCatalog = 1,     // catalog-wide draws (leaf weights)
  kItem = 2,        // one item's attributes; index = item index
  kUser = 3,        // one user's tastes; index = user index
  kSessions = 4,    // one user's behaviour over time; index = user index
  kExamples = 5,    // one user's task-example sampling; index = user index
  kCorpusUser = 6,  // corpus train/valid choice; index = user index
  kCorpusItem = 7,  // corpus train/valid choice; index = item index
};

// One step of SplitMix64 on `state`, returning the mixed output.
uint64_t SplitMix64(uint64_t& state);

// A stable 64-bit hash of (seed, kind, index); the seed of that stream.
uint64_t StreamSeed(uint64_t seed, StreamKind kind, uint64_t index);

class Rng {
 public:
  // Seeds the four words of state from SplitMix64(seed).
  explicit Rng(uint64_t seed);
  // The stream (seed, kind, index).
  Rng(uint64_t seed, StreamKind kind, uint64_t index);

  // 64 uniformly random bits (xoshiro256**).
  uint64_t Next();
  // Uniform in [0, 1) with 53 random bits.
  double Uniform();
  // Uniform in [lo, hi).
  double Uniform(double lo, double hi);
  // Uniform integer in [0, n); n must be > 0. Unbiased (rejection).
  uint64_t UniformInt(uint64_t n);
  // True with probability p.
  bool Bernoulli(double p);
  // Standard normal (Box-Muller; the second value is cached).
  double Normal();
  double Normal(double mean, double stddev);
  // Gamma(shape, 1) for shape > 0 (Marsaglia-Tsang; shape < 1 by boosting).
  double Gamma(double shape);
  // A Dirichlet(alpha) draw of alpha.size() weights summing to 1.
  std::vector<double> Dirichlet(absl::Span<const double> alpha);
  // Poisson(mean) for a small mean (Knuth's product method; mean <= 30).
  int Poisson(double mean);
  // Exponential with the given mean.
  double Exponential(double mean);
  // An index drawn with probability proportional to weights[i] (>= 0, not
  // all zero). Linear scan: for short weight lists.
  int Categorical(absl::Span<const double> weights);
  // An index drawn from a cumulative weight table (non-decreasing, last > 0)
  // by binary search: for long lists.
  int64_t FromCumulative(absl::Span<const double> cumulative);
  // Fisher-Yates shuffle.
  template <typename T>
  void Shuffle(std::vector<T>& values) {
    for (size_t i = values.size(); i > 1; --i) {
      std::swap(values[i - 1], values[UniformInt(i)]);
    }
  }

 private:
  uint64_t s_[4];
  bool has_spare_normal_ = false;
  double spare_normal_ = 0;
};

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_RNG_H_
