// The records of the experiment log, one JSON object per line:
//
//   {"type": "experiment", "time_us": T, "experiment": {definition}}
//       an experiment's definition and state when it changed (and at the
//       top of every log file);
//   {"type": "exposure", "time_us": T, "request_id": R, "task": K,
//    "experiment": E, "arm": A, "version": V, "unit_type": U, "unit": I}
//       a request served by an experiment's arm;
//   {"type": "event", "time_us": T, "kind": "click" | "purchase" | "rating",
//    "value": X, "request_id": R, "experiment": E, "unit_type": U,
//    "unit": I}
//       feedback, keyed by the request id of its exposure, or by the unit
//       (with the experiment) when the request id is "".
//
// T is microseconds since the Unix epoch.
#ifndef OPTREC_SERVER_EXPERIMENTS_RECORDS_H_
#define OPTREC_SERVER_EXPERIMENTS_RECORDS_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "server/experiments/experiment.h"

namespace optrec {

// The log's file prefix: files are "<prefix>-NNNNNN.jsonl".
inline constexpr char kExperimentLogPrefix[] = "experiments";

struct Exposure {
  int64_t time_us = 0;
  std::string request_id;
  std::string task;
  std::string experiment;
  std::string arm;
  std::string version;
  std::string unit_type;
  std::string unit;
};

// The kinds of feedback an event carries.
enum class EventKind { kClick, kPurchase, kRating };
const char* EventKindName(EventKind kind);
// InvalidArgument naming the kind and the known ones.
absl::StatusOr<EventKind> ParseEventKind(const std::string& name);

struct FeedbackEvent {
  int64_t time_us = 0;
  EventKind kind = EventKind::kClick;
  // Clicks and purchases: how many (usually 1); ratings: the rating.
  double value = 1;
  // Either a request id, or a unit and the experiment it was exposed in.
  std::string request_id;
  std::string experiment;
  std::string unit_type;
  std::string unit;
};

// InvalidArgument naming the field: no key (neither request_id nor
// experiment and unit), a value that is not finite, a click or purchase
// count below 0.
absl::Status ValidateEvent(const FeedbackEvent& event);

// One log line each (no newline).
std::string ExperimentRecord(const ExperimentDefinition& definition,
                             int64_t time_us);
std::string ExposureRecord(const Exposure& exposure);
std::string EventRecord(const FeedbackEvent& event);

// The record read back: exactly one of the three is set, by "type".
// InvalidArgument for a record of an unknown type or with missing fields.
struct LogRecord {
  std::optional<ExperimentDefinition> experiment;
  std::optional<Exposure> exposure;
  std::optional<FeedbackEvent> event;
  int64_t time_us = 0;
};
absl::StatusOr<LogRecord> ParseLogRecord(const nlohmann::json& record);

}  // namespace optrec

#endif  // OPTREC_SERVER_EXPERIMENTS_RECORDS_H_
