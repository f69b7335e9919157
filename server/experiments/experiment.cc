#include "server/experiments/experiment.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/json_fields.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

constexpr const char* kStateNames[] = {"draft", "running", "paused", "stopped"};

absl::Status CheckName(const std::string& field, const std::string& value) {
  bool ok = !value.empty() && value.size() <= 64;
  for (char c : value) {
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                         c == '-';
    ok = ok && allowed;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": '", value,
                   "' must be 1 to 64 of the characters A-Z a-z 0-9 _ . -"));
}

// InvalidArgument naming `field` when `value` is not valid UTF-8 (the
// definition is kept as JSON, which holds UTF-8 only).
absl::Status CheckText(const std::string& field, const std::string& value) {
  try {
    (void)Json(value).dump();
  } catch (const Json::type_error&) {
    return absl::InvalidArgumentError(field + ": is not valid UTF-8");
  }
  return absl::OkStatus();
}

uint64_t Hash(const std::string& bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

// Buckets of [0, total) up to the share `share` (in [0, 1]), rounded to the
// nearest bucket.
int64_t Buckets(double share) {
  return static_cast<int64_t>(std::llround(share * kExperimentBuckets));
}

// The layer buckets a definition reserves, as a share: layer_share, or
// traffic when layer_share is 0.
double ReservedShare(const ExperimentDefinition& d) {
  return d.layer_share == 0 ? d.traffic : d.layer_share;
}

// Where each arm's slice of the arm split ends: arm i holds
// [ends[i-1], ends[i]) with ends[i] = round(W_i / W * 10000), W_i the
// weights summed through arm i, and the last ends at 10000. Weights must
// be positive with a finite sum.
std::vector<int64_t> ArmBucketEnds(const ExperimentDefinition& d) {
  double total = 0;
  for (const ExperimentArm& arm : d.arms) total += arm.weight;
  std::vector<int64_t> ends;
  double cumulative = 0;
  for (size_t i = 0; i < d.arms.size(); ++i) {
    cumulative += d.arms[i].weight;
    ends.push_back(i + 1 == d.arms.size() ? kExperimentBuckets
                                          : Buckets(cumulative / total));
  }
  return ends;
}

template <typename T>
absl::Status Get(const Json& j, const char* key, const std::string& where,
                 T* out) {
  return ReadJsonField(j, key, where, "", out);
}

absl::Status OnlyKnown(const Json& j, const std::string& where,
                       const std::set<std::string>& known) {
  return CheckKnownFields(j, where, "", known);
}

}  // namespace

const char* ExperimentStateName(ExperimentState state) {
  return kStateNames[static_cast<int>(state)];
}

absl::StatusOr<ExperimentState> ParseExperimentState(const std::string& name) {
  for (int i = 0; i < 4; ++i) {
    if (name == kStateNames[i]) return static_cast<ExperimentState>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "state: '", name, "' is not one of draft, running, paused, stopped"));
}

absl::Status ValidateExperiment(const ExperimentDefinition& d) {
  RETURN_IF_ERROR(CheckName("name", d.name));
  if (d.task.empty()) return absl::InvalidArgumentError("task: required");
  RETURN_IF_ERROR(CheckText("task", d.task));
  RETURN_IF_ERROR(CheckText("salt", d.salt));
  RETURN_IF_ERROR(CheckName("unit_type", d.unit_type));
  RETURN_IF_ERROR(CheckName("layer", d.layer));
  const double share = ReservedShare(d);
  if (!(d.traffic > 0 && d.traffic <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("traffic: ", d.traffic, " is outside (0, 1]"));
  }
  if (!(share >= d.traffic && share <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer_share: ", d.layer_share, " is outside [traffic (",
                     d.traffic, "), 1]"));
  }
  if (Buckets(d.traffic) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "traffic: ", d.traffic, " enrolls no bucket (the smallest is 1e-4)"));
  }
  if (d.layer_offset < -1 || d.layer_offset >= kExperimentBuckets) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_offset: ", d.layer_offset, " is outside [0, 10000) (or -1)"));
  }
  if (d.layer_offset >= 0 && SlotOf(d).end > kExperimentBuckets) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer_offset: ", d.layer_offset, " + layer_share ", share,
                     " * 10000 runs past the layer's 10000 buckets"));
  }
  if (d.arms.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("arms: ", d.arms.size(),
                     " given; an experiment needs a control and at least "
                     "one treatment"));
  }
  std::set<std::string> names;
  for (size_t i = 0; i < d.arms.size(); ++i) {
    const ExperimentArm& arm = d.arms[i];
    const std::string where = absl::StrCat("arms[", i, "]");
    RETURN_IF_ERROR(CheckName(where + ".name", arm.name));
    if (!names.insert(arm.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".name: '", arm.name, "' is used twice"));
    }
    if (arm.version.empty()) {
      return absl::InvalidArgumentError(where + ".version: required");
    }
    RETURN_IF_ERROR(CheckText(where + ".version", arm.version));
    if (!(arm.weight > 0) || !std::isfinite(arm.weight)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ".weight: ", arm.weight, " must be a positive number"));
    }
  }
  // Every arm needs buckets of its own: weights far apart would leave one
  // with no unit at all.
  double total = 0;
  for (const ExperimentArm& arm : d.arms) total += arm.weight;
  if (!std::isfinite(total)) {
    return absl::InvalidArgumentError(
        "arms: the weights' sum is not a finite number");
  }
  const std::vector<int64_t> ends = ArmBucketEnds(d);
  for (size_t i = 0; i < ends.size(); ++i) {
    if (ends[i] <= (i == 0 ? 0 : ends[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("arms[", i, "].weight: ", d.arms[i].weight,
                       " is too small a share of the weights (", total,
                       ") to get one of the 10000 buckets"));
    }
  }
  return absl::OkStatus();
}

Json ExperimentToJson(const ExperimentDefinition& d) {
  Json arms = Json::array();
  for (const ExperimentArm& a : d.arms) {
    arms.push_back(
        {{"name", a.name}, {"version", a.version}, {"weight", a.weight}});
  }
  return {{"name", d.name},
          {"task", d.task},
          {"unit_type", d.unit_type},
          {"layer", d.layer},
          {"salt", d.salt},
          {"traffic", d.traffic},
          {"layer_share", d.layer_share},
          {"layer_offset", d.layer_offset},
          {"arms", std::move(arms)},
          {"state", ExperimentStateName(d.state)}};
}

absl::StatusOr<ExperimentDefinition> ExperimentFromJson(
    const Json& j, const std::string& where) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(where + ": must be a JSON object");
  }
  RETURN_IF_ERROR(
      OnlyKnown(j, where,
                {"name", "task", "unit_type", "layer", "salt", "traffic",
                 "layer_share", "layer_offset", "arms", "state"}));
  ExperimentDefinition d;
  RETURN_IF_ERROR(Get(j, "name", where, &d.name));
  RETURN_IF_ERROR(Get(j, "task", where, &d.task));
  RETURN_IF_ERROR(Get(j, "unit_type", where, &d.unit_type));
  RETURN_IF_ERROR(Get(j, "layer", where, &d.layer));
  RETURN_IF_ERROR(Get(j, "salt", where, &d.salt));
  RETURN_IF_ERROR(Get(j, "traffic", where, &d.traffic));
  RETURN_IF_ERROR(Get(j, "layer_share", where, &d.layer_share));
  RETURN_IF_ERROR(Get(j, "layer_offset", where, &d.layer_offset));
  if (j.contains("state")) {
    std::string state;
    RETURN_IF_ERROR(Get(j, "state", where, &state));
    absl::StatusOr<ExperimentState> parsed = ParseExperimentState(state);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".", parsed.status().message()));
    }
    d.state = *parsed;
  }
  if (j.contains("arms")) {
    if (!j["arms"].is_array()) {
      return absl::InvalidArgumentError(where + ".arms: must be a list");
    }
    for (size_t i = 0; i < j["arms"].size(); ++i) {
      const Json& a = j["arms"][i];
      const std::string at = absl::StrCat(where, ".arms[", i, "]");
      if (!a.is_object()) {
        return absl::InvalidArgumentError(
            at + ": must be an object {\"name\", \"version\", \"weight\"}");
      }
      RETURN_IF_ERROR(OnlyKnown(a, at, {"name", "version", "weight"}));
      ExperimentArm arm;
      RETURN_IF_ERROR(Get(a, "name", at, &arm.name));
      RETURN_IF_ERROR(Get(a, "version", at, &arm.version));
      RETURN_IF_ERROR(Get(a, "weight", at, &arm.weight));
      d.arms.push_back(std::move(arm));
    }
  }
  return d;
}

int64_t LayerBucket(const std::string& layer, const std::string& unit_type,
                    const std::string& unit_id) {
  std::string bytes = "layer";
  bytes.push_back('\0');
  bytes += layer;
  bytes.push_back('\0');
  bytes += unit_type;
  bytes.push_back('\0');
  bytes += unit_id;
  return static_cast<int64_t>(Hash(bytes) % kExperimentBuckets);
}

int64_t ArmBucket(const std::string& salt, const std::string& unit_id) {
  std::string bytes = salt;
  bytes.push_back('\0');
  bytes += unit_id;
  return static_cast<int64_t>(Hash(bytes) % kExperimentBuckets);
}

LayerSlot SlotOf(const ExperimentDefinition& d) {
  return {d.layer_offset, d.layer_offset + Buckets(ReservedShare(d))};
}

int64_t EnrolledBuckets(const ExperimentDefinition& d) {
  return Buckets(d.traffic);
}

int ArmOf(const ExperimentDefinition& d, const std::string& unit_id) {
  const std::string& salt = d.salt.empty() ? d.name : d.salt;
  const int64_t bucket = ArmBucket(salt, unit_id);
  const std::vector<int64_t> ends = ArmBucketEnds(d);
  return static_cast<int>(std::upper_bound(ends.begin(), ends.end(), bucket) -
                          ends.begin());
}

bool Enrolled(const ExperimentDefinition& d, const std::string& unit_type,
              const std::string& unit_id) {
  if (unit_type != d.unit_type || d.layer_offset < 0) return false;
  const int64_t bucket = LayerBucket(d.layer, unit_type, unit_id);
  return bucket >= d.layer_offset &&
         bucket < d.layer_offset + EnrolledBuckets(d);
}

}  // namespace optrec
