// What the benchmark programs share: timing, and the GPT-2-small-shaped
// random model most of them run on.
#ifndef OPTREC_BENCH_BENCH_UTIL_H_
#define OPTREC_BENCH_BENCH_UTIL_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/model/transformer.h"

namespace optrec {

// Wall-clock seconds of one call of `fn`.
double Seconds(const std::function<void()>& fn);

// Median of `reps` timed calls after one untimed warm-up call.
double MedianSeconds(int reps, const std::function<void()>& fn);

// Loads `model_dir`, or when it is empty writes a random-weight GPT-2-small
// checkpoint (core/model/random_model.h) to a temporary folder, loads it
// and removes the folder (the weights stay mapped). `options` as for
// TransformerLM::Load.
absl::StatusOr<std::shared_ptr<const TransformerLM>> LoadBenchModel(
    const std::string& model_dir, const LoadOptions& options = {});

}  // namespace optrec

#endif  // OPTREC_BENCH_BENCH_UTIL_H_
