// The prompt modules a server holds: every task's immutable versions and
// which one is the task's default. Requests resolve (task, version) to a
// shared, immutable module; the admin side loads, promotes and unloads
// versions while requests flow. A resolved module stays valid for as long
// as the caller holds it, whatever the admin side does meanwhile, so a hot
// swap never fails a request in flight.
#ifndef OPTREC_SERVER_REGISTRY_MODULE_REGISTRY_H_
#define OPTREC_SERVER_REGISTRY_MODULE_REGISTRY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/model/transformer.h"
#include "tuning/module/prompt_module.h"

namespace optrec {

// One loaded version of a task's module.
struct ModuleVersion {
  std::string task;
  std::string version;
  std::string path;  // the file it was loaded from
  std::shared_ptr<const PromptModule> module;
};

// What List reports of one task.
struct TaskListing {
  std::string task;
  TaskKind kind = TaskKind::kScore;
  std::string default_version;  // "" when none is default
  // Each version and its module metadata (PromptModule::info plus method
  // and parameter counts), in version order.
  std::vector<std::pair<std::string, nlohmann::json>> versions;
};

// Thread-safe: every method may be called from any thread.
class ModuleRegistry {
 public:
  // Modules are checked against `model` (its fingerprint and shapes).
  explicit ModuleRegistry(std::shared_ptr<const TransformerLM> model);

  // Loads the module file at `path` as `version` of its task (the task
  // name comes from the file), checked completely before it becomes
  // visible; the first version of a task becomes its default. Versions are
  // immutable: AlreadyExists when the task has `version` already.
  // `version` empty = the version recorded in the file's metadata.
  // PromptModule::Load's errors (FailedPrecondition for another base
  // model, InvalidArgument / DataLoss for bad files) leave the registry as
  // it was.
  absl::StatusOr<ModuleVersion> Load(const std::string& path,
                                     const std::string& version = "");

  // Makes `version` the task's default. NotFound naming the task or the
  // version (and listing the versions it has).
  absl::Status SetDefault(const std::string& task, const std::string& version);

  // Removes a version. FailedPrecondition when it is the default while
  // other versions exist (promote another first); removing the last
  // version removes the task. Requests already holding it finish with it.
  absl::Status Unload(const std::string& task, const std::string& version);

  // The module serving `task` at `version` (empty = the default).
  // NotFound naming the task or version.
  absl::StatusOr<ModuleVersion> Resolve(const std::string& task,
                                        const std::string& version = "") const;

  // Every task, by name.
  std::vector<TaskListing> List() const;

  const TransformerLM& model() const { return *model_; }

 private:
  struct Task {
    TaskKind kind = TaskKind::kScore;
    std::string default_version;
    std::map<std::string, ModuleVersion> versions;
  };

  const std::shared_ptr<const TransformerLM> model_;
  mutable absl::Mutex mu_;  // guards tasks_
  std::map<std::string, Task> tasks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optrec

#endif  // OPTREC_SERVER_REGISTRY_MODULE_REGISTRY_H_
