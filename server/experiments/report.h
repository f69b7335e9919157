// The result of an experiment, read from experiment logs (records.h): per
// arm its units, exposures, events and rates with intervals; each
// treatment against the control with difference, relative lift, interval
// and p-value; the sample-ratio check of the split; and the cumulative
// lift over time, drawn as SVG.
//
// The unit of analysis is the unit of assignment. A click or purchase
// rate is the share of an arm's exposed units with at least one such event
// (two-proportion z test); a rating is one observation per rating event
// (Welch's t test). Per-exposure event counts are reported alongside, not
// tested: exposures of one unit are not independent.
#ifndef OPTREC_SERVER_EXPERIMENTS_REPORT_H_
#define OPTREC_SERVER_EXPERIMENTS_REPORT_H_

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/experiments/experiment.h"
#include "server/experiments/exposure_log.h"
#include "server/experiments/records.h"
#include "server/experiments/stats.h"

namespace optrec {

struct ReportOptions {
  // The experiment to report; required.
  std::string experiment;
  // Level of every interval, in (0, 1).
  double confidence = 0.95;
  // The sample-ratio check flags a split whose chi-square p-value is below
  // this, in (0, 1).
  double srm_threshold = 0.001;
  // Points of the cumulative-lift curve, spread evenly over the time from
  // the first exposure to the last record; >= 2.
  int64_t curve_points = 40;
  // The rate the curve follows: click or purchase.
  EventKind curve_kind = EventKind::kClick;
};

// InvalidArgument naming the field.
absl::Status ValidateReportOptions(const ReportOptions& options);

// Click and purchase, the kinds reported as rates.
inline constexpr int kRateKinds = 2;

struct ArmResult {
  ExperimentArm arm;
  int64_t units = 0;      // distinct units exposed
  int64_t exposures = 0;  // requests served
  // Per kind (EventKind order): events and their summed values.
  std::array<int64_t, 3> events = {0, 0, 0};
  std::array<double, 3> event_values = {0, 0, 0};
  // Click and purchase: units with an event / units, when units > 0.
  std::array<std::optional<stats::ProportionSummary>, kRateKinds> rates;
  // The ratings' summary.
  stats::MeanSummary rating;
};

// One treatment against the control; a comparison is absent when an arm
// lacks the data it needs (no units; fewer than two ratings).
struct ArmComparison {
  std::string arm;
  std::array<std::optional<stats::ProportionComparison>, kRateKinds> rates;
  std::optional<stats::MeanComparison> rating;
};

// The lift of ReportOptions::curve_kind's rate over the units exposed up to
// `time_us`, and its interval.
struct LiftPoint {
  int64_t time_us = 0;
  bool defined = false;  // both arms have units and the control a rate > 0
  double lift = 0;
  stats::Interval interval;
};

struct ExperimentReport {
  ReportOptions options;
  // The latest definition the logs hold.
  ExperimentDefinition definition;
  std::vector<ArmResult> arms;  // the definition's order; [0] is control
  std::vector<ArmComparison> comparisons;  // arms[1..] against arms[0]
  // Absent when no unit was exposed.
  std::optional<stats::SampleRatioCheck> sample_ratio;
  // Events that match no exposure: a request id no log holds, or a unit
  // of this experiment that was never exposed in it.
  int64_t unmatched_events = 0;
  // Units exposed under two arms (a changed salt or weights mid-run); they
  // count in the first arm that served them.
  int64_t units_in_several_arms = 0;
  // Exposures naming an arm the definition lacks.
  int64_t exposures_of_unknown_arms = 0;
  // Exposures of this experiment whose request id an earlier one has
  // (request ids must be unique); their events join the first.
  int64_t duplicate_request_ids = 0;
  int64_t first_exposure_us = 0;
  int64_t last_record_us = 0;
  // What reading the logs found (summed over folders).
  ReadStats log;
  // One curve per treatment, in comparisons' order.
  std::vector<std::vector<LiftPoint>> lift_curves;

  nlohmann::json ToJson() const;
  // A table for a terminal.
  std::string ToText() const;
  // The cumulative lift of every treatment with its interval band over the
  // hours since the first exposure, as a standalone SVG document.
  std::string LiftSvg() const;
};

// Reads every experiment log in `log_dirs` (one per server, say; records
// from all of them are joined, so an event may reach another server than
// its exposure) and reports `options.experiment`. Torn and corrupt lines
// are skipped and counted in `log`. Errors: InvalidArgument for bad
// options; NotFound naming a missing folder or an experiment no log
// defines; DataLoss naming a record that parses as JSON but not as a log
// record.
absl::StatusOr<ExperimentReport> BuildExperimentReport(
    const std::vector<std::string>& log_dirs, const ReportOptions& options);

}  // namespace optrec

#endif  // OPTREC_SERVER_EXPERIMENTS_REPORT_H_
