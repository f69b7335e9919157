// Training-step benchmark of option tuning on a GPT-2-small-shaped random
// model. In one run, over the same batch (B rows of T positions: a P-vector
// soft prompt and T - P token ids, a two-option score task):
//   forward      the inference forward pass and option scores (no autograd)
//   option       an option-tuning step: forward with autograd, backward to
//                the soft prompt only, AdamW on the module
//   adapter      the same with low-rank FFN adapters (option_adapter), the
//                method the figure of merit is about
//   full         a full fine-tuning step: every backbone weight gets a
//                gradient, then an SGD update on copies of the weights (the
//                loaded weights are memory-mapped read-only)
// Each step is reported as examples/s and as a multiple of the forward
// pass. Only activation gradients are needed when the backbone is frozen,
// so the tuned steps should cost about twice a forward pass; full
// fine-tuning also computes weight gradients (about three). Times are
// medians.
//
// usage: tuning_bench [--reps N] [--batch B] [--tokens T] [--prompt P]
//                     [--rank R] [--model DIR]
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "core/runtime/blas_kernels.h"
#include "core/runtime/process.h"
#include "core/util/status_macros.h"
#include "tuning/module/prompt_module.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

struct Flags {
  int reps = 3;
  int64_t batch = 16, tokens = 128, prompt = 16, rank = 8;
  std::string model;
};

absl::StatusOr<TaskSpec> BenchSpec(const Flags& f) {
  return ParseTaskSpec(
      {{"task", "bench"},
       {"kind", "score"},
       {"data", "unused"},
       {"prompt_length", f.prompt},
       {"adapter_rank", f.rank},
       {"max_tokens", f.tokens - f.prompt},
       {"options",
        {{{"label", 0}, {"text", "no"}}, {{"label", 1}, {"text", "yes"}}}},
       {"templates", {{{"name", "t"}, {"input", {"{text}"}}}}}},
      "tuning_bench");
}

// A task context and module for `method`, and a batch part of random rows.
struct Setup {
  std::unique_ptr<TaskContext> task;
  BatchPart part;
};

absl::StatusOr<Setup> MakeSetup(const TransformerLM& model, const Flags& f,
                                TuningMethod method) {
  Setup s;
  s.task = std::make_unique<TaskContext>();
  ASSIGN_OR_RETURN(s.task->spec, BenchSpec(f));
  ASSIGN_OR_RETURN(s.task->module,
                   PromptModule::CreateFromIds(s.task->spec, method, model,
                                               {{10}, {11}}, {}, 1));
  torch::manual_seed(2);
  s.part.task = s.task.get();
  s.part.module = s.task->module.get();
  const int64_t n = f.tokens - f.prompt;
  for (int64_t r = 0; r < f.batch; ++r) {
    PreparedExample e;
    torch::Tensor ids = torch::randint(model.config().vocab_size, {n});
    for (int64_t i = 0; i < n; ++i) {
      e.input.ids.push_back(static_cast<int32_t>(ids[i].item<int64_t>()));
    }
    e.label = static_cast<int>(r % 2);
    s.part.examples.push_back(std::move(e));
  }
  return s;
}

double LossValue(const absl::StatusOr<std::vector<PartOutput>>& out) {
  if (!out.ok()) {
    std::fprintf(stderr, "tuning_bench: %s\n", out.status().ToString().c_str());
    std::exit(1);
  }
  return (*out)[0].loss.item<double>();
}

int Run(const Flags& f) {
  auto loaded = LoadBenchModel(f.model);
  if (!loaded.ok()) {
    std::fprintf(stderr, "tuning_bench: %s\n",
                 loaded.status().ToString().c_str());
    return 1;
  }
  const TransformerLM& model = **loaded;
  std::printf("BLAS: %s\n", DescribeBlasKernels(CurrentBlasKernels()).c_str());
  std::printf(
      "model: %s, %lld layers, width %lld, %lld parameters; %d threads\n",
      model.config().model_type.c_str(),
      static_cast<long long>(model.config().num_layers),
      static_cast<long long>(model.config().hidden_size),
      static_cast<long long>(model.parameter_count()),
      torch::get_num_threads());
  std::printf(
      "batch %lld x %lld positions (%lld soft-prompt vectors), "
      "%d reps, medians\n\n",
      static_cast<long long>(f.batch), static_cast<long long>(f.tokens),
      static_cast<long long>(f.prompt), f.reps);

  auto option = MakeSetup(model, f, TuningMethod::kOption);
  auto adapter = MakeSetup(model, f, TuningMethod::kOptionAdapter);
  if (!option.ok() || !adapter.ok()) {
    std::fprintf(
        stderr, "tuning_bench: %s\n",
        (option.ok() ? adapter.status() : option.status()).ToString().c_str());
    return 1;
  }
  std::printf("adapter module: %lld parameters (%.2f%% of the backbone)\n\n",
              static_cast<long long>(adapter->task->module->ParameterCount()),
              100.0 * adapter->task->module->ParameterCount() /
                  model.parameter_count());

  // The inference forward pass of the adapter batch.
  const double forward_s = MedianSeconds(f.reps, [&] {
    torch::NoGradGuard no_grad;
    LossValue(RunMixedBatch(model, {adapter->part}));
  });

  auto tuned_step = [&](Setup& s) {
    torch::optim::AdamW optimizer(s.task->module->Parameters(),
                                  torch::optim::AdamWOptions(1e-3));
    return MedianSeconds(f.reps, [&] {
      auto out = RunMixedBatch(model, {s.part});
      LossValue(out);
      optimizer.zero_grad();
      (*out)[0].loss.backward();
      optimizer.step();
    });
  };
  const double option_s = tuned_step(*option);
  const double adapter_s = tuned_step(*adapter);

  // Full fine-tuning: weight gradients for every backbone tensor.
  std::vector<torch::Tensor> weights = model.parameters();
  std::vector<torch::Tensor> copies;
  for (torch::Tensor& w : weights) {
    w.requires_grad_(true);
    copies.push_back(w.detach().clone());
  }
  const double full_s = MedianSeconds(f.reps, [&] {
    auto out = RunMixedBatch(model, {option->part});
    LossValue(out);
    for (torch::Tensor& w : weights) w.mutable_grad() = torch::Tensor();
    (*out)[0].loss.backward();
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (weights[i].grad().defined()) copies[i].add_(weights[i].grad(), -1e-4);
    }
  });
  for (torch::Tensor& w : weights) {
    w.mutable_grad() = torch::Tensor();
    w.requires_grad_(false);
  }

  auto row = [&](const char* name, double s) {
    std::printf("  %-28s %9.1f ms  %7.2f examples/s  %5.2fx forward\n", name,
                s * 1e3, f.batch / s, s / forward_s);
  };
  std::printf(
      "step                              time      throughput   "
      "vs forward\n");
  row("forward (inference)", forward_s);
  row("option tuning step", option_s);
  row("option-adapter tuning step", adapter_s);
  row("full fine-tuning step", full_s);
  std::printf(
      "\noption-adapter step / forward: %.2f (target <= 2.3); full "
      "fine-tuning / forward: %.2f\n",
      adapter_s / forward_s, full_s / forward_s);
  return 0;
}

}  // namespace
}  // namespace optrec

int main(int argc, char** argv) {
  absl::Status started = optrec::InitProcess(argc, argv);
  if (!started.ok()) {
    std::fprintf(stderr, "tuning_bench: %s\n", started.ToString().c_str());
    return 1;
  }
  optrec::Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--reps" && has_value) {
      f.reps = std::atoi(argv[++i]);
    } else if (flag == "--batch" && has_value) {
      f.batch = std::atoll(argv[++i]);
    } else if (flag == "--tokens" && has_value) {
      f.tokens = std::atoll(argv[++i]);
    } else if (flag == "--prompt" && has_value) {
      f.prompt = std::atoll(argv[++i]);
    } else if (flag == "--rank" && has_value) {
      f.rank = std::atoll(argv[++i]);
    } else if (flag == "--model" && has_value) {
      f.model = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: tuning_bench [--reps N] [--batch B] [--tokens T] "
                   "[--prompt P] [--rank R] [--model DIR]\n");
      return 2;
    }
  }
  if (f.reps < 1 || f.batch < 1 || f.prompt < 2 || f.tokens <= f.prompt ||
      f.rank < 1) {
    std::fprintf(stderr,
                 "tuning_bench: sizes must be positive, tokens > "
                 "prompt >= 2\n");
    return 2;
  }
  return optrec::Run(f);
}
