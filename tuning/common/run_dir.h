// The work directory of a training job: the settings that decide its
// result, and numbered checkpoints behind an atomically replaced "latest"
// pointer, so that a job killed at any moment resumes from its last complete
// checkpoint and ends where an uninterrupted run would.
//
// Layout of a work directory:
//   run.json            the settings (a JSON object) of the run it holds
//   checkpoint-<step>/  the newest complete checkpoint (older ones removed)
//   latest              "checkpoint-<step>\n", replaced after the folder is
//                       complete
// Jobs may keep other files of their own beside these.
#ifndef OPTREC_TUNING_COMMON_RUN_DIR_H_
#define OPTREC_TUNING_COMMON_RUN_DIR_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/util/files.h"

namespace optrec {

// The first top-level key of `a` whose value differs in `b`, as
// "key: <a's value> there, <b's value> now", for error messages.
std::string FirstDifference(const nlohmann::json& a, const nlohmann::json& b);

// Makes `work` hold the run described by `settings`: a work directory with
// the same run.json is kept as it is (its checkpoints resume); an empty or
// missing one is created and given run.json. A work directory of another run
// is FailedPrecondition naming the first differing setting, unless `force`,
// which clears it first. Errors name the path.
absl::Status ClaimWorkDir(const std::string& work,
                          const nlohmann::json& settings, bool force);

// Checkpoint folders of one work directory. Not thread-safe: one job owns
// its work directory.
class CheckpointDir {
 public:
  explicit CheckpointDir(std::string work) : work_(std::move(work)) {}

  // A staging folder for the checkpoint of `step`: write its files into
  // path(), then Publish it. Errors as StagedDirectory::Create.
  absl::StatusOr<StagedDirectory> Begin(int64_t step) const;

  // Moves the staged checkpoint into place, points "latest" at it and
  // removes older checkpoints. On failure the previous checkpoint stays
  // current. Errors name the path.
  absl::Status Publish(StagedDirectory staged, int64_t step) const;

  // The folder of the newest complete checkpoint, or "" when there is none
  // yet. DataLoss when "latest" is corrupt; Internal when the directory
  // cannot be read.
  absl::StatusOr<std::string> Latest() const;

  const std::string& work() const { return work_; }

 private:
  std::string work_;
};

// The learning rate of 0-based `step` of `steps`: linear warm-up over
// `warmup_steps` from peak / warmup_steps to `peak`, then a cosine from
// `peak` that would reach `floor` at step `steps`, one past the last step
// run (Loshchilov & Hutter 2017, without restarts).
double WarmupCosineRate(int64_t step, int64_t steps, int64_t warmup_steps,
                        double peak, double floor);

// The optimizer settings every training job shares, as their command-line
// flags name them.
struct TrainingSchedule {
  int64_t steps = 0;             // --steps: positive
  double learning_rate = 0;      // --lr: positive
  double min_learning_rate = 0;  // --min-lr: in [0, lr]
  int64_t warmup_steps = 0;      // --warmup: in [0, steps)
  double weight_decay = 0;       // --weight-decay: not negative
  double grad_clip_norm = 0;     // --clip: not negative (0 = off)
};

// InvalidArgument naming the flag and its value for settings that cannot
// run.
absl::Status ValidateTrainingSchedule(const TrainingSchedule& s);

}  // namespace optrec

#endif  // OPTREC_TUNING_COMMON_RUN_DIR_H_
