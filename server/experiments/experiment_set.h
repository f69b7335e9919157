// The experiments a server runs: their definitions and states, the layer
// buckets each reserves, and the arm serving a request. Changes (define,
// start, pause, stop, traffic) are kept in a state file when one is given,
// so a restart resumes every experiment as it was.
#ifndef OPTREC_SERVER_EXPERIMENTS_EXPERIMENT_SET_H_
#define OPTREC_SERVER_EXPERIMENTS_EXPERIMENT_SET_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/experiments/experiment.h"

namespace optrec {

// The arm serving one request.
struct ExperimentAssignment {
  std::string experiment;
  std::string arm;
  std::string version;
};

class ExperimentSet {
 public:
  struct Options {
    // JSON file holding every definition and state, rewritten atomically
    // after each change; "" = kept in memory only.
    std::string state_path;
    // Checks that a task's version can serve an arm (the server resolves it
    // in its module registry); null = every version accepted. Its error is
    // returned by Define, prefixed with the arm.
    std::function<absl::Status(const std::string& task,
                               const std::string& version)>
        check_version;
  };

  // Opens the set: the state file's definitions (when it exists), then
  // each of `configured` whose name the file does not hold, defined in
  // order as by Define (a configured definition may start in any state).
  // A name in both keeps the file's definition, which records the admin
  // changes since; a warning names the fields that differ. Errors: the
  // state file unreadable or corrupt (DataLoss naming it), or Define's
  // error for a configured definition, prefixed with
  // "experiments.definitions[i]".
  static absl::StatusOr<std::unique_ptr<ExperimentSet>> Open(
      Options options, const std::vector<ExperimentDefinition>& configured);

  // Adds an experiment. A layer_offset of -1 is placed at the lowest free
  // offset of its layer; layer_share 0 becomes traffic. Returns the
  // definition as stored. Errors: InvalidArgument (ValidateExperiment);
  // check_version's error for an arm, with its code, prefixed with
  // "arms[i].version"; AlreadyExists for a used name;
  // FailedPrecondition when the layer has no room, when an explicit slot
  // overlaps another experiment's (named), or when another experiment of
  // the task is in a different layer. Stopped experiments hold no slot.
  absl::StatusOr<ExperimentDefinition> Define(ExperimentDefinition definition);

  // Moves an experiment to `state`: draft -> running, running <-> paused,
  // anything but stopped -> stopped; the same state is a no-op (nothing
  // written, on_change not called).
  // NotFound for an unknown name; FailedPrecondition for another move
  // (a stopped experiment never runs again; define a new one).
  absl::StatusOr<ExperimentDefinition> SetState(const std::string& name,
                                                ExperimentState state);

  // Changes the enrolled share to `traffic` in (0, layer_share]. Growing
  // keeps every enrolled unit in its arm; shrinking drops the units of the
  // released buckets. InvalidArgument for a share out of range; NotFound;
  // FailedPrecondition for a stopped experiment.
  absl::StatusOr<ExperimentDefinition> SetTraffic(const std::string& name,
                                                  double traffic);

  // The arm serving a request of `task` for (unit_type, unit_id), when a
  // running experiment of the task enrolls the unit; nullopt otherwise
  // (also for an empty unit id).
  std::optional<ExperimentAssignment> Assign(const std::string& task,
                                             const std::string& unit_type,
                                             const std::string& unit_id) const;

  // Every experiment, by name.
  std::vector<ExperimentDefinition> List() const;
  // NotFound naming the experiment.
  absl::StatusOr<ExperimentDefinition> Get(const std::string& name) const;

  // Called with the new definition after every change, outside the lock,
  // in the order of the changes (changes are serialised). Set before the
  // set is shared.
  void set_on_change(std::function<void(const ExperimentDefinition&)> fn) {
    on_change_ = std::move(fn);
  }

 private:
  explicit ExperimentSet(Options options) : options_(std::move(options)) {}

  // `definition` checked against the others and placed (layer_share and
  // layer_offset filled in), not added. Stopped definitions hold no slot.
  absl::StatusOr<ExperimentDefinition> PlaceLocked(
      ExperimentDefinition definition, bool check_versions) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The state file's contents: every definition, with `with` added or
  // replacing the one of its name (null: none).
  nlohmann::json SnapshotLocked(const ExperimentDefinition* with) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Writes `snapshot` to the state file (when there is one).
  absl::Status Persist(const nlohmann::json& snapshot) const;
  // Persists `snapshot` (SnapshotLocked(&definition)), then makes
  // `definition` visible and calls on_change_; nothing changes when the
  // file cannot be written. Written outside mu_, so requests keep being
  // assigned while the file is synced.
  absl::Status Publish(const nlohmann::json& snapshot,
                       const ExperimentDefinition& definition)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(change_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // Applies `change` to a copy of the named experiment and keeps it when
  // valid and persisted.
  absl::StatusOr<ExperimentDefinition> Change(
      const std::string& name,
      const std::function<absl::Status(ExperimentDefinition*)>& change);

  const Options options_;
  std::function<void(const ExperimentDefinition&)> on_change_;
  // Serialises changes (so that on_change_ sees them in order and the
  // state file is written by one change at a time); held while the file is
  // written, which mu_ is not.
  absl::Mutex change_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;  // guards experiments_
  std::map<std::string, ExperimentDefinition> experiments_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optrec

#endif  // OPTREC_SERVER_EXPERIMENTS_EXPERIMENT_SET_H_
