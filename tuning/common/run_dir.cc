#include "tuning/common/run_dir.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;

constexpr char kRunFile[] = "run.json";
constexpr char kLatestFile[] = "latest";
constexpr char kCheckpointPrefix[] = "checkpoint-";

}  // namespace

std::string FirstDifference(const nlohmann::json& a, const nlohmann::json& b) {
  if (!a.is_object() || !b.is_object()) return "settings differ";
  for (auto it = a.begin(); it != a.end(); ++it) {
    if (!b.contains(it.key()) || b[it.key()] != it.value()) {
      return absl::StrCat(it.key(), ": ", it.value().dump(), " there, ",
                          b.contains(it.key()) ? b[it.key()].dump() : "none",
                          " now");
    }
  }
  return "settings differ";
}

absl::Status ClaimWorkDir(const std::string& work,
                          const nlohmann::json& settings, bool force) {
  const std::string run_file = absl::StrCat(work, "/", kRunFile);
  std::error_code ec;
  if (fs::exists(run_file, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(run_file));
    nlohmann::json previous = nlohmann::json::parse(text, nullptr, false);
    if (previous == settings) return absl::OkStatus();
    if (!force) {
      return absl::FailedPreconditionError(absl::StrCat(
          "work directory ", work, " holds a run with other settings (",
          previous.is_discarded() ? "unreadable run.json"
                                  : FirstDifference(previous, settings),
          "); remove it or pass --force to start over"));
    }
    fs::remove_all(work, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat(
          "cannot clear the work directory ", work, ": ", ec.message()));
    }
  }
  RETURN_IF_ERROR(MakeDirs(work));
  return WriteFileAtomic(run_file, settings.dump(2) + "\n");
}

absl::StatusOr<StagedDirectory> CheckpointDir::Begin(int64_t step) const {
  return StagedDirectory::Create(
      absl::StrCat(work_, "/", kCheckpointPrefix, step), /*replace=*/true);
}

absl::Status CheckpointDir::Publish(StagedDirectory staged,
                                    int64_t step) const {
  const std::string name = absl::StrCat(kCheckpointPrefix, step);
  RETURN_IF_ERROR(staged.Commit());
  RETURN_IF_ERROR(
      WriteFileAtomic(absl::StrCat(work_, "/", kLatestFile), name + "\n"));
  // Older checkpoints are no longer needed.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(work_, ec)) {
    const std::string other = entry.path().filename().string();
    if (other != name && other.rfind(kCheckpointPrefix, 0) == 0) {
      fs::remove_all(entry.path(), ec);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> CheckpointDir::Latest() const {
  const std::string latest = absl::StrCat(work_, "/", kLatestFile);
  std::error_code ec;
  if (!fs::exists(latest, ec)) {
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot read ", work_, ": ", ec.message()));
    }
    return std::string();
  }
  ASSIGN_OR_RETURN(std::string name, ReadFile(latest));
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) {
    name.pop_back();
  }
  if (name.rfind(kCheckpointPrefix, 0) != 0 ||
      name.find('/') != std::string::npos) {
    return absl::DataLossError(absl::StrCat(latest, " is corrupt"));
  }
  return absl::StrCat(work_, "/", name);
}

double WarmupCosineRate(int64_t step, int64_t steps, int64_t warmup_steps,
                        double peak, double floor) {
  if (step < warmup_steps) {
    return peak * static_cast<double>(step + 1) / warmup_steps;
  }
  const double span = std::max<int64_t>(1, steps - warmup_steps);
  const double progress = std::min(1.0, (step - warmup_steps) / span);
  return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * progress));
}

absl::Status ValidateTrainingSchedule(const TrainingSchedule& s) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (s.steps <= 0) return bad("--steps must be positive, got ", s.steps);
  if (!(s.learning_rate > 0)) {
    return bad("--lr must be positive, got ", s.learning_rate);
  }
  if (!(s.min_learning_rate >= 0) || s.min_learning_rate > s.learning_rate) {
    return bad("--min-lr ", s.min_learning_rate, " must lie in [0, lr ",
               s.learning_rate, "]");
  }
  if (s.warmup_steps < 0 || s.warmup_steps >= s.steps) {
    return bad("--warmup ", s.warmup_steps, " must lie in [0, steps ", s.steps,
               ")");
  }
  if (!(s.weight_decay >= 0)) {
    return bad("--weight-decay must not be negative, got ", s.weight_decay);
  }
  if (!(s.grad_clip_norm >= 0)) {
    return bad("--clip must not be negative, got ", s.grad_clip_norm);
  }
  return absl::OkStatus();
}

}  // namespace optrec
