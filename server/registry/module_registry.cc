#include "server/registry/module_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

std::string VersionNames(const std::map<std::string, ModuleVersion>& v) {
  std::vector<std::string> names;
  for (const auto& [name, entry] : v) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

}  // namespace

ModuleRegistry::ModuleRegistry(std::shared_ptr<const TransformerLM> model)
    : model_(std::move(model)) {}

absl::StatusOr<ModuleVersion> ModuleRegistry::Load(const std::string& path,
                                                   const std::string& version) {
  // The file is read and checked outside the lock: requests keep flowing.
  ASSIGN_OR_RETURN(std::shared_ptr<PromptModule> module,
                   PromptModule::Load(path, *model_));
  ModuleVersion entry;
  entry.task = module->spec().task;
  entry.path = path;
  entry.version = version;
  if (entry.version.empty()) {
    const nlohmann::json& info = module->info();
    if (!info.contains("version") || !info["version"].is_string() ||
        info["version"].get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": the module records no version; name one to load it"));
    }
    entry.version = info["version"].get<std::string>();
  }
  entry.module = std::move(module);

  absl::MutexLock lock(&mu_);
  auto [it, fresh] = tasks_.try_emplace(entry.task);
  Task& task = it->second;
  if (fresh) {
    task.kind = entry.module->spec().kind;
  } else if (task.kind != entry.module->spec().kind) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": task ", entry.task, " serves ", TaskKindName(task.kind),
        " modules; this one is ", TaskKindName(entry.module->spec().kind)));
  }
  if (task.versions.count(entry.version) != 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "task ", entry.task, " already has version ", entry.version,
        " (versions are immutable; load it under another name)"));
  }
  task.versions.emplace(entry.version, entry);
  if (task.default_version.empty()) task.default_version = entry.version;
  LOG_INFO << "loaded module " << entry.task << " version " << entry.version
           << " from " << path
           << (task.default_version == entry.version ? " (default)" : "");
  return entry;
}

absl::Status ModuleRegistry::SetDefault(const std::string& task,
                                        const std::string& version) {
  absl::MutexLock lock(&mu_);
  auto it = tasks_.find(task);
  if (it == tasks_.end()) {
    return absl::NotFoundError(absl::StrCat("no task ", task));
  }
  if (it->second.versions.count(version) == 0) {
    return absl::NotFoundError(
        absl::StrCat("task ", task, " has no version ", version, " (it has ",
                     VersionNames(it->second.versions), ")"));
  }
  it->second.default_version = version;
  LOG_INFO << "task " << task << ": version " << version << " is the default";
  return absl::OkStatus();
}

absl::Status ModuleRegistry::Unload(const std::string& task,
                                    const std::string& version) {
  absl::MutexLock lock(&mu_);
  auto it = tasks_.find(task);
  if (it == tasks_.end()) {
    return absl::NotFoundError(absl::StrCat("no task ", task));
  }
  Task& t = it->second;
  if (t.versions.count(version) == 0) {
    return absl::NotFoundError(absl::StrCat("task ", task, " has no version ",
                                            version, " (it has ",
                                            VersionNames(t.versions), ")"));
  }
  if (t.default_version == version && t.versions.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ", version, " is task ", task,
                     "'s default; make another version the default first"));
  }
  t.versions.erase(version);
  if (t.versions.empty()) tasks_.erase(it);
  LOG_INFO << "unloaded module " << task << " version " << version;
  return absl::OkStatus();
}

absl::StatusOr<ModuleVersion> ModuleRegistry::Resolve(
    const std::string& task, const std::string& version) const {
  absl::MutexLock lock(&mu_);
  auto it = tasks_.find(task);
  if (it == tasks_.end()) {
    return absl::NotFoundError(absl::StrCat("no task ", task));
  }
  const std::string& wanted =
      version.empty() ? it->second.default_version : version;
  auto v = it->second.versions.find(wanted);
  if (v == it->second.versions.end()) {
    return absl::NotFoundError(
        absl::StrCat("task ", task, " has no version ", wanted, " (it has ",
                     VersionNames(it->second.versions), ")"));
  }
  return v->second;
}

std::vector<TaskListing> ModuleRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<TaskListing> out;
  for (const auto& [name, task] : tasks_) {
    TaskListing listing;
    listing.task = name;
    listing.kind = task.kind;
    listing.default_version = task.default_version;
    for (const auto& [version, entry] : task.versions) {
      nlohmann::json meta = entry.module->info();
      meta["method"] = TuningMethodName(entry.module->method());
      meta["parameters"] = entry.module->ParameterCount();
      meta["path"] = entry.path;
      listing.versions.emplace_back(version, std::move(meta));
    }
    out.push_back(std::move(listing));
  }
  return out;
}

}  // namespace optrec
