// Random-weight checkpoints in the Hugging Face layout, for benchmarks and
// tests: written to a directory and then loaded like any user's model.
// Random weights say nothing about quality; they exercise shapes and speed.
#ifndef OPTREC_CORE_MODEL_RANDOM_MODEL_H_
#define OPTREC_CORE_MODEL_RANDOM_MODEL_H_

#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"

namespace optrec {

struct RandomModelSpec {
  // "llama", "mistral", "qwen2", "qwen3" or "gpt2".
  std::string model_type = "llama";
  int64_t hidden = 32;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;  // ignored for gpt2
  int64_t ffn = 48;
  int64_t vocab = 97;
  int64_t max_positions = 128;
  bool tied = false;
  bool gpt2_prefix = false;    // gpt2 names under "transformer."
  int64_t sliding_window = 0;  // mistral only; 0 = none
  torch::ScalarType disk_dtype = torch::kFloat32;
  int shards = 1;  // >1 writes model.safetensors.index.json
  uint64_t seed = 1;
  int32_t bos_id = 1;         // written to config.json; -1 = none
  int32_t eos_id = 2;         // written to config.json; -1 = none
  double weight_scale = 0.2;  // std of the random matrices
};

// The GPT-2 small shape (12 layers, width 768, 12 heads, vocabulary 50257,
// 1024 positions) with random weights.
RandomModelSpec Gpt2SmallSpec();

// The config.json the spec describes.
nlohmann::json RandomModelConfig(const RandomModelSpec& spec);

// Writes config.json and the weights to `dir` (created if needed). Weights
// are drawn from LibTorch's global generator seeded with spec.seed.
absl::Status WriteRandomModel(const std::string& dir,
                              const RandomModelSpec& spec);

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_RANDOM_MODEL_H_
