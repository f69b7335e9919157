// Test helpers around random checkpoints: temp directories and the
// plain-loop reference's view of a random model.
#ifndef OPTREC_TESTS_TESTLIB_TINY_MODELS_H_
#define OPTREC_TESTS_TESTLIB_TINY_MODELS_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "core/model/random_model.h"
#include "tests/testlib/reference_forward.h"

namespace optrec {

using TinyModelSpec = RandomModelSpec;

inline absl::Status WriteTinyModel(const std::string& dir,
                                   const TinyModelSpec& spec) {
  return WriteRandomModel(dir, spec);
}

// The plain-loop reference's view of the same model.
ReferenceConfig TinyReferenceConfig(const TinyModelSpec& spec);

// Largest absolute difference of two tensors of the same shape, in double
// precision; infinity (and a test failure) when either is undefined or the
// shapes differ, so comparisons fail cleanly.
double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b);

// Rows of doubles (the plain-loop reference's output) as a [N, M] f64
// tensor; undefined for no rows.
torch::Tensor ToTensor(const std::vector<std::vector<double>>& rows);

// A fresh directory under $TEST_TMPDIR or the system temp dir, unique per
// call, removed with its contents when the test process exits.
std::string MakeTempDir(const std::string& stem);

}  // namespace optrec

#endif  // OPTREC_TESTS_TESTLIB_TINY_MODELS_H_
