#include "server/experiments/experiment_set.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/files.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

// Whether two slots overlap.
bool Overlap(LayerSlot a, LayerSlot b) {
  return a.begin < b.end && b.begin < a.end;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExperimentSet>> ExperimentSet::Open(
    Options options, const std::vector<ExperimentDefinition>& configured) {
  std::unique_ptr<ExperimentSet> set(new ExperimentSet(std::move(options)));
  absl::MutexLock changes(&set->change_mu_);
  absl::MutexLock lock(&set->mu_);
  const std::string& path = set->options_.state_path;
  std::error_code error;  // a path that cannot be checked counts as absent
  if (!path.empty() && std::filesystem::exists(path, error)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    const Json j = Json::parse(text, nullptr, false);
    if (!j.is_object() || !j.contains("experiments") ||
        !j["experiments"].is_array()) {
      return absl::DataLossError(
          absl::StrCat(path, ": not an experiment state file"));
    }
    for (size_t i = 0; i < j["experiments"].size(); ++i) {
      const std::string where = absl::StrCat(path, ": experiments[", i, "]");
      absl::StatusOr<ExperimentDefinition> d =
          ExperimentFromJson(j["experiments"][i], where);
      absl::Status valid = d.ok() ? ValidateExperiment(*d) : absl::OkStatus();
      if (!d.ok() || !valid.ok() || d->layer_offset < 0) {
        return absl::DataLossError(absl::StrCat(where, " is corrupt: ",
                                                !d.ok() ? d.status().message()
                                                : !valid.ok()
                                                    ? valid.message()
                                                    : "no layer_offset"));
      }
      // Checked as a definition would be, versions aside: two experiments
      // of one name, sharing buckets or splitting a task over layers
      // would assign units ambiguously.
      absl::StatusOr<ExperimentDefinition> placed =
          set->PlaceLocked(*d, /*check_versions=*/false);
      if (!placed.ok()) {
        return absl::DataLossError(
            absl::StrCat(where, " conflicts: ", placed.status().message()));
      }
      set->experiments_[d->name] = *placed;
    }
  }
  for (size_t i = 0; i < configured.size(); ++i) {
    auto held = set->experiments_.find(configured[i].name);
    if (held != set->experiments_.end()) {
      // The configured definition as it would have been stored.
      ExperimentDefinition placed = configured[i];
      if (placed.layer_offset < 0) {
        placed.layer_offset = held->second.layer_offset;
      }
      if (placed.layer_share == 0) placed.layer_share = placed.traffic;
      const Json file = ExperimentToJson(held->second);
      const Json config = ExperimentToJson(placed);
      std::vector<std::string> differ;
      for (auto it = config.begin(); it != config.end(); ++it) {
        if (file[it.key()] != it.value()) differ.push_back(it.key());
      }
      if (!differ.empty()) {
        LOG_WARNING << "experiment " << placed.name
                    << ": the state file's definition (with its admin "
                       "changes) is kept over the config's, which differs in "
                    << absl::StrJoin(differ, ", ");
      }
      continue;
    }
    absl::StatusOr<ExperimentDefinition> d =
        set->PlaceLocked(configured[i], /*check_versions=*/true);
    if (!d.ok()) {
      return absl::Status(d.status().code(),
                          absl::StrCat("experiments.definitions[", i,
                                       "]: ", d.status().message()));
    }
    set->experiments_[d->name] = *d;
  }
  RETURN_IF_ERROR(set->Persist(set->SnapshotLocked(nullptr)));
  return set;
}

absl::StatusOr<ExperimentDefinition> ExperimentSet::PlaceLocked(
    ExperimentDefinition d, bool check_versions) const {
  RETURN_IF_ERROR(ValidateExperiment(d));
  if (experiments_.count(d.name) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("name: experiment '", d.name, "' exists already"));
  }
  if (check_versions && options_.check_version) {
    for (size_t i = 0; i < d.arms.size(); ++i) {
      absl::Status ok = options_.check_version(d.task, d.arms[i].version);
      if (!ok.ok()) {
        return absl::Status(
            ok.code(), absl::StrCat("arms[", i, "].version: ", ok.message()));
      }
    }
  }
  if (d.layer_share == 0) d.layer_share = d.traffic;
  if (d.state == ExperimentState::kStopped) {
    // A stopped experiment holds no slot and assigns nobody.
    if (d.layer_offset < 0) d.layer_offset = 0;
    return d;
  }
  // The slots held in the layer, and the task's other layer if any.
  std::vector<std::pair<LayerSlot, std::string>> held;
  for (const auto& [name, other] : experiments_) {
    if (other.state == ExperimentState::kStopped) continue;
    if (other.task == d.task && other.layer != d.layer) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer: experiment '", name, "' of task ", d.task, " is in layer '",
          other.layer, "'; experiments of one task share a layer"));
    }
    if (other.layer == d.layer) held.push_back({SlotOf(other), name});
  }
  std::sort(held.begin(), held.end(), [](const auto& a, const auto& b) {
    return a.first.begin < b.first.begin;
  });
  if (d.layer_offset < 0) {
    // The lowest offset whose slot fits before the next held slot.
    d.layer_offset = 0;
    for (const auto& [slot, name] : held) {
      if (!Overlap(SlotOf(d), slot)) continue;
      d.layer_offset = slot.end;
    }
    if (SlotOf(d).end > kExperimentBuckets) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer_share: layer '", d.layer, "' has no free range of ",
          d.layer_share, " (held by: ",
          absl::StrJoin(held, ", ",
                        [](std::string* out, const auto& h) {
                          absl::StrAppend(out, h.second, " [", h.first.begin,
                                          ", ", h.first.end, ")");
                        }),
          ")"));
    }
  }
  for (const auto& [slot, name] : held) {
    if (Overlap(SlotOf(d), slot)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer_offset: buckets [", SlotOf(d).begin, ", ", SlotOf(d).end,
          ") of layer '", d.layer, "' overlap experiment '", name, "' [",
          slot.begin, ", ", slot.end, ")"));
    }
  }
  return d;
}

absl::StatusOr<ExperimentDefinition> ExperimentSet::Define(
    ExperimentDefinition definition) {
  absl::MutexLock changes(&change_mu_);
  ExperimentDefinition placed;
  Json snapshot;
  {
    absl::ReaderMutexLock lock(&mu_);
    ASSIGN_OR_RETURN(
        placed, PlaceLocked(std::move(definition), /*check_versions=*/true));
    snapshot = SnapshotLocked(&placed);
  }
  RETURN_IF_ERROR(Publish(snapshot, placed));
  LOG_INFO << "experiment " << placed.name << " defined ("
           << ExperimentStateName(placed.state) << ")";
  return placed;
}

absl::StatusOr<ExperimentDefinition> ExperimentSet::Change(
    const std::string& name,
    const std::function<absl::Status(ExperimentDefinition*)>& change) {
  absl::MutexLock changes(&change_mu_);
  ExperimentDefinition updated;
  Json snapshot;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = experiments_.find(name);
    if (it == experiments_.end()) {
      return absl::NotFoundError(
          absl::StrCat("experiment: '", name, "' is not defined"));
    }
    updated = it->second;
    RETURN_IF_ERROR(change(&updated));
    RETURN_IF_ERROR(ValidateExperiment(updated));
    if (ExperimentToJson(updated) == ExperimentToJson(it->second)) {
      return updated;  // nothing to keep or tell
    }
    snapshot = SnapshotLocked(&updated);
  }
  RETURN_IF_ERROR(Publish(snapshot, updated));
  return updated;
}

absl::Status ExperimentSet::Publish(const Json& snapshot,
                                    const ExperimentDefinition& definition) {
  RETURN_IF_ERROR(Persist(snapshot));
  {
    absl::MutexLock lock(&mu_);
    experiments_[definition.name] = definition;
  }
  if (on_change_) on_change_(definition);
  return absl::OkStatus();
}

absl::StatusOr<ExperimentDefinition> ExperimentSet::SetState(
    const std::string& name, ExperimentState state) {
  absl::StatusOr<ExperimentDefinition> d =
      Change(name, [&](ExperimentDefinition* d) -> absl::Status {
        using S = ExperimentState;
        const S from = d->state;
        const bool allowed = from == state ||
                             (state == S::kRunning &&
                              (from == S::kDraft || from == S::kPaused)) ||
                             (state == S::kPaused && from == S::kRunning) ||
                             (state == S::kStopped);
        if (!allowed || (from == S::kStopped && state != S::kStopped)) {
          return absl::FailedPreconditionError(absl::StrCat(
              "state: experiment '", name, "' is ", ExperimentStateName(from),
              " and cannot become ", ExperimentStateName(state),
              from == S::kStopped ? " (stopped is final)" : ""));
        }
        d->state = state;
        return absl::OkStatus();
      });
  if (d.ok()) {
    LOG_INFO << "experiment " << name << " is "
             << ExperimentStateName(d->state);
  }
  return d;
}

absl::StatusOr<ExperimentDefinition> ExperimentSet::SetTraffic(
    const std::string& name, double traffic) {
  return Change(name, [&](ExperimentDefinition* d) -> absl::Status {
    if (d->state == ExperimentState::kStopped) {
      return absl::FailedPreconditionError(
          absl::StrCat("experiment '", name, "' is stopped"));
    }
    if (!(traffic > 0 && traffic <= d->layer_share)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "traffic: ", traffic, " is outside (0, layer_share ", d->layer_share,
          "]; a larger share needs a new experiment"));
    }
    d->traffic = traffic;
    return absl::OkStatus();
  });
}

std::optional<ExperimentAssignment> ExperimentSet::Assign(
    const std::string& task, const std::string& unit_type,
    const std::string& unit_id) const {
  if (unit_id.empty()) return std::nullopt;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, d] : experiments_) {
    if (d.state != ExperimentState::kRunning || d.task != task) continue;
    if (!Enrolled(d, unit_type, unit_id)) continue;
    const ExperimentArm& arm = d.arms[ArmOf(d, unit_id)];
    return ExperimentAssignment{d.name, arm.name, arm.version};
  }
  return std::nullopt;
}

std::vector<ExperimentDefinition> ExperimentSet::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<ExperimentDefinition> out;
  for (const auto& [name, d] : experiments_) out.push_back(d);
  return out;
}

absl::StatusOr<ExperimentDefinition> ExperimentSet::Get(
    const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = experiments_.find(name);
  if (it == experiments_.end()) {
    return absl::NotFoundError(
        absl::StrCat("experiment: '", name, "' is not defined"));
  }
  return it->second;
}

Json ExperimentSet::SnapshotLocked(const ExperimentDefinition* with) const {
  std::map<std::string, const ExperimentDefinition*> all;
  for (const auto& [name, d] : experiments_) all[name] = &d;
  if (with != nullptr) all[with->name] = with;
  Json list = Json::array();
  for (const auto& [name, d] : all) list.push_back(ExperimentToJson(*d));
  return {{"experiments", std::move(list)}};
}

absl::Status ExperimentSet::Persist(const Json& snapshot) const {
  if (options_.state_path.empty()) return absl::OkStatus();
  absl::Status written =
      WriteFileAtomic(options_.state_path, snapshot.dump(2) + "\n");
  if (!written.ok()) {
    return absl::Status(written.code(),
                        absl::StrCat("experiment state not saved (nothing "
                                     "changed): ",
                                     written.message()));
  }
  return absl::OkStatus();
}

}  // namespace optrec
