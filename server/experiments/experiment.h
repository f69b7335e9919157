// A/B experiments between module versions of one task: what an experiment
// is, and which arm a unit (a user, say) is in.
//
// Assignment. Every unit falls into one of kBuckets buckets of each layer
// and, independently, one of kBuckets buckets of each experiment's salt:
//
//   layer_bucket = XXH3_64("layer" 0x00 layer 0x00 unit_type 0x00 unit_id)
//                  mod 10000
//   arm_bucket   = XXH3_64(salt 0x00 unit_id) mod 10000
//
// (XXH3_64 is xxHash's 64-bit XXH3 with seed 0, from libxxhash; 0x00 is one
// zero byte; the strings are their UTF-8 bytes.) An experiment owns the
// layer buckets [layer_offset, layer_offset + layer_share * 10000) and
// enrolls the first traffic * 10000 of them, so experiments of one layer
// never share a unit, and traffic can grow up to layer_share without moving
// any unit already enrolled. The arm is the one whose slice of
// [0, 10000) holds arm_bucket, slices laid out in arm order with sizes
// proportional to the weights. Nothing here depends on the process, the
// host or the time: every replica, before and after a restart, assigns a
// unit the same way.
#ifndef OPTREC_SERVER_EXPERIMENTS_EXPERIMENT_H_
#define OPTREC_SERVER_EXPERIMENTS_EXPERIMENT_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace optrec {

// Buckets of a layer and of an arm split.
inline constexpr int64_t kExperimentBuckets = 10000;

// The unit type of a definition, request or event that names none.
inline constexpr char kDefaultUnitType[] = "user";

// draft -> running <-> paused -> stopped. Only a running experiment assigns
// units; a draft, paused or stopped one leaves its task's requests to the
// task's default version. Stopped is final.
enum class ExperimentState { kDraft, kRunning, kPaused, kStopped };

const char* ExperimentStateName(ExperimentState state);
absl::StatusOr<ExperimentState> ParseExperimentState(const std::string& name);

struct ExperimentArm {
  // Unique in the experiment; [A-Za-z0-9_.-], 1 to 64 characters.
  std::string name;
  // The module version serving this arm (immutable in the registry).
  std::string version;
  // Share of the enrolled units, relative to the other arms' weights; > 0.
  double weight = 1;
};

struct ExperimentDefinition {
  // Unique among the server's experiments; [A-Za-z0-9_.-], 1-64 chars.
  std::string name;
  // The task whose requests the arms serve.
  std::string task;
  // What a unit id names ("user", "session"...): a request takes part only
  // when it names a unit of this type.
  std::string unit_type = kDefaultUnitType;
  // Experiments of one layer are mutually exclusive; layers are
  // independent. Experiments of one task share a layer.
  std::string layer = "default";
  // Seeds the arm split; "" = the experiment's name. A new salt reshuffles
  // every unit's arm.
  std::string salt;
  // Share of all units enrolled, in (0, layer_share].
  double traffic = 1;
  // Share of the layer reserved for this experiment, in [traffic, 1]; 0 =
  // the same as traffic. Traffic grows up to it without moving units.
  double layer_share = 0;
  // First layer bucket reserved, in [0, 10000); -1 = placed at the lowest
  // free offset of the layer when defined (then recorded).
  int64_t layer_offset = -1;
  // Two or more; the first is the control every other arm is compared with.
  std::vector<ExperimentArm> arms;
  ExperimentState state = ExperimentState::kDraft;
};

// InvalidArgument naming the field for a definition that cannot run (bad
// names, fewer than 2 arms, duplicate arm names, weights or shares out of
// range). layer_offset -1 is allowed (not yet placed).
absl::Status ValidateExperiment(const ExperimentDefinition& definition);

// The definition as JSON: every field under its name above, state as its
// name, arms as [{"name", "version", "weight"}].
nlohmann::json ExperimentToJson(const ExperimentDefinition& definition);
// The reverse; fields left out keep the defaults above. InvalidArgument
// naming the field (prefixed by `where`) for unknown fields and wrong types.
// Does not validate; call ValidateExperiment.
absl::StatusOr<ExperimentDefinition> ExperimentFromJson(
    const nlohmann::json& json, const std::string& where = "experiment");

// The layer's bucket of a unit (see the file comment).
int64_t LayerBucket(const std::string& layer, const std::string& unit_type,
                    const std::string& unit_id);
// The arm split's bucket of a unit for `salt`.
int64_t ArmBucket(const std::string& salt, const std::string& unit_id);

// Reserved layer buckets: [begin, end).
struct LayerSlot {
  int64_t begin = 0;
  int64_t end = 0;
};
// The slot a placed definition reserves (layer_offset must be >= 0).
LayerSlot SlotOf(const ExperimentDefinition& definition);
// How many of the slot's buckets are enrolled.
int64_t EnrolledBuckets(const ExperimentDefinition& definition);

// The arm `unit_id` falls into when enrolled in `definition` (an index into
// its arms), whatever the experiment's state or traffic.
int ArmOf(const ExperimentDefinition& definition, const std::string& unit_id);

// Whether the unit is enrolled: right unit type, a layer bucket among the
// enrolled ones. Ignores the state.
bool Enrolled(const ExperimentDefinition& definition,
              const std::string& unit_type, const std::string& unit_id);

}  // namespace optrec

#endif  // OPTREC_SERVER_EXPERIMENTS_EXPERIMENT_H_
