// optrec eval: a task's metrics on a data split, with a prompt module or
// zero-shot (tuning/tune/evaluate.h).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/cli/args.h"
#include "core/model/transformer.h"
#include "core/runtime/device.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "tuning/cli/commands.h"
#include "tuning/tune/evaluate.h"

namespace optrec {
namespace {

Args EvalArgs() {
  return Args(
      "eval",
      "Evaluates a prompt module (--module) or the backbone alone "
      "(--zero-shot, with --task) on a split of the task's data, under each "
      "template, and prints the metrics.",
      {
          {"model", "the frozen backbone the module was trained on"},
          {"world", "data root of the spec's data and catalog paths"},
          {"module",
           "a module file written by optrec tune; repeat it to compare "
           "modules (a table of their metrics, splits and speed follows)",
           true, true},
          {"task",
           "a task spec JSON (needed with --zero-shot; with "
           "--module, replaces the module's own spec for data paths "
           "and templates)"},
          {"zero-shot",
           "evaluate the backbone alone: length-normalised "
           "log-likelihood of verbalised alternatives",
           false},
          {"split", "train, valid or test", true, false, "test"},
          {"template", "a template name, or 'all' (each in turn)", true, false,
           "all"},
          {"limit", "a fixed sample of this many examples; 0 = all", true,
           false, "0"},
          {"seed", "the sample's seed", true, false, "1"},
          {"no-decode", "generate tasks: perplexity only, no decoding", false},
          {"samples", "print this many predictions", true, false, "0"},
          {"batch-rows", "rows per forward pass", true, false, "32"},
          {"json", "also write the results to this file"},
          {"device", "auto, cpu, cuda or cuda:N", true, false, "auto"},
          {"dtype", "auto, f32, bf16 or f16", true, false, "auto"},
          {"help", "print this help", false},
      });
}

std::string MetricsLine(const nlohmann::json& m) {
  std::vector<std::string> parts;
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (it.key() == "samples" || it.key() == "template" ||
        it.key() == "module_file" || it.key() == "method" ||
        it.key() == "select_metric") {
      continue;  // in the heading, or in the comparison table
    }
    if (it.value().is_number_float()) {
      parts.push_back(
          absl::StrFormat("%s %.4f", it.key(), it.value().get<double>()));
    } else {
      parts.push_back(absl::StrCat(it.key(), " ", it.value().dump()));
    }
  }
  return absl::StrJoin(parts, "  ");
}

// One module's (or the zero-shot backbone's) results on the split, one
// JSON object per template, printed as they come.
absl::StatusOr<nlohmann::json> EvaluateOne(
    const Args& args, const std::shared_ptr<const TransformerLM>& model,
    const std::string& module_path, EvalOptions eval);

absl::Status Run(const Args& args) {
  if (args.Has("zero-shot") == args.Has("module")) {
    return absl::InvalidArgumentError(
        "--module FILE or --zero-shot: give exactly one");
  }
  if (args.Has("zero-shot") && !args.Has("task")) {
    return absl::InvalidArgumentError("--zero-shot needs --task SPEC");
  }
  const std::string split = args.Get("split");
  if (split != "train" && split != "valid" && split != "test") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--split must be train, valid or test, got '", split, "'"));
  }
  ASSIGN_OR_RETURN(int64_t limit, args.GetInt("limit"));
  RETURN_IF_ERROR(args.GetInt("seed").status());
  EvalOptions eval;
  eval.zero_shot = args.Has("zero-shot");
  eval.decode = !args.Has("no-decode");
  ASSIGN_OR_RETURN(eval.samples, args.GetInt("samples"));
  ASSIGN_OR_RETURN(eval.batch_rows, args.GetInt("batch-rows"));
  if (limit < 0 || eval.samples < 0 || eval.batch_rows < 1) {
    return absl::InvalidArgumentError(
        "--limit and --samples must not be negative, --batch-rows positive");
  }

  LoadOptions load;
  ASSIGN_OR_RETURN(load.device,
                   ResolveDevice(args.Get("device"), args.Get("dtype")));
  ASSIGN_OR_RETURN(std::shared_ptr<const TransformerLM> model,
                   TransformerLM::Load(args.Get("model"), load));
  nlohmann::json results = nlohmann::json::array();
  std::vector<std::string> modules = args.GetAll("module");
  if (modules.empty()) modules.push_back("");  // zero-shot
  for (const std::string& path : modules) {
    ASSIGN_OR_RETURN(nlohmann::json one, EvaluateOne(args, model, path, eval));
    for (nlohmann::json& m : one) results.push_back(std::move(m));
  }
  if (modules.size() > 1) {
    std::printf("\n%-28s %-15s %4s  %-22s %10s %12s\n", "module", "method",
                "L'", "template", "metric", "examples/s");
    for (const nlohmann::json& m : results) {
      const std::string metric = m["select_metric"].get<std::string>();
      const nlohmann::json& v =
          m.contains(metric) ? m[metric] : nlohmann::json();
      std::printf(
          "%-28s %-15s %4lld  %-22s %10s %12.1f\n",
          m["module_file"].get<std::string>().c_str(),
          m["method"].get<std::string>().c_str(),
          static_cast<long long>(m["lower_layers"].get<int64_t>()),
          absl::StrCat(m["template"].get<std::string>(),
                       m["held_out_template"].get<bool>() ? " (held out)" : "")
              .c_str(),
          v.is_number()
              ? absl::StrFormat("%s %.4f", metric, v.get<double>()).c_str()
              : "-",
          m["examples_per_s"].get<double>());
    }
  }
  if (args.Has("json")) {
    RETURN_IF_ERROR(WriteFileAtomic(args.Get("json"), results.dump(2) + "\n"));
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> EvaluateOne(
    const Args& args, const std::shared_ptr<const TransformerLM>& model,
    const std::string& module_path, EvalOptions eval) {
  const std::string split = args.Get("split");
  ASSIGN_OR_RETURN(int64_t limit, args.GetInt("limit"));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed"));
  std::shared_ptr<PromptModule> module;
  TaskSpec spec;
  if (!module_path.empty()) {
    ASSIGN_OR_RETURN(module, PromptModule::Load(module_path, *model));
    spec = module->spec();
  }
  if (args.Has("task")) {
    ASSIGN_OR_RETURN(spec, LoadTaskSpec(args.Get("task")));
    if (module) RETURN_IF_ERROR(module->CheckSpecFits(spec));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<TaskContext> task,
                   MakeTaskContext(spec, *model, args.Get("world")));
  task->module = module;
  const std::string path = absl::StrCat(
      ResolveDataPath(args.Get("world"), spec.data), "/", split, ".jsonl");
  ASSIGN_OR_RETURN(TaskData data,
                   LoadTaskData(task->spec, path, task->catalog.get()));
  const std::vector<Example> examples =
      SampleExamples(data.examples, limit, static_cast<uint64_t>(seed));

  std::vector<size_t> templates;
  if (!eval.zero_shot) {
    if (args.Get("template") == "all") {
      for (size_t i = 0; i < task->spec.templates.size(); ++i) {
        templates.push_back(i);
      }
    } else {
      ASSIGN_OR_RETURN(size_t index,
                       task->spec.TemplateIndex(args.Get("template")));
      templates.push_back(index);
    }
  } else {
    templates.push_back(0);
  }
  nlohmann::json results = nlohmann::json::array();
  const std::string who =
      module ? absl::StrCat(module->info().contains("version") &&
                                    module->info()["version"].is_string()
                                ? module->info()["version"].get<std::string>()
                                : "?",
                            " (", TuningMethodName(module->method()), ")")
             : "zero-shot";
  for (size_t t : templates) {
    eval.template_index = t;
    const auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(nlohmann::json m,
                     EvaluateTask(model, *task, examples, eval));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    const bool held_out = !eval.zero_shot && task->spec.templates[t].held_out;
    m["task"] = task->spec.task;
    m["split"] = split;
    m["module"] = who;
    m["module_file"] =
        module_path.empty()
            ? std::string("zero-shot")
            : std::filesystem::path(module_path).filename().string();
    m["method"] = module ? TuningMethodName(module->method()) : "zero-shot";
    m["lower_layers"] = task->spec.lower_layers;
    m["select_metric"] = task->spec.SelectMetric();
    // Whole-pass speed: late interaction's segments are encoded as they are
    // first seen (the task's segment cache starts empty), then reused.
    m["examples_per_s"] = static_cast<double>(examples.size()) / seconds;
    m["held_out_template"] = held_out;
    std::printf("%s %s, %s, template %s%s:\n  %s\n", task->spec.task.c_str(),
                who.c_str(), split.c_str(),
                m["template"].get<std::string>().c_str(),
                held_out ? " (held out)" : "", MetricsLine(m).c_str());
    if (m.contains("samples")) {
      for (const nlohmann::json& s : m["samples"]) {
        std::printf("    %s\n", s.dump().c_str());
      }
    }
    results.push_back(std::move(m));
  }
  return results;
}

}  // namespace

int RunEval(int argc, char** argv) {
  Args args = EvalArgs();
  if (int code = ParseOrExit(args, argc, argv, 2, {"model"}); code >= 0) {
    return code;
  }
  absl::Status status = Run(args);
  if (absl::IsInvalidArgument(status) &&
      std::string(status.message()).find("--") == 0) {
    return UsageError(std::string(status.message()));
  }
  if (!status.ok()) return Fail(status);
  return 0;
}

}  // namespace optrec
