// Forward-pass benchmark on a GPT-2-small-shaped random model.
//
// Prints, in one run: the forward pass's tokens/s and achieved GFLOP/s at
// batch x length 1x128 .. 32x128, each next to the machine's SGEMM rate
// (2048^3 f32 products through the same LibTorch and BLAS) measured right
// after it, with their ratio; and incremental decoding tokens/s at batch 1
// and 16. The BLAS
// kernels in use are printed next to the figures. Times are medians.
//
// usage: forward_bench [--reps N] [--quick] [--model DIR] [--trace FILE]
// --trace writes a Chrome trace of two 16x128 forward passes (LibTorch's
// profiler) instead of timing.
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/model/transformer.h"
#include "core/runtime/process.h"

namespace optrec {
namespace {

double SgemmGflops(int reps) {
  torch::InferenceMode inference;
  const int64_t n = 2048;
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n});
  torch::Tensor c;
  double secs = MedianSeconds(reps, [&] { c = torch::mm(a, b); });
  return 2.0 * n * n * n / secs / 1e9;
}

// Multiply-adds of one forward pass over B rows of T tokens, counted as
// the pass computes them (full T x T attention scores, masked after).
double ForwardFlops(const ModelConfig& c, int64_t b, int64_t t) {
  const double d = c.hidden_size, f = c.intermediate_size;
  const double e = c.head_dim, h = c.num_heads, k = c.num_kv_heads;
  const double per_token_linear =
      2.0 * d * (h + 2 * k) * e  // q, k, v
      + 2.0 * h * e * d          // output projection
      + 2.0 * d * f * (c.family == Family::kLlama ? 3 : 2);  // MLP
  const double per_token_attention = 2.0 * 2.0 * h * e * t;  // QK^T and PV
  return b * t * c.num_layers * (per_token_linear + per_token_attention);
}

std::vector<RowInput> RandomRows(const ModelConfig& config, int64_t b,
                                 int64_t t) {
  std::vector<RowInput> rows(b);
  for (auto& row : rows) {
    torch::Tensor ids = torch::randint(config.vocab_size, {t});
    for (int64_t i = 0; i < t; ++i) {
      row.ids.push_back(static_cast<int32_t>(ids[i].item<int64_t>()));
    }
  }
  return rows;
}

int Trace(const TransformerLM& model, const std::string& path) {
  std::vector<RowInput> rows = RandomRows(model.config(), 16, 128);
  ForwardOptions options;
  options.logits = ForwardOptions::Logits::kNone;
  if (!model.Forward(rows, nullptr, options).ok()) return 1;
  {
    torch::autograd::profiler::RecordProfile guard(path);
    for (int i = 0; i < 2; ++i) {
      if (!model.Forward(rows, nullptr, options).ok()) return 1;
    }
  }
  std::printf("wrote %s\n", path.c_str());
  return 0;
}

int Main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // figures appear as measured
  absl::Status started = InitProcess(argc, argv);
  if (!started.ok()) {
    std::fprintf(stderr, "forward_bench: %s\n", started.ToString().c_str());
    return 1;
  }
  int reps = 5;
  bool quick = false;
  std::string model_dir, trace;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--model") && i + 1 < argc) {
      model_dir = argv[++i];
    } else if (!std::strcmp(argv[i], "--trace") && i + 1 < argc) {
      trace = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: forward_bench [--reps N] [--quick] [--model DIR] "
                   "[--trace FILE]\n");
      return 2;
    }
  }
  if (quick) reps = 1;

  auto loaded = LoadBenchModel(model_dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "forward_bench: %s\n",
                 loaded.status().ToString().c_str());
    return 1;
  }
  const TransformerLM& model = **loaded;
  const ModelConfig& config = model.config();

  const std::string kernels = DescribeBlasKernels(CurrentBlasKernels());
  std::printf("BLAS: %s\n", kernels.c_str());
  std::printf("torch threads: %d, reps: %d (median reported)\n",
              torch::get_num_threads(), reps);
  std::printf("model: %s, %ld layers, width %ld, %ld parameters\n",
              config.model_type.c_str(), static_cast<long>(config.num_layers),
              static_cast<long>(config.hidden_size),
              static_cast<long>(model.parameter_count()));
  std::printf("SGEMM 2048^3 before the sweep: %.1f GFLOP/s\n\n",
              SgemmGflops(reps));

  torch::InferenceMode inference;
  if (!trace.empty()) return Trace(model, trace);
  std::printf("forward (hidden states, no LM head)\n");
  std::printf("%-9s %12s %12s %12s %10s\n", "BxT", "tokens/s", "GFLOP/s",
              "SGEMM", "ratio");
  const int64_t t = 128;
  std::vector<int64_t> batches = {1, 4, 8, 16, 32};
  if (quick) batches = {1, 16};
  torch::manual_seed(1);
  for (int64_t b : batches) {
    std::vector<RowInput> rows = RandomRows(config, b, t);
    ForwardOptions options;
    options.logits = ForwardOptions::Logits::kNone;
    double secs = MedianSeconds(reps, [&] {
      auto out = model.Forward(rows, nullptr, options);
      if (!out.ok()) std::abort();
    });
    const double gflops = ForwardFlops(config, b, t) / secs / 1e9;
    // The SGEMM rate is measured right after each row, so that the ratio
    // compares the two under the same machine load.
    const double sgemm = SgemmGflops(reps);
    std::printf("%3ldx%-5ld %12.0f %12.1f %12.1f %10.2f\n",
                static_cast<long>(b), static_cast<long>(t), b * t / secs,
                gflops, sgemm, gflops / sgemm);
  }

  std::printf("\nincremental decoding (KV cache, logits of the last token)\n");
  std::printf("%-6s %10s %12s\n", "batch", "context", "tokens/s");
  const int64_t steps = quick ? 8 : 32;
  for (int64_t b : {int64_t{1}, int64_t{16}}) {
    std::vector<RowInput> prompt(b);
    for (auto& row : prompt) row.ids.assign(t, 11);
    ForwardOptions options;
    options.logits = ForwardOptions::Logits::kLast;
    std::vector<RowInput> step(b);
    for (auto& row : step) row.ids = {13};
    // Each run decodes `steps` tokens after an untimed prompt of T tokens.
    std::vector<double> times;
    for (int rep = 0; rep <= std::max(1, reps / 2); ++rep) {
      KVCache cache = model.NewCache(b);
      if (!model.Forward(prompt, &cache, options).ok()) std::abort();
      double secs = Seconds([&] {
        for (int64_t s = 0; s < steps; ++s) {
          if (!model.Forward(step, &cache, options).ok()) std::abort();
        }
      });
      if (rep > 0) times.push_back(secs);  // rep 0 warms up
    }
    std::sort(times.begin(), times.end());
    const double decode = times[times.size() / 2];
    std::printf("%-6ld %10ld %12.1f\n", static_cast<long>(b),
                static_cast<long>(t), b * steps / decode);
  }
  std::printf("\nBLAS: %s\n", kernels.c_str());
  return 0;
}

}  // namespace
}  // namespace optrec

int main(int argc, char** argv) { return optrec::Main(argc, argv); }
