// Zero-shot candidate ranking: one user context and C candidate titles,
// scored by ScoreContinuations (the context repeated in every row) and by
// ScoreSharedContext (the context once, candidates over copies of its KV
// cache), in the same run, with the speed-up and the largest difference
// between their scores.
//
// usage: scoring_bench [--model DIR] [--context N] [--candidates C]
//                      [--continuation N] [--reps N]
// Defaults: models/default, 300 context tokens (a profile and 20 behaviour
// segments), 100 candidates of 12 tokens, 5 repetitions; times are medians.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/model/scoring.h"
#include "core/model/transformer.h"
#include "core/runtime/process.h"

namespace optrec {
namespace {

int Run(int argc, char** argv) {
  std::string model_dir = std::string(OPTREC_SOURCE_DIR) + "/models/default";
  int64_t context_len = 300, candidates = 100, continuation_len = 12;
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model") {
      model_dir = argv[i + 1];
    } else if (flag == "--context") {
      context_len = std::atoll(argv[i + 1]);
    } else if (flag == "--candidates") {
      candidates = std::atoll(argv[i + 1]);
    } else if (flag == "--continuation") {
      continuation_len = std::atoll(argv[i + 1]);
    } else if (flag == "--reps") {
      reps = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "scoring_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (context_len < 1 || candidates < 1 || continuation_len < 1 || reps < 1) {
    std::fprintf(stderr, "scoring_bench: sizes must be positive\n");
    return 2;
  }
  LoadOptions load;
  load.load_tokenizer = false;
  auto model = TransformerLM::Load(model_dir, load);
  if (!model.ok()) {
    std::fprintf(stderr, "scoring_bench: %s\n",
                 std::string(model.status().message()).c_str());
    return 1;
  }
  const int64_t vocab = (*model)->config().vocab_size;
  torch::manual_seed(1);
  auto random_ids = [&](int64_t n) {
    torch::Tensor t = torch::randint(3, vocab, {n}, torch::kInt32);
    return std::vector<int32_t>(t.data_ptr<int32_t>(),
                                t.data_ptr<int32_t>() + n);
  };
  const std::vector<int32_t> context = random_ids(context_len);
  std::vector<std::vector<int32_t>> options;
  std::vector<ContinuationRequest> requests;
  for (int64_t c = 0; c < candidates; ++c) {
    options.push_back(random_ids(continuation_len));
    requests.push_back({context, options.back(), {}});
  }

  torch::InferenceMode inference;
  std::vector<ContinuationScore> separate, shared;
  const double separate_s = MedianSeconds(
      reps, [&] { separate = ScoreContinuations(**model, requests).value(); });
  const double shared_s = MedianSeconds(reps, [&] {
    shared = ScoreSharedContext(**model, context, options).value();
  });
  double max_diff = 0;
  for (int64_t c = 0; c < candidates; ++c) {
    max_diff = std::max(max_diff, std::abs(separate[c].log_likelihood -
                                           shared[c].log_likelihood));
  }
  std::printf(
      "model %s (%lld parameters, %d threads)\n"
      "%lld candidates x %lld tokens after a %lld-token context\n"
      "  ScoreContinuations  %8.1f ms  (%.0f candidates/s)\n"
      "  ScoreSharedContext  %8.1f ms  (%.0f candidates/s)\n"
      "  speed-up %.1fx; largest log-likelihood difference %.2e "
      "(candidate 0: %.6f vs %.6f)\n",
      model_dir.c_str(), static_cast<long long>((*model)->parameter_count()),
      torch::get_num_threads(), static_cast<long long>(candidates),
      static_cast<long long>(continuation_len),
      static_cast<long long>(context_len), separate_s * 1e3,
      candidates / separate_s, shared_s * 1e3, candidates / shared_s,
      separate_s / shared_s, max_diff, separate[0].log_likelihood,
      shared[0].log_likelihood);
  return 0;
}

}  // namespace
}  // namespace optrec

int main(int argc, char** argv) {
  absl::Status started = optrec::InitProcess(argc, argv);
  if (!started.ok()) {
    std::fprintf(stderr, "scoring_bench: %s\n", started.ToString().c_str());
    return 1;
  }
  return optrec::Run(argc, argv);
}
