// What the tuning tests share: a small shop world and a tiny random Llama
// that reads the default model's tokenizer, both built in a temporary
// folder, and task specs written for them.
#ifndef OPTREC_TESTS_TESTLIB_TUNING_FIXTURE_H_
#define OPTREC_TESTS_TESTLIB_TUNING_FIXTURE_H_

#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/model/random_model.h"
#include "core/model/transformer.h"

namespace optrec {

struct TuningFixture {
  std::string dir;    // temporary root
  std::string world;  // a generated world (seed 3, 200 items, 60 users)
  std::string model;  // tiny Llama: width 32, 2 layers, vocabulary 2048
};

// The fixture model's shape (tied embeddings, the default tokenizer's
// 2048-piece vocabulary) with weights drawn from `seed`.
RandomModelSpec FixtureModelSpec(uint64_t seed);

// Built once per test process.
const TuningFixture& SharedTuningFixture();

// Specs over the fixture's world, kept small so that tests run fast
// (prompt length 4, at most 3 history segments, 96 tokens):
// "score" (click scoring, two options, a held-out template, zero-shot
// continuation), "rating" (five options), "generate" (explanations),
// "retrieve" (next click over the catalog), "sequential" (titles decoded
// within the catalog).
nlohmann::json TestSpec(const std::string& kind);

// Writes `spec` to a file in a fresh temporary folder; returns its path.
std::string WriteSpec(const nlohmann::json& spec, const std::string& name);

// The fixture's model loaded with `dtype` on the CPU.
std::shared_ptr<const TransformerLM> LoadFixtureModel(
    torch::ScalarType dtype = torch::kFloat32);

// A module file of TestSpec(kind) over the fixture model, with every
// tensor drawn from `seed` (so versions from different seeds score
// differently), recording `version`; in a fresh temporary folder. Test
// failures are reported through gtest.
std::string WriteRandomModule(const std::string& kind,
                              const std::string& version, uint64_t seed);

// XXH3-128 over the bytes of every backbone tensor, in order.
std::string BackboneChecksum(const TransformerLM& model);

}  // namespace optrec

#endif  // OPTREC_TESTS_TESTLIB_TUNING_FIXTURE_H_
