// The tuning job (`optrec tune`): trains the prompt modules of one or more
// tasks over one frozen backbone. Each step's batch mixes examples of every
// task still training, each row with its own task's module, in one forward
// pass; each task's loss comes from its own rows, and each task's gradient
// is clipped on its own, so a task trains the same way alone or in a mix.
// Validation runs every few steps; each task keeps its best module and
// stops early when it has not improved for `patience` validations.
// Checkpoints survive a kill: the same command resumes from the last one and
// ends with the same modules, bit for bit, given the same thread count.
#ifndef OPTREC_TUNING_TUNE_TUNER_H_
#define OPTREC_TUNING_TUNE_TUNER_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/runtime/device.h"

namespace optrec {

// One task of a job.
struct TuneTaskOptions {
  std::string spec_path;  // task spec JSON (tuning/tasks/task_spec.h)
  std::string method;     // "" = the spec's method
  std::string version = "v1";
  double loss_weight = 1.0;  // weight of this task's loss in the sum
  // Examples of this task in every step; 0 = the job's batch_examples.
  int64_t batch_examples = 0;
};

struct TuneOptions {
  std::string model_dir;  // the frozen backbone
  DeviceChoice device;
  // Relative data and catalog paths of the specs are resolved here (the
  // world's directory).
  std::string data_root;
  std::vector<TuneTaskOptions> tasks;
  // Modules are written to out_dir/<task>.<version>.safetensors. Existing
  // module files are refused (versions are immutable) unless `force`.
  std::string out_dir;
  // Checkpoints and run settings; "" = out_dir/.tune-work/<tasks>. A run
  // finding a checkpoint here with the same settings continues from it.
  std::string work_dir;
  bool force = false;

  uint64_t seed = 1;                // initial modules, data order, templates
  int64_t steps = 300;              // optimizer steps at most
  int64_t batch_examples = 16;      // examples of each task in every step
  double learning_rate = 1e-2;      // peak AdamW rate
  double min_learning_rate = 1e-3;  // end of the cosine decay
  int64_t warmup_steps = 20;
  double weight_decay = 0.0;
  double grad_clip_norm = 1.0;  // per task, global L2 norm; 0 = none
  // Training examples used per task: the first N of the file; 0 = all.
  int64_t max_train_examples = 0;
  int64_t eval_every = 50;      // steps between validations; also at the end
  int64_t eval_examples = 500;  // validation examples per task (a fixed
                                // sample of valid.jsonl); 0 = all
  // Validations without improvement after which a task stops; 0 = never.
  int64_t patience = 0;
  int64_t checkpoint_every = 50;  // and always at the end
  // Recorded in module metadata.
  std::string command_line;

  // Hooks for a job runner (both may be empty). `cancelled` is polled
  // before every step: true stops the job with CANCELLED after writing a
  // checkpoint, so it can resume later. `on_progress` is called after every
  // step and every validation, from the job's thread.
  std::function<bool()> cancelled;
  std::function<void(const struct TuneProgress&)> on_progress;
};

// A running job's state, for progress reports.
struct TuneProgress {
  int64_t step = 0;
  int64_t steps = 0;
  int64_t examples_seen = 0;
  double examples_per_second = 0;  // in this run
  double seconds = 0;              // training time over all runs
  // Per task: its mean loss since the last validation (NaN when it
  // stopped) and its latest validation metrics (null before the first).
  std::vector<std::string> tasks;
  std::vector<double> losses;
  std::vector<nlohmann::json> validation;
};

// What one task's training produced.
struct TunedTask {
  std::string task, version, method, module_path;
  int64_t parameters = 0;
  double parameter_share = 0;   // of the backbone
  int64_t best_step = 0;        // the step of the module written
  nlohmann::json best_metrics;  // its validation metrics
  // Every validation: {"step": s, "examples_seen": n, <metrics>...}.
  nlohmann::json curve = nlohmann::json::array();
};

struct TuneResult {
  std::vector<TunedTask> tasks;
  int64_t steps = 0;   // steps run (fewer than asked when all stopped)
  double seconds = 0;  // training time over all resumed runs
  double examples_per_second = 0;
};

// InvalidArgument naming the option for settings that cannot run.
absl::Status ValidateTuneOptions(const TuneOptions& options);

// Runs (or resumes) the job and writes one module file per task. Prints a
// progress line to stderr; blocks for the whole run.
//
// Errors: InvalidArgument for bad options, specs or data (naming file,
// line and field); FailedPrecondition when a module file exists (without
// force), the work directory holds another run, or the loss becomes NaN or
// infinite (the message names the task and step; the last checkpoint before
// it is kept); PermissionDenied / Internal naming the path for I/O
// failures. No module file is written unless the whole job succeeded.
absl::StatusOr<TuneResult> Tune(const TuneOptions& options);

}  // namespace optrec

#endif  // OPTREC_TUNING_TUNE_TUNER_H_
