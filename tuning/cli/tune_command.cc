// optrec tune: trains prompt modules over the frozen backbone, several
// tasks in mixed batches (tuning/tune/tuner.h).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/cli/args.h"
#include "core/runtime/device.h"
#include "core/util/status_macros.h"
#include "tuning/cli/commands.h"
#include "tuning/tasks/task_spec.h"
#include "tuning/tune/tuner.h"

namespace optrec {
namespace {

Args TuneArgs() {
  const TuneOptions d;
  auto num = [](auto v) { return absl::StrCat(v); };
  return Args(
      "tune",
      "Trains one prompt module per task over a frozen model; several "
      "--task flags train together, every batch mixing their examples. "
      "Rerun the same command after an interruption to continue from the "
      "last checkpoint.",
      {
          {"model", "the frozen backbone (a Hugging Face model directory)"},
          {"world",
           "data root: the specs' data and catalog paths are "
           "relative to it (the world's directory)"},
          {"task",
           "a task spec JSON, optionally followed by ,method=M ,version=V "
           ",weight=W ,batch=N for that task alone",
           true, true},
          {"out", "folder for the module files <task>.<version>.safetensors"},
          {"method",
           "prompt, option or option_adapter for every task "
           "(default: each spec's)"},
          {"version", "module version for every task", true, false, "v1"},
          {"work-dir", "checkpoints (default OUT/.tune-work/<tasks>)"},
          {"force", "replace module files and a work dir of another run",
           false},
          {"seed", "initial modules, data order, templates", true, false,
           num(d.seed)},
          {"steps", "optimizer steps at most", true, false, num(d.steps)},
          {"batch", "examples of each task per step", true, false,
           num(d.batch_examples)},
          {"lr", "peak learning rate (AdamW)", true, false,
           num(d.learning_rate)},
          {"min-lr", "learning rate at the end of the cosine decay", true,
           false, num(d.min_learning_rate)},
          {"warmup", "linear warm-up steps", true, false, num(d.warmup_steps)},
          {"weight-decay", "AdamW weight decay", true, false,
           num(d.weight_decay)},
          {"clip", "per-task gradient norm clipping; 0 = off", true, false,
           num(d.grad_clip_norm)},
          {"max-train-examples", "use the first N training examples; 0 = all",
           true, false, num(d.max_train_examples)},
          {"eval-every", "steps between validations", true, false,
           num(d.eval_every)},
          {"eval-examples", "validation examples per task; 0 = all", true,
           false, num(d.eval_examples)},
          {"patience",
           "validations without improvement before a task "
           "stops; 0 = never",
           true, false, num(d.patience)},
          {"checkpoint-every", "steps between checkpoints", true, false,
           num(d.checkpoint_every)},
          {"device", "auto, cpu, cuda or cuda:N", true, false, "auto"},
          {"dtype", "auto, f32, bf16 or f16", true, false, "auto"},
          {"help", "print this help", false},
      });
}

// "SPEC[,method=M][,version=V][,weight=W][,batch=N]".
absl::StatusOr<TuneTaskOptions> ParseTask(const std::string& text,
                                          const std::string& method,
                                          const std::string& version) {
  std::vector<std::string> parts = absl::StrSplit(text, ',');
  TuneTaskOptions t;
  t.spec_path = parts[0];
  t.method = method;
  t.version = version;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::vector<std::string> kv =
        absl::StrSplit(parts[i], absl::MaxSplits('=', 1));
    if (kv.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("--task ", text, ": '", parts[i], "' is not key=value"));
    }
    if (kv[0] == "method") {
      t.method = kv[1];
    } else if (kv[0] == "version") {
      t.version = kv[1];
    } else if (kv[0] == "batch") {
      if (!absl::SimpleAtoi(kv[1], &t.batch_examples) || t.batch_examples < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--task ", text, ": batch '", kv[1],
                         "' is not a positive integer"));
      }
    } else if (kv[0] == "weight") {
      if (!absl::SimpleAtod(kv[1], &t.loss_weight)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--task ", text, ": weight '", kv[1], "' is not a number"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--task ", text, ": unknown key '", kv[0],
                       "' (known: method, version, weight, batch)"));
    }
  }
  if (!t.method.empty()) {
    absl::StatusOr<TuningMethod> m = ParseTuningMethod(t.method);
    if (!m.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--task ", text, ": ", m.status().message()));
    }
  }
  return t;
}

absl::StatusOr<TuneOptions> OptionsFrom(const Args& args, int argc,
                                        char** argv) {
  TuneOptions o;
  o.model_dir = args.Get("model");
  o.data_root = args.Get("world");
  o.out_dir = args.Get("out");
  o.work_dir = args.Get("work-dir");
  o.force = args.Has("force");
  for (const std::string& task : args.GetAll("task")) {
    ASSIGN_OR_RETURN(TuneTaskOptions t,
                     ParseTask(task, args.Get("method"), args.Get("version")));
    o.tasks.push_back(std::move(t));
  }
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed"));
  if (seed < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed must not be negative, got ", seed));
  }
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.steps, args.GetInt("steps"));
  ASSIGN_OR_RETURN(o.batch_examples, args.GetInt("batch"));
  ASSIGN_OR_RETURN(o.learning_rate, args.GetDouble("lr"));
  ASSIGN_OR_RETURN(o.min_learning_rate, args.GetDouble("min-lr"));
  ASSIGN_OR_RETURN(o.warmup_steps, args.GetInt("warmup"));
  ASSIGN_OR_RETURN(o.weight_decay, args.GetDouble("weight-decay"));
  ASSIGN_OR_RETURN(o.grad_clip_norm, args.GetDouble("clip"));
  ASSIGN_OR_RETURN(o.max_train_examples, args.GetInt("max-train-examples"));
  ASSIGN_OR_RETURN(o.eval_every, args.GetInt("eval-every"));
  ASSIGN_OR_RETURN(o.eval_examples, args.GetInt("eval-examples"));
  ASSIGN_OR_RETURN(o.patience, args.GetInt("patience"));
  ASSIGN_OR_RETURN(o.checkpoint_every, args.GetInt("checkpoint-every"));
  ASSIGN_OR_RETURN(o.device,
                   ResolveDevice(args.Get("device"), args.Get("dtype")));
  o.command_line = ShellCommandLine(argc, argv);
  return o;
}

}  // namespace

int RunTune(int argc, char** argv) {
  Args args = TuneArgs();
  if (int code = ParseOrExit(args, argc, argv, 2, {"model", "task", "out"});
      code >= 0) {
    return code;
  }
  absl::StatusOr<TuneOptions> options = OptionsFrom(args, argc, argv);
  if (!options.ok()) return UsageError(std::string(options.status().message()));
  if (absl::Status valid = ValidateTuneOptions(*options); !valid.ok()) {
    return UsageError(std::string(valid.message()));
  }
  absl::StatusOr<TuneResult> result = Tune(*options);
  if (!result.ok()) return Fail(result.status());
  std::printf("%lld steps, %.1f examples/s, %.1f min of training\n",
              static_cast<long long>(result->steps),
              result->examples_per_second, result->seconds / 60.0);
  for (const TunedTask& t : result->tasks) {
    std::printf(
        "wrote %s: %s, %lld parameters (%.2f%% of the backbone), "
        "best at step %lld: %s\n",
        t.module_path.c_str(), t.method.c_str(),
        static_cast<long long>(t.parameters), 100.0 * t.parameter_share,
        static_cast<long long>(t.best_step), t.best_metrics.dump().c_str());
  }
  return 0;
}

}  // namespace optrec
