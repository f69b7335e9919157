#include "tuning/tune/tuner.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint/safetensors.h"
#include "core/model/transformer.h"
#include "core/util/files.h"
#include "core/util/hash.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"
#include "tuning/common/progress.h"
#include "tuning/common/run_dir.h"
#include "tuning/tune/evaluate.h"
#include "tuning/tune/task_batch.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Named = PromptModule::Named;

// One task while the job runs.
struct TaskRun {
  TuneTaskOptions options;
  std::unique_ptr<TaskContext> context;
  TuningMethod method = TuningMethod::kOption;
  TaskData train, valid;
  std::vector<Example> valid_sample;
  std::vector<size_t> templates;  // training templates
  int64_t batch = 0;              // examples a step
  std::string module_path;
  std::string select_metric;

  // Progress, saved in checkpoints.
  double best_value = -INFINITY;
  int64_t best_step = 0;
  Json best_metrics;
  int64_t evals_since_best = 0;
  bool stopped = false;  // early stopping
  Json curve = Json::array();
  Named best;  // copies of the best tensors (empty before any validation)
};

std::string WorkDir(const TuneOptions& o) {
  if (!o.work_dir.empty()) return o.work_dir;
  std::vector<std::string> names;
  for (const TuneTaskOptions& t : o.tasks) {
    names.push_back(fs::path(t.spec_path).stem().string() + "." + t.version);
  }
  return (fs::path(o.out_dir) / ".tune-work" / absl::StrJoin(names, "+"))
      .string();
}

// Which examples each step takes: epoch e visits the task's N examples in
// the order of a permutation drawn from (seed, task, e).
class ExampleOrder {
 public:
  ExampleOrder(int64_t n, int64_t batch, uint64_t seed)
      : n_(n), batch_(batch), seed_(seed) {}

  std::vector<int64_t> Step(int64_t step) {
    std::vector<int64_t> picked(batch_);
    for (int64_t i = 0; i < batch_; ++i) {
      const int64_t global = step * batch_ + i;
      const int64_t epoch = global / n_;
      if (epoch != epoch_) {
        torch::Generator gen = at::detail::createCPUGenerator(
            seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
        perm_ = torch::randperm(n_, gen, torch::kInt64);
        epoch_ = epoch;
      }
      picked[i] = perm_[global % n_].item<int64_t>();
    }
    return picked;
  }

 private:
  int64_t n_, batch_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  torch::Tensor perm_;
};

// A template for example `slot` of `step`, drawn uniformly from the
// training templates by a hash (SplitMix64's finaliser) of its position.
size_t PickTemplate(const TaskRun& run, uint64_t seed, int64_t step,
                    int64_t slot) {
  if (run.templates.size() == 1) return run.templates[0];
  uint64_t z = seed ^ (static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ULL) ^
               (static_cast<uint64_t>(slot) << 32);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return run.templates[z % run.templates.size()];
}

// The hash of the model directory's tokenizer file (the fingerprint covers
// config and weights only), or "" when it has none.
std::string TokenizerHash(const std::string& dir) {
  for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
    absl::StatusOr<std::string> hash =
        FileXxh3Hex128((fs::path(dir) / name).string());
    if (hash.ok()) return *hash;
  }
  return "";
}

Json RunSettings(const TuneOptions& o, const TransformerLM& model,
                 const std::vector<std::unique_ptr<TaskRun>>& runs) {
  Json tasks = Json::array();
  for (const auto& run : runs) {
    tasks.push_back(
        {{"spec", run->context->spec.json},
         {"method", TuningMethodName(run->method)},
         {"version", run->options.version},
         {"loss_weight", run->options.loss_weight},
         {"batch_examples", run->batch},
         {"train_hash", run->train.hash},
         {"valid_hash", run->valid.hash},
         {"catalog_hash",
          run->context->catalog ? run->context->catalog->hash() : ""}});
  }
  return {{"base_model_fingerprint", model.fingerprint()},
          {"tokenizer_hash", TokenizerHash(model.directory())},
          {"tasks", tasks},
          {"seed", o.seed},
          {"steps", o.steps},
          {"batch_examples", o.batch_examples},
          {"learning_rate", o.learning_rate},
          {"min_learning_rate", o.min_learning_rate},
          {"warmup_steps", o.warmup_steps},
          {"weight_decay", o.weight_decay},
          {"grad_clip_norm", o.grad_clip_norm},
          {"max_train_examples", o.max_train_examples},
          {"eval_every", o.eval_every},
          {"eval_examples", o.eval_examples},
          {"patience", o.patience},
          {"dtype", DtypeName(model.device().dtype)}};
}

absl::StatusOr<std::unique_ptr<TaskRun>> OpenTask(const TuneOptions& o,
                                                  const TuneTaskOptions& t,
                                                  size_t index,
                                                  const TransformerLM& model) {
  auto run = std::make_unique<TaskRun>();
  run->options = t;
  ASSIGN_OR_RETURN(TaskSpec spec, LoadTaskSpec(t.spec_path));
  run->method = spec.method;
  if (!t.method.empty()) {
    ASSIGN_OR_RETURN(run->method, ParseTuningMethod(t.method));
  }
  ASSIGN_OR_RETURN(run->context, MakeTaskContext(spec, model, o.data_root));
  const TaskSpec& s = run->context->spec;
  const std::string folder = ResolveDataPath(o.data_root, s.data);
  const Catalog* catalog = run->context->catalog.get();
  TaskDataOptions train_options;
  train_options.limit = o.max_train_examples;
  train_options.training = true;
  train_options.seed = o.seed;
  ASSIGN_OR_RETURN(run->train, LoadTaskData(s, folder + "/train.jsonl", catalog,
                                            train_options));
  ASSIGN_OR_RETURN(run->valid,
                   LoadTaskData(s, folder + "/valid.jsonl", catalog));
  run->valid_sample = SampleExamples(run->valid.examples, o.eval_examples,
                                     o.seed + 7919 * index);
  run->templates = s.TrainingTemplates();
  run->select_metric = s.SelectMetric();
  run->batch = t.batch_examples > 0 ? t.batch_examples : o.batch_examples;
  if (s.kind == TaskKind::kRetrieve && run->batch < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", s.task,
                     ": retrieval needs --batch of 2 or more (in-batch "
                     "negatives)"));
  }
  run->module_path = (fs::path(o.out_dir) /
                      absl::StrCat(s.task, ".", t.version, ".safetensors"))
                         .string();
  std::error_code ec;
  if (fs::exists(run->module_path, ec) && !o.force) {
    return absl::FailedPreconditionError(
        absl::StrCat(run->module_path,
                     " exists; module versions are immutable: pick "
                     "another --version or pass --force"));
  }
  ASSIGN_OR_RETURN(
      run->context->module,
      PromptModule::Create(s, run->method, model, *run->context->encoder,
                           o.seed + 104729 * index));
  LOG_INFO << "task " << s.task << " (" << TaskKindName(s.kind) << ", "
           << TuningMethodName(run->method)
           << "): " << run->train.examples.size() << " training and "
           << run->valid_sample.size() << " validation examples, "
           << run->context->module->ParameterCount() << " parameters ("
           << absl::StrFormat("%.2f%%",
                              100.0 * run->context->module->ParameterCount() /
                                  model.parameter_count())
           << " of the backbone)";
  return run;
}

Named Clone(const Named& tensors) {
  Named out;
  for (const auto& [name, t] : tensors) {
    out.emplace_back(name, t.detach().clone());
  }
  return out;
}

Json TaskState(const TaskRun& run) {
  return {{"best_value",
           std::isfinite(run.best_value) ? Json(run.best_value) : Json()},
          {"best_step", run.best_step},
          {"best_metrics", run.best_metrics},
          {"evals_since_best", run.evals_since_best},
          {"stopped", run.stopped},
          {"curve", run.curve}};
}

struct JobState {
  int64_t step = 0;
  int64_t examples_seen = 0;
  double seconds = 0;
  int threads = 0;
};

absl::Status SaveCheckpoint(const std::string& work,
                            const std::vector<std::unique_ptr<TaskRun>>& runs,
                            const torch::optim::AdamW& optimizer,
                            const JobState& state) {
  const CheckpointDir checkpoints(work);
  ASSIGN_OR_RETURN(StagedDirectory staged, checkpoints.Begin(state.step));
  Json tasks = Json::array();
  for (size_t i = 0; i < runs.size(); ++i) {
    Named current;
    for (const auto& [name, t] : runs[i]->context->module->NamedTensors()) {
      current.emplace_back(name, t.detach());
    }
    RETURN_IF_ERROR(WriteSafetensors(
        absl::StrCat(staged.path(), "/task-", i, ".safetensors"), current));
    if (!runs[i]->best.empty()) {
      RETURN_IF_ERROR(WriteSafetensors(
          absl::StrCat(staged.path(), "/task-", i, ".best.safetensors"),
          runs[i]->best));
    }
    tasks.push_back(TaskState(*runs[i]));
  }
  try {
    torch::save(optimizer, staged.path() + "/optimizer.pt");
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("cannot save the optimizer: ", TorchErrorMessage(e)));
  }
  const Json j = {{"step", state.step},
                  {"examples_seen", state.examples_seen},
                  {"seconds", state.seconds},
                  {"threads", state.threads},
                  {"tasks", tasks}};
  RETURN_IF_ERROR(
      WriteFileAtomic(staged.path() + "/state.json", j.dump(2) + "\n"));
  return checkpoints.Publish(std::move(staged), state.step);
}

absl::StatusOr<Named> ReadTensors(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  Named out;
  for (const std::string& name : file->names()) {
    ASSIGN_OR_RETURN(torch::Tensor t,
                     ToTorch(file, *file->Find(name), torch::kFloat32));
    out.emplace_back(name, t.clone());
  }
  return out;
}

// Restores the newest checkpoint into the modules, the optimizer and the
// task states; returns the job state (step 0 when there is none).
absl::StatusOr<JobState> LoadCheckpoint(
    const std::string& work, const std::vector<std::unique_ptr<TaskRun>>& runs,
    torch::optim::AdamW& optimizer) {
  ASSIGN_OR_RETURN(std::string dir, CheckpointDir(work).Latest());
  if (dir.empty()) return JobState{};
  ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/state.json"));
  const Json j = Json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("step") || !j.contains("tasks") ||
      !j["tasks"].is_array() || j["tasks"].size() != runs.size()) {
    return absl::DataLossError(absl::StrCat(dir, "/state.json is corrupt"));
  }
  JobState state;
  try {
    state.step = j.at("step").get<int64_t>();
    state.examples_seen = j.at("examples_seen").get<int64_t>();
    state.seconds = j.at("seconds").get<double>();
    state.threads = j.at("threads").get<int>();
    for (size_t i = 0; i < runs.size(); ++i) {
      TaskRun& run = *runs[i];
      const Json& t = j["tasks"][i];
      ASSIGN_OR_RETURN(Named current, ReadTensors(absl::StrCat(
                                          dir, "/task-", i, ".safetensors")));
      RETURN_IF_ERROR(run.context->module->CopyFrom(current));
      const std::string best =
          absl::StrCat(dir, "/task-", i, ".best.safetensors");
      if (fs::exists(best)) {
        ASSIGN_OR_RETURN(run.best, ReadTensors(best));
      }
      run.best_value = t.at("best_value").is_number()
                           ? t.at("best_value").get<double>()
                           : -INFINITY;
      run.best_step = t.at("best_step").get<int64_t>();
      run.best_metrics = t.at("best_metrics");
      run.evals_since_best = t.at("evals_since_best").get<int64_t>();
      run.stopped = t.at("stopped").get<bool>();
      run.curve = t.at("curve");
    }
  } catch (const Json::exception& e) {
    return absl::DataLossError(
        absl::StrCat(dir, "/state.json is corrupt: ", e.what()));
  }
  try {
    torch::load(optimizer, dir + "/optimizer.pt");
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint ", dir,
        ": cannot load the optimizer state: ", TorchErrorMessage(e)));
  }
  if (state.threads > 0 && state.threads != torch::get_num_threads()) {
    LOG_WARNING << "the checkpoint was written with " << state.threads
                << " threads, this run has " << torch::get_num_threads()
                << ": the result will differ from an uninterrupted run in "
                   "the last digits";
  }
  return state;
}

// Validates every task that is still training, updates its best module and
// early-stopping count.
absl::Status Validate(const std::shared_ptr<const TransformerLM>& model,
                      const std::vector<std::unique_ptr<TaskRun>>& runs,
                      const TuneOptions& o, const JobState& state) {
  for (const auto& run : runs) {
    if (run->stopped) continue;
    EvalOptions eval;
    eval.template_index = run->templates[0];
    eval.decode = SelectNeedsDecoding(run->context->spec);
    ASSIGN_OR_RETURN(Json metrics, EvaluateTask(model, *run->context,
                                                run->valid_sample, eval));
    const double value = SelectionValue(metrics, run->select_metric);
    Json point = metrics;
    point["step"] = state.step;
    point["examples_seen"] = state.examples_seen;
    run->curve.push_back(point);
    if (std::isfinite(value) && value > run->best_value) {
      run->best_value = value;
      run->best_step = state.step;
      run->best_metrics = metrics;
      run->best = Clone(run->context->module->NamedTensors());
      run->evals_since_best = 0;
    } else {
      ++run->evals_since_best;
      if (o.patience > 0 && run->evals_since_best >= o.patience) {
        run->stopped = true;
        LOG_INFO << "task " << run->context->spec.task << ": no better "
                 << run->select_metric << " for " << o.patience
                 << " validations; stopping it (best at step " << run->best_step
                 << ")";
      }
    }
    LOG_INFO << "step " << state.step << " validation "
             << run->context->spec.task << ": " << run->select_metric << " "
             << absl::StrFormat("%.4f", value) << " (best "
             << absl::StrFormat("%.4f", run->best_value) << " at step "
             << run->best_step << ")";
  }
  return absl::OkStatus();
}

// TrainStep's body; LibTorch errors propagate as exceptions.
absl::StatusOr<std::vector<double>> TrainStepImpl(
    const TransformerLM& model, std::vector<std::unique_ptr<TaskRun>>& runs,
    std::vector<ExampleOrder>& orders, const TuneOptions& o,
    torch::optim::AdamW& optimizer, int64_t step, int64_t* examples) {
  std::vector<BatchPart> parts;
  std::vector<size_t> part_task;
  for (size_t i = 0; i < runs.size(); ++i) {
    TaskRun& run = *runs[i];
    if (run.stopped) continue;
    BatchPart part;
    part.task = run.context.get();
    part.module = run.context->module.get();
    const std::vector<int64_t> picked = orders[i].Step(step);
    for (size_t k = 0; k < picked.size(); ++k) {
      const TaskTemplate& t =
          run.context->spec.templates[PickTemplate(run, o.seed + i, step, k)];
      ASSIGN_OR_RETURN(
          PreparedExample p,
          PrepareExample(*run.context, run.train.examples[picked[k]], t));
      part.examples.push_back(std::move(p));
    }
    *examples += static_cast<int64_t>(part.examples.size());
    parts.push_back(std::move(part));
    part_task.push_back(i);
  }
  ASSIGN_OR_RETURN(std::vector<PartOutput> outputs,
                   RunMixedBatch(model, parts));
  std::vector<double> losses(runs.size(), NAN);
  torch::Tensor total;
  for (size_t p = 0; p < outputs.size(); ++p) {
    const TaskRun& run = *runs[part_task[p]];
    const double value = outputs[p].loss.item<double>();
    if (!std::isfinite(value)) {
      return absl::FailedPreconditionError(
          absl::StrCat("task ", run.context->spec.task, ": the loss became ",
                       value, " at step ", step + 1,
                       "; lower --lr (the last good checkpoint is kept)"));
    }
    losses[part_task[p]] = value;
    torch::Tensor weighted = outputs[p].loss * run.options.loss_weight;
    total = total.defined() ? total + weighted : weighted;
  }
  optimizer.zero_grad();
  total.backward();
  // A non-finite gradient would poison the module (and the next
  // checkpoint) while the loss still looked fine: stop before the update.
  for (size_t i : part_task) {
    const std::vector<torch::Tensor> params =
        runs[i]->context->module->Parameters();
    std::vector<torch::Tensor> norms;
    for (const torch::Tensor& t : params) {
      if (t.grad().defined()) norms.push_back(t.grad().norm());
    }
    const double norm =
        norms.empty() ? 0.0 : torch::stack(norms).norm().item<double>();
    if (!std::isfinite(norm)) {
      return absl::FailedPreconditionError(
          absl::StrCat("task ", runs[i]->context->spec.task,
                       ": the gradient became ", norm, " at step ", step + 1,
                       "; lower --lr (the last good checkpoint is kept)"));
    }
    if (o.grad_clip_norm > 0 && norm > o.grad_clip_norm) {
      torch::NoGradGuard no_grad;
      for (const torch::Tensor& t : params) {
        if (t.grad().defined()) t.grad().mul_(o.grad_clip_norm / norm);
      }
    }
  }
  optimizer.step();
  return losses;
}

// One optimizer step over a batch mixing every task still training. Returns
// each task's loss (NaN for stopped tasks) and adds the examples used.
absl::StatusOr<std::vector<double>> TrainStep(
    const TransformerLM& model, std::vector<std::unique_ptr<TaskRun>>& runs,
    std::vector<ExampleOrder>& orders, const TuneOptions& o,
    torch::optim::AdamW& optimizer, int64_t step, int64_t* examples) {
  try {
    return TrainStepImpl(model, runs, orders, o, optimizer, step, examples);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("the training step ", step + 1,
                                            " failed: ", TorchErrorMessage(e)));
  }
}

std::string LossText(const std::vector<std::unique_ptr<TaskRun>>& runs,
                     const std::vector<double>& sums, int64_t count) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i]->stopped) continue;
    parts.push_back(absl::StrFormat("%s %.4f", runs[i]->context->spec.task,
                                    sums[i] / std::max<int64_t>(1, count)));
  }
  return absl::StrCat("loss ", absl::StrJoin(parts, " "));
}

void RemoveFiles(const std::vector<std::string>& paths) {
  std::error_code ignored;
  for (const std::string& p : paths) fs::remove(p, ignored);
}

// Writes every task's best module (or the last, when no validation ran).
absl::Status WriteModules(const TuneOptions& o, const TransformerLM& model,
                          const std::vector<std::unique_ptr<TaskRun>>& runs,
                          const JobState& state, TuneResult* result) {
  RETURN_IF_ERROR(MakeDirs(o.out_dir));
  std::vector<std::string> staged_files;
  for (const auto& run : runs) {
    PromptModule& m = *run->context->module;
    if (!run->best.empty()) RETURN_IF_ERROR(m.CopyFrom(run->best));
    const TaskSpec& s = run->context->spec;
    std::vector<std::string> templates;
    for (size_t t : run->templates) templates.push_back(s.templates[t].name);
    Json& info = m.info();
    info["version"] = run->options.version;
    info["base_model"] = fs::path(model.directory()).filename().string();
    info["train_data"] = {{"path", run->train.path},
                          {"hash", run->train.hash},
                          {"examples", run->train.examples.size()}};
    info["valid_data"] = {{"path", run->valid.path},
                          {"hash", run->valid.hash},
                          {"examples", run->valid_sample.size()}};
    info["train_templates"] = templates;
    info["select_metric"] = run->select_metric;
    info["best_step"] = run->best_step;
    info["steps_run"] = state.step;
    info["validation"] = run->best_metrics;
    info["curve"] = run->curve;
    info["settings"] = {{"seed", o.seed},
                        {"batch_examples", run->batch},
                        {"learning_rate", o.learning_rate},
                        {"min_learning_rate", o.min_learning_rate},
                        {"warmup_steps", o.warmup_steps},
                        {"weight_decay", o.weight_decay},
                        {"grad_clip_norm", o.grad_clip_norm},
                        {"steps", o.steps},
                        {"patience", o.patience}};
    info["command"] = o.command_line;
    // Every file is written under a temporary name first and renamed only
    // once all are, so a failure leaves no module of this job behind.
    const std::string staged =
        absl::StrCat(run->module_path, ".tmp-", getpid());
    staged_files.push_back(staged);
    absl::Status saved = m.Save(staged);
    if (!saved.ok()) {
      RemoveFiles(staged_files);
      return saved;
    }
    TunedTask t;
    t.task = s.task;
    t.version = run->options.version;
    t.method = TuningMethodName(run->method);
    t.module_path = run->module_path;
    t.parameters = m.ParameterCount();
    t.parameter_share =
        static_cast<double>(t.parameters) / model.parameter_count();
    t.best_step = run->best_step;
    t.best_metrics = run->best_metrics;
    t.curve = run->curve;
    result->tasks.push_back(std::move(t));
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    std::error_code ec;
    fs::rename(staged_files[i], runs[i]->module_path, ec);
    if (ec) {
      RemoveFiles(staged_files);
      return absl::InternalError(absl::StrCat("cannot move ", staged_files[i],
                                              " to ", runs[i]->module_path,
                                              ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTuneOptions(const TuneOptions& o) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (o.model_dir.empty()) return bad("--model is required");
  if (o.out_dir.empty()) return bad("--out is required");
  if (o.tasks.empty()) return bad("at least one --task is required");
  std::map<std::string, int> seen;
  for (const TuneTaskOptions& t : o.tasks) {
    if (t.spec_path.empty()) return bad("a --task has no spec path");
    if (t.version.empty() ||
        t.version.find_first_of("/\\ \t") != std::string::npos) {
      return bad("--version '", t.version,
                 "' must be non-empty, without slashes or spaces");
    }
    if (!(t.loss_weight > 0)) {
      return bad("task ", t.spec_path, ": loss weight must be positive");
    }
    if (t.batch_examples < 0) {
      return bad("task ", t.spec_path, ": batch must not be negative");
    }
    if (++seen[t.spec_path + "\n" + t.version] > 1) {
      return bad("task ", t.spec_path, " version ", t.version,
                 " is listed twice");
    }
  }
  RETURN_IF_ERROR(ValidateTrainingSchedule({o.steps, o.learning_rate,
                                            o.min_learning_rate, o.warmup_steps,
                                            o.weight_decay, o.grad_clip_norm}));
  if (o.batch_examples <= 0) {
    return bad("--batch must be positive, got ", o.batch_examples);
  }
  if (o.max_train_examples < 0) {
    return bad("--max-train-examples must not be negative");
  }
  if (o.eval_every <= 0) {
    return bad("--eval-every must be positive, got ", o.eval_every);
  }
  if (o.eval_examples < 0) return bad("--eval-examples must not be negative");
  if (o.patience < 0) return bad("--patience must not be negative");
  if (o.checkpoint_every <= 0) {
    return bad("--checkpoint-every must be positive, got ", o.checkpoint_every);
  }
  return absl::OkStatus();
}

absl::StatusOr<TuneResult> Tune(const TuneOptions& o) {
  RETURN_IF_ERROR(ValidateTuneOptions(o));
  LoadOptions load;
  load.device = o.device;
  ASSIGN_OR_RETURN(std::shared_ptr<const TransformerLM> model,
                   TransformerLM::Load(o.model_dir, load));
  std::vector<std::unique_ptr<TaskRun>> runs;
  for (size_t i = 0; i < o.tasks.size(); ++i) {
    ASSIGN_OR_RETURN(auto run, OpenTask(o, o.tasks[i], i, *model));
    for (const auto& other : runs) {
      if (other->module_path == run->module_path) {
        return absl::InvalidArgumentError(
            absl::StrCat("specs ", other->options.spec_path, " and ",
                         run->options.spec_path, " would both write ",
                         run->module_path, " (same task and version)"));
      }
    }
    runs.push_back(std::move(run));
  }
  std::vector<ExampleOrder> orders;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t i = 0; i < runs.size(); ++i) {
    orders.emplace_back(runs[i]->train.examples.size(), runs[i]->batch,
                        o.seed * 31 + i);
    auto opts = std::make_unique<torch::optim::AdamWOptions>(o.learning_rate);
    opts->betas({0.9, 0.999}).weight_decay(o.weight_decay).eps(1e-8);
    groups.emplace_back(runs[i]->context->module->Parameters(),
                        std::move(opts));
  }
  torch::optim::AdamW optimizer(groups);

  const std::string work = WorkDir(o);
  RETURN_IF_ERROR(ClaimWorkDir(work, RunSettings(o, *model, runs), o.force));
  ASSIGN_OR_RETURN(JobState state, LoadCheckpoint(work, runs, optimizer));
  if (state.step > 0) {
    LOG_INFO << "resuming from the checkpoint at step " << state.step << " of "
             << o.steps;
  }

  ProgressLine progress(stderr, state.step, o.steps, "ex");
  std::vector<double> loss_sums(runs.size(), 0.0);
  int64_t loss_count = 0;
  const auto start = std::chrono::steady_clock::now();
  const double seconds_before = state.seconds;
  const int64_t examples_before = state.examples_seen;
  auto all_stopped = [&runs] {
    for (const auto& r : runs) {
      if (!r->stopped) return false;
    }
    return true;
  };
  auto report = [&] {
    if (!o.on_progress) return;
    TuneProgress p;
    p.step = state.step;
    p.steps = o.steps;
    p.examples_seen = state.examples_seen;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    p.examples_per_second =
        elapsed > 0 ? (state.examples_seen - examples_before) / elapsed : 0;
    p.seconds = seconds_before + elapsed;
    for (size_t i = 0; i < runs.size(); ++i) {
      p.tasks.push_back(runs[i]->context->spec.task);
      p.losses.push_back(runs[i]->stopped || loss_count == 0
                             ? NAN
                             : loss_sums[i] / loss_count);
      p.validation.push_back(runs[i]->curve.empty() ? Json()
                                                    : runs[i]->curve.back());
    }
    o.on_progress(p);
  };
  while (state.step < o.steps && !all_stopped()) {
    if (o.cancelled && o.cancelled()) {
      progress.Finish();
      state.seconds =
          seconds_before + std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - start)
                               .count();
      state.threads = torch::get_num_threads();
      RETURN_IF_ERROR(SaveCheckpoint(work, runs, optimizer, state));
      return absl::CancelledError(absl::StrCat(
          "the job was cancelled at step ", state.step, " of ", o.steps,
          "; its checkpoint in ", work, " lets it resume"));
    }
    const double lr = WarmupCosineRate(state.step, o.steps, o.warmup_steps,
                                       o.learning_rate, o.min_learning_rate);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    int64_t examples = 0;
    absl::StatusOr<std::vector<double>> losses =
        TrainStep(*model, runs, orders, o, optimizer, state.step, &examples);
    if (!losses.ok()) {
      progress.Finish();
      return losses.status();
    }
    for (size_t i = 0; i < runs.size(); ++i) {
      if (std::isfinite((*losses)[i])) loss_sums[i] += (*losses)[i];
    }
    ++loss_count;
    ++state.step;
    state.examples_seen += examples;
    progress.Update(state.step, examples,
                    absl::StrCat(LossText(runs, loss_sums, loss_count),
                                 absl::StrFormat("  lr %.2e", lr)));
    const bool at_end = state.step == o.steps;
    report();
    if (state.step % o.eval_every == 0 || at_end) {
      progress.Finish();
      RETURN_IF_ERROR(Validate(model, runs, o, state));
      report();
      std::fill(loss_sums.begin(), loss_sums.end(), 0.0);
      loss_count = 0;
    }
    if (state.step % o.checkpoint_every == 0 || at_end || all_stopped()) {
      state.seconds =
          seconds_before + std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - start)
                               .count();
      state.threads = torch::get_num_threads();
      RETURN_IF_ERROR(SaveCheckpoint(work, runs, optimizer, state));
    }
  }
  progress.Finish();
  // A run resumed after its last step validated nothing new; make sure
  // every task has a validated module.
  bool unvalidated = false;
  for (const auto& r : runs) unvalidated |= r->best.empty();
  if (unvalidated) RETURN_IF_ERROR(Validate(model, runs, o, state));

  TuneResult result;
  result.steps = state.step;
  result.seconds = state.seconds;
  const double run_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  result.examples_per_second =
      run_seconds > 0 ? (state.examples_seen - examples_before) / run_seconds
                      : 0;
  RETURN_IF_ERROR(WriteModules(o, *model, runs, state, &result));
  return result;
}

}  // namespace optrec
