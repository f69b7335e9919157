#include "server/experiments/records.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

constexpr const char* kKindNames[] = {"click", "purchase", "rating"};

// `j[key]` as a string; InvalidArgument naming it when missing or not one.
absl::StatusOr<std::string> Text(const Json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("record field '", key, "' is missing or not text"));
  }
  return j[key].get<std::string>();
}

}  // namespace

const char* EventKindName(EventKind kind) {
  return kKindNames[static_cast<int>(kind)];
}

absl::StatusOr<EventKind> ParseEventKind(const std::string& name) {
  for (int i = 0; i < 3; ++i) {
    if (name == kKindNames[i]) return static_cast<EventKind>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("kind: '", name, "' is not one of click, purchase, rating"));
}

absl::Status ValidateEvent(const FeedbackEvent& e) {
  if (e.request_id.empty() && (e.experiment.empty() || e.unit.empty())) {
    return absl::InvalidArgumentError(
        "request_id: required, or else experiment and unit_id");
  }
  if (!std::isfinite(e.value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("value: ", e.value, " is not a finite number"));
  }
  if (e.kind != EventKind::kRating && e.value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("value: a ", EventKindName(e.kind), " count of ", e.value,
                     " is negative"));
  }
  return absl::OkStatus();
}

std::string ExperimentRecord(const ExperimentDefinition& d, int64_t time_us) {
  const Json j = {{"type", "experiment"},
                  {"time_us", time_us},
                  {"experiment", ExperimentToJson(d)}};
  return j.dump();
}

std::string ExposureRecord(const Exposure& e) {
  const Json j = {{"type", "exposure"},
                  {"time_us", e.time_us},
                  {"request_id", e.request_id},
                  {"task", e.task},
                  {"experiment", e.experiment},
                  {"arm", e.arm},
                  {"version", e.version},
                  {"unit_type", e.unit_type},
                  {"unit", e.unit}};
  // Replacement characters keep a record that is not UTF-8 on one line.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string EventRecord(const FeedbackEvent& e) {
  const Json j = {{"type", "event"},
                  {"time_us", e.time_us},
                  {"kind", EventKindName(e.kind)},
                  {"value", e.value},
                  {"request_id", e.request_id},
                  {"experiment", e.experiment},
                  {"unit_type", e.unit_type},
                  {"unit", e.unit}};
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

absl::StatusOr<LogRecord> ParseLogRecord(const Json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError("record: not a JSON object");
  }
  ASSIGN_OR_RETURN(std::string type, Text(j, "type"));
  LogRecord r;
  if (!j.contains("time_us") || !j["time_us"].is_number_integer()) {
    return absl::InvalidArgumentError(
        "record field 'time_us' is missing or not an integer");
  }
  r.time_us = j["time_us"].get<int64_t>();
  if (type == "experiment") {
    if (!j.contains("experiment")) {
      return absl::InvalidArgumentError("record field 'experiment' missing");
    }
    ASSIGN_OR_RETURN(r.experiment,
                     ExperimentFromJson(j["experiment"], "record.experiment"));
    return r;
  }
  if (type == "exposure") {
    Exposure e;
    e.time_us = r.time_us;
    ASSIGN_OR_RETURN(e.request_id, Text(j, "request_id"));
    ASSIGN_OR_RETURN(e.task, Text(j, "task"));
    ASSIGN_OR_RETURN(e.experiment, Text(j, "experiment"));
    ASSIGN_OR_RETURN(e.arm, Text(j, "arm"));
    ASSIGN_OR_RETURN(e.version, Text(j, "version"));
    ASSIGN_OR_RETURN(e.unit_type, Text(j, "unit_type"));
    ASSIGN_OR_RETURN(e.unit, Text(j, "unit"));
    r.exposure = std::move(e);
    return r;
  }
  if (type == "event") {
    FeedbackEvent e;
    e.time_us = r.time_us;
    ASSIGN_OR_RETURN(std::string kind, Text(j, "kind"));
    ASSIGN_OR_RETURN(e.kind, ParseEventKind(kind));
    if (!j.contains("value") || !j["value"].is_number()) {
      return absl::InvalidArgumentError(
          "record field 'value' is missing or not a number");
    }
    e.value = j["value"].get<double>();
    ASSIGN_OR_RETURN(e.request_id, Text(j, "request_id"));
    ASSIGN_OR_RETURN(e.experiment, Text(j, "experiment"));
    ASSIGN_OR_RETURN(e.unit_type, Text(j, "unit_type"));
    ASSIGN_OR_RETURN(e.unit, Text(j, "unit"));
    r.event = std::move(e);
    return r;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("record type '", type, "' is unknown"));
}

}  // namespace optrec
