#include "server/experiments/report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// What the report keeps of one exposed unit.
struct UnitState {
  int arm = 0;
  int64_t first_exposure_us = kNever;
  // Per rate kind: the time of its first event.
  std::array<int64_t, kRateKinds> first_event_us = {kNever, kNever};
  bool several_arms = false;  // exposed under another arm too
};

// Everything read from the logs that concerns the reported experiment.
struct Gathered {
  std::optional<ExperimentDefinition> definition;
  int64_t definition_time_us = std::numeric_limits<int64_t>::min();
  std::vector<Exposure> exposures;
  // Request ids of every other experiment's exposures.
  std::unordered_set<std::string> other_requests;
  std::vector<FeedbackEvent> events;
  int64_t last_record_us = 0;
  ReadStats log;
};

absl::Status Gather(const std::string& dir, const std::string& experiment,
                    Gathered* g) {
  int64_t line = 0;
  ASSIGN_OR_RETURN(
      ReadStats read,
      ReadLog(dir, kExperimentLogPrefix, [&](const Json& j) -> absl::Status {
        ++line;
        absl::StatusOr<LogRecord> r = ParseLogRecord(j);
        if (!r.ok()) {
          return absl::DataLossError(
              absl::StrCat(dir, ": record ", line, ": ", r.status().message()));
        }
        g->last_record_us = std::max(g->last_record_us, r->time_us);
        if (r->experiment.has_value()) {
          if (r->experiment->name == experiment &&
              r->time_us >= g->definition_time_us) {
            g->definition = std::move(r->experiment);
            g->definition_time_us = r->time_us;
          }
        } else if (r->exposure.has_value()) {
          if (r->exposure->experiment == experiment) {
            g->exposures.push_back(std::move(*r->exposure));
          } else {
            g->other_requests.insert(r->exposure->request_id);
          }
        } else {
          g->events.push_back(std::move(*r->event));
        }
        return absl::OkStatus();
      }));
  g->log.files += read.files;
  g->log.records += read.records;
  g->log.torn_lines += read.torn_lines;
  g->log.corrupt_lines += read.corrupt_lines;
  for (const std::string& e : read.corrupt_examples) {
    if (g->log.corrupt_examples.size() < ReadStats::kMaxCorruptExamples) {
      g->log.corrupt_examples.push_back(e);
    }
  }
  return absl::OkStatus();
}

// The rate kinds' index (click 0, purchase 1); -1 for ratings.
int RateIndex(EventKind kind) {
  return kind == EventKind::kRating ? -1 : static_cast<int>(kind);
}

Json IntervalJson(const stats::Interval& i) {
  return Json::array({i.lower, i.upper});
}

std::string Percent(double x) { return absl::StrFormat("%+.2f%%", 100 * x); }

}  // namespace

absl::Status ValidateReportOptions(const ReportOptions& o) {
  if (o.experiment.empty()) {
    return absl::InvalidArgumentError("experiment: required");
  }
  if (!(o.confidence > 0 && o.confidence < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("confidence: ", o.confidence, " is outside (0, 1)"));
  }
  if (!(o.srm_threshold > 0 && o.srm_threshold < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("srm_threshold: ", o.srm_threshold, " is outside (0, 1)"));
  }
  if (o.curve_points < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("curve_points: ", o.curve_points, " is below 2"));
  }
  if (o.curve_kind == EventKind::kRating) {
    return absl::InvalidArgumentError(
        "curve_kind: the lift curve follows a rate (click or purchase)");
  }
  return absl::OkStatus();
}

absl::StatusOr<ExperimentReport> BuildExperimentReport(
    const std::vector<std::string>& log_dirs, const ReportOptions& options) {
  RETURN_IF_ERROR(ValidateReportOptions(options));
  if (log_dirs.empty()) {
    return absl::InvalidArgumentError("logs: at least one folder is needed");
  }
  Gathered g;
  for (const std::string& dir : log_dirs) {
    RETURN_IF_ERROR(Gather(dir, options.experiment, &g));
  }
  if (!g.definition.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("experiment: no log defines '", options.experiment, "'"));
  }
  ExperimentReport report;
  report.options = options;
  report.definition = *g.definition;
  report.log = g.log;
  report.last_record_us = g.last_record_us;
  const ExperimentDefinition& d = report.definition;
  std::map<std::string, int> arm_index;
  for (size_t i = 0; i < d.arms.size(); ++i) {
    arm_index[d.arms[i].name] = static_cast<int>(i);
    ArmResult a;
    a.arm = d.arms[i];
    report.arms.push_back(std::move(a));
  }

  // Exposures, oldest first, give each unit its arm.
  std::sort(g.exposures.begin(), g.exposures.end(),
            [](const Exposure& a, const Exposure& b) {
              return a.time_us < b.time_us;
            });
  std::unordered_map<std::string, UnitState> units;  // by "type\0id"
  std::unordered_map<std::string, std::string> request_unit;
  report.first_exposure_us = g.exposures.empty() ? 0 : g.exposures[0].time_us;
  for (const Exposure& e : g.exposures) {
    auto arm = arm_index.find(e.arm);
    if (arm == arm_index.end()) {
      ++report.exposures_of_unknown_arms;
      continue;
    }
    const std::string key = e.unit_type + '\0' + e.unit;
    auto [it, is_new] = units.try_emplace(key);
    if (is_new) {
      it->second.arm = arm->second;
      it->second.first_exposure_us = e.time_us;
      ++report.arms[arm->second].units;
    } else if (it->second.arm != arm->second) {
      if (!it->second.several_arms) ++report.units_in_several_arms;
      it->second.several_arms = true;
    }
    ++report.arms[it->second.arm].exposures;
    if (!request_unit.emplace(e.request_id, key).second) {
      ++report.duplicate_request_ids;  // events join the first
    }
  }

  // Events join their unit by request id, or by unit for this experiment.
  std::vector<stats::MeanAccumulator> ratings(d.arms.size());
  for (const FeedbackEvent& e : g.events) {
    std::string key;
    if (!e.request_id.empty()) {
      auto it = request_unit.find(e.request_id);
      if (it == request_unit.end()) {
        if (g.other_requests.count(e.request_id) == 0) {
          ++report.unmatched_events;
        }
        continue;
      }
      key = it->second;
    } else {
      if (e.experiment != d.name) continue;
      key = e.unit_type + '\0' + e.unit;
    }
    auto unit = units.find(key);
    if (unit == units.end()) {
      ++report.unmatched_events;
      continue;
    }
    UnitState& u = unit->second;
    ArmResult& arm = report.arms[u.arm];
    const int kind = static_cast<int>(e.kind);
    ++arm.events[kind];
    arm.event_values[kind] += e.value;
    const int rate = RateIndex(e.kind);
    if (rate >= 0 && e.value > 0) {
      u.first_event_us[rate] = std::min(u.first_event_us[rate], e.time_us);
    }
    if (e.kind == EventKind::kRating) ratings[u.arm].Add(e.value);
  }

  // Per arm: rates over units, ratings.
  std::vector<std::array<stats::BinomialCounts, kRateKinds>> counts(
      d.arms.size());
  for (const auto& [key, u] : units) {
    for (int k = 0; k < kRateKinds; ++k) {
      ++counts[u.arm][k].trials;
      if (u.first_event_us[k] != kNever) ++counts[u.arm][k].successes;
    }
  }
  for (size_t i = 0; i < d.arms.size(); ++i) {
    ArmResult& a = report.arms[i];
    a.rating = ratings[i].Summary();
    for (int k = 0; k < kRateKinds; ++k) {
      if (counts[i][k].trials == 0) continue;
      ASSIGN_OR_RETURN(a.rates[k], stats::SummarizeProportion(
                                       counts[i][k], options.confidence));
    }
  }
  for (size_t i = 1; i < d.arms.size(); ++i) {
    ArmComparison c;
    c.arm = d.arms[i].name;
    for (int k = 0; k < kRateKinds; ++k) {
      if (counts[0][k].trials == 0 || counts[i][k].trials == 0) continue;
      ASSIGN_OR_RETURN(c.rates[k],
                       stats::CompareProportions(counts[0][k], counts[i][k],
                                                 options.confidence));
    }
    if (ratings[0].count() >= 2 && ratings[i].count() >= 2) {
      ASSIGN_OR_RETURN(c.rating, stats::WelchTTest(ratings[0].Summary(),
                                                   ratings[i].Summary(),
                                                   options.confidence));
    }
    report.comparisons.push_back(std::move(c));
  }

  // The split against the weights.
  std::vector<int64_t> observed;
  std::vector<double> weights;
  for (const ArmResult& a : report.arms) {
    observed.push_back(a.units);
    weights.push_back(a.arm.weight);
  }
  if (!units.empty()) {
    ASSIGN_OR_RETURN(
        report.sample_ratio,
        stats::CheckSampleRatio(observed, weights, options.srm_threshold));
  }

  // The cumulative lift: at each point, the units exposed by then and
  // those of them with an event by then.
  const int k = RateIndex(options.curve_kind);
  const int64_t begin = report.first_exposure_us;
  const int64_t end = std::max(begin + 1, report.last_record_us);
  report.lift_curves.assign(report.comparisons.size(), {});
  if (!units.empty()) {
    for (int64_t p = 1; p <= options.curve_points; ++p) {
      // In 128 bits: the span times the point may pass 2^63.
      const int64_t at =
          static_cast<int64_t>(begin + static_cast<__int128>(end - begin) * p /
                                           options.curve_points);
      std::vector<stats::BinomialCounts> by_arm(d.arms.size());
      for (const auto& [key, u] : units) {
        if (u.first_exposure_us > at) continue;
        ++by_arm[u.arm].trials;
        if (u.first_event_us[k] <= at) ++by_arm[u.arm].successes;
      }
      for (size_t i = 1; i < d.arms.size(); ++i) {
        LiftPoint point;
        point.time_us = at;
        if (by_arm[0].trials > 0 && by_arm[i].trials > 0) {
          absl::StatusOr<stats::ProportionComparison> c =
              stats::CompareProportions(by_arm[0], by_arm[i],
                                        options.confidence);
          if (c.ok() && c->lift_defined) {
            point.defined = true;
            point.lift = c->lift;
            point.interval = c->lift_interval;
          }
        }
        report.lift_curves[i - 1].push_back(point);
      }
    }
  }
  return report;
}

Json ExperimentReport::ToJson() const {
  Json arms_json = Json::array();
  for (const ArmResult& a : arms) {
    Json rates = Json::object();
    for (int k = 0; k < kRateKinds; ++k) {
      if (!a.rates[k].has_value()) continue;
      rates[EventKindName(static_cast<EventKind>(k))] = {
          {"units", a.rates[k]->counts.successes},
          {"rate", a.rates[k]->rate},
          {"interval", IntervalJson(a.rates[k]->interval)}};
    }
    Json events = Json::object();
    for (int k = 0; k < 3; ++k) {
      events[EventKindName(static_cast<EventKind>(k))] = {
          {"count", a.events[k]}, {"sum", a.event_values[k]}};
    }
    arms_json.push_back({{"arm", a.arm.name},
                         {"version", a.arm.version},
                         {"weight", a.arm.weight},
                         {"units", a.units},
                         {"exposures", a.exposures},
                         {"events", std::move(events)},
                         {"rates", std::move(rates)},
                         {"rating",
                          {{"count", a.rating.count},
                           {"mean", a.rating.mean},
                           {"variance", a.rating.variance}}}});
  }
  Json comparisons_json = Json::array();
  for (const ArmComparison& c : comparisons) {
    Json rates = Json::object();
    for (int k = 0; k < kRateKinds; ++k) {
      if (!c.rates[k].has_value()) continue;
      const stats::ProportionComparison& p = *c.rates[k];
      rates[EventKindName(static_cast<EventKind>(k))] = {
          {"difference", p.difference},
          {"difference_interval", IntervalJson(p.difference_interval)},
          {"lift", p.lift_defined ? Json(p.lift) : Json()},
          {"lift_interval",
           p.lift_defined ? IntervalJson(p.lift_interval) : Json()},
          {"z", p.z},
          {"p_value", p.p_value}};
    }
    Json rating;
    if (c.rating.has_value()) {
      const stats::MeanComparison& m = *c.rating;
      rating = {{"difference", m.difference},
                {"difference_interval", IntervalJson(m.difference_interval)},
                {"lift", m.lift_defined ? Json(m.lift) : Json()},
                {"t", m.t},
                {"df", m.df},
                {"p_value", m.p_value}};
    }
    comparisons_json.push_back({{"arm", c.arm},
                                {"against", arms[0].arm.name},
                                {"rates", std::move(rates)},
                                {"rating", std::move(rating)}});
  }
  Json srm;
  if (sample_ratio.has_value()) {
    srm = {{"chi_square", sample_ratio->chi_square},
           {"df", sample_ratio->degrees_of_freedom},
           {"p_value", sample_ratio->p_value},
           {"mismatch", sample_ratio->mismatch}};
  }
  Json curves = Json::array();
  for (size_t i = 0; i < lift_curves.size(); ++i) {
    Json points = Json::array();
    for (const LiftPoint& p : lift_curves[i]) {
      points.push_back(
          {{"time_us", p.time_us},
           {"lift", p.defined ? Json(p.lift) : Json()},
           {"interval", p.defined ? IntervalJson(p.interval) : Json()}});
    }
    curves.push_back({{"arm", comparisons[i].arm},
                      {"kind", EventKindName(options.curve_kind)},
                      {"points", std::move(points)}});
  }
  return {{"experiment", ExperimentToJson(definition)},
          {"confidence", options.confidence},
          {"arms", std::move(arms_json)},
          {"comparisons", std::move(comparisons_json)},
          {"sample_ratio", std::move(srm)},
          {"unmatched_events", unmatched_events},
          {"units_in_several_arms", units_in_several_arms},
          {"exposures_of_unknown_arms", exposures_of_unknown_arms},
          {"duplicate_request_ids", duplicate_request_ids},
          {"first_exposure_us", first_exposure_us},
          {"last_record_us", last_record_us},
          {"log",
           {{"files", log.files},
            {"records", log.records},
            {"torn_lines", log.torn_lines},
            {"corrupt_lines", log.corrupt_lines},
            {"corrupt_examples", log.corrupt_examples}}},
          {"lift_curves", std::move(curves)}};
}

std::string ExperimentReport::ToText() const {
  const ExperimentDefinition& d = definition;
  const int level = static_cast<int>(std::lround(options.confidence * 100));
  std::string out = absl::StrFormat(
      "experiment %s: task %s, layer %s, %s, traffic %.4g of %.4g\n", d.name,
      d.task, d.layer, ExperimentStateName(d.state), d.traffic, d.layer_share);
  absl::StrAppendFormat(
      &out, "log: %d files, %d records, %d torn lines, %d corrupt lines\n",
      log.files, log.records, log.torn_lines, log.corrupt_lines);
  // Columns for clicks, and for purchases and ratings when any were
  // recorded.
  std::array<bool, 3> shown = {true, false, false};
  size_t name_width = 7, version_width = 7;
  for (const ArmResult& a : arms) {
    for (int k = 1; k < 3; ++k) shown[k] = shown[k] || a.events[k] > 0;
    name_width = std::max(name_width, a.arm.name.size());
    version_width = std::max(version_width, a.arm.version.size());
  }
  const int nw = static_cast<int>(name_width);
  const int vw = static_cast<int>(version_width);
  absl::StrAppendFormat(&out, "%-*s  %-*s  %6s  %8s  %9s", nw, "arm", vw,
                        "version", "weight", "units", "exposures");
  for (int k = 0; k < kRateKinds; ++k) {
    if (!shown[k]) continue;
    const std::string kind = EventKindName(static_cast<EventKind>(k));
    absl::StrAppendFormat(&out, "  %8s  %-31s", kind + "s",
                          absl::StrFormat("%s rate (%d%% CI)", kind, level));
  }
  if (shown[2]) absl::StrAppend(&out, "  ratings (mean)");
  absl::StrAppend(&out, "\n");
  for (const ArmResult& a : arms) {
    absl::StrAppendFormat(&out, "%-*s  %-*s  %6.3g  %8d  %9d", nw, a.arm.name,
                          vw, a.arm.version, a.arm.weight, a.units,
                          a.exposures);
    for (int k = 0; k < kRateKinds; ++k) {
      if (!shown[k]) continue;
      const std::string rate =
          a.rates[k].has_value()
              ? absl::StrFormat("%.4f [%.4f, %.4f]", a.rates[k]->rate,
                                a.rates[k]->interval.lower,
                                a.rates[k]->interval.upper)
              : "-";
      absl::StrAppendFormat(&out, "  %8d  %-31s", a.events[k], rate);
    }
    if (shown[2]) {
      absl::StrAppendFormat(&out, "  %d (%.3f)", a.rating.count, a.rating.mean);
    }
    absl::StrAppend(&out, "\n");
  }
  if (sample_ratio.has_value()) {
    absl::StrAppendFormat(
        &out, "sample ratio: chi-square %.3f, df %d, p = %.4g: %s\n",
        sample_ratio->chi_square, sample_ratio->degrees_of_freedom,
        sample_ratio->p_value,
        sample_ratio->mismatch
            ? absl::StrFormat("MISMATCH (p < %g): the split or the logging is "
                              "broken; do not trust the comparisons",
                              options.srm_threshold)
            : "consistent with the weights");
  } else {
    absl::StrAppend(&out, "sample ratio: no unit exposed yet\n");
  }
  for (const ArmComparison& c : comparisons) {
    absl::StrAppendFormat(&out, "%s against %s:\n", c.arm, arms[0].arm.name);
    for (int k = 0; k < kRateKinds; ++k) {
      if (!c.rates[k].has_value() || !shown[k]) continue;
      const stats::ProportionComparison& p = *c.rates[k];
      absl::StrAppendFormat(
          &out,
          "  %-8s difference %+.4f [%+.4f, %+.4f], lift %s, z = %.3f, "
          "p = %.4g\n",
          EventKindName(static_cast<EventKind>(k)), p.difference,
          p.difference_interval.lower, p.difference_interval.upper,
          p.lift_defined ? absl::StrFormat("%s [%s, %s]", Percent(p.lift),
                                           Percent(p.lift_interval.lower),
                                           Percent(p.lift_interval.upper))
                         : std::string("undefined (control rate 0)"),
          p.z, p.p_value);
    }
    if (c.rating.has_value()) {
      const stats::MeanComparison& m = *c.rating;
      absl::StrAppendFormat(
          &out,
          "  %-8s difference %+.4f [%+.4f, %+.4f], Welch t = %.3f, "
          "df = %.1f, p = %.4g\n",
          "rating", m.difference, m.difference_interval.lower,
          m.difference_interval.upper, m.t, m.df, m.p_value);
    }
  }
  absl::StrAppendFormat(&out,
                        "unmatched events: %d (no exposure holds their "
                        "request id or unit)\n",
                        unmatched_events);
  if (units_in_several_arms > 0 || exposures_of_unknown_arms > 0 ||
      duplicate_request_ids > 0) {
    absl::StrAppendFormat(&out,
                          "WARNING: %d units exposed under several arms, %d "
                          "exposures of arms the definition lacks, %d "
                          "request ids used by more than one exposure\n",
                          units_in_several_arms, exposures_of_unknown_arms,
                          duplicate_request_ids);
  }
  return out;
}

// Written by hand: none of the packaged libraries draws charts. The
// document is a plain SVG 1.1 line chart with one interval band per
// treatment.
std::string ExperimentReport::LiftSvg() const {
  constexpr double kWidth = 720, kHeight = 400;
  constexpr double kLeft = 70, kRight = 20, kTop = 40, kBottom = 50;
  constexpr const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c",
                                      "#9467bd", "#ff7f0e"};
  // The time axis in the largest unit that leaves it at least 2 long.
  const double span_us = std::max<double>(
      1, static_cast<double>(last_record_us - first_exposure_us));
  const std::pair<const char*, double> units[] = {
      {"days", 864e8}, {"hours", 36e8}, {"minutes", 6e7}, {"seconds", 1e6}};
  std::pair<const char*, double> unit = units[3];
  for (const auto& u : units) {
    if (span_us >= 2 * u.second) {
      unit = u;
      break;
    }
  }
  double lo = 0, hi = 0;
  for (const auto& curve : lift_curves) {
    for (const LiftPoint& p : curve) {
      if (!p.defined) continue;
      lo = std::min(lo, p.interval.lower);
      hi = std::max(hi, p.interval.upper);
    }
  }
  // Ticks at a round step (1, 2 or 5 times a power of ten), about 6 of them.
  double step =
      std::pow(10, std::floor(std::log10(std::max(hi - lo, 1e-4) / 6)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if ((hi - lo) / (step * m) <= 7) {
      step *= m;
      break;
    }
  }
  lo = std::floor(lo / step) * step;
  hi = std::max(lo + step, std::ceil(hi / step) * step);
  auto x = [&](double t_us) {
    return kLeft +
           (kWidth - kLeft - kRight) * (t_us - first_exposure_us) / span_us;
  };
  auto y = [&](double v) {
    return kTop + (kHeight - kTop - kBottom) * (hi - v) / (hi - lo);
  };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
      "viewBox=\"0 0 %g %g\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      kWidth, kHeight, kWidth, kHeight);
  absl::StrAppendFormat(
      &svg,
      "<text x=\"%g\" y=\"22\" font-size=\"14\">%s: cumulative %s-rate lift "
      "against %s (%d%% interval)</text>\n",
      kLeft, definition.name, EventKindName(options.curve_kind),
      arms.empty() ? "" : arms[0].arm.name,
      static_cast<int>(std::lround(options.confidence * 100)));
  // Axes, ticks and the zero line.
  absl::StrAppendFormat(&svg,
                        "<g stroke=\"black\"><line x1=\"%g\" y1=\"%g\" "
                        "x2=\"%g\" y2=\"%g\"/><line x1=\"%g\" y1=\"%g\" "
                        "x2=\"%g\" y2=\"%g\"/></g>\n",
                        kLeft, kTop, kLeft, kHeight - kBottom, kLeft,
                        kHeight - kBottom, kWidth - kRight, kHeight - kBottom);
  for (double v = lo; v <= hi + step / 2; v += step) {
    absl::StrAppendFormat(&svg,
                          "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%s"
                          "</text>\n",
                          kLeft - 6, y(v) + 4,
                          absl::StrFormat("%+.4g%%", 100 * v));
  }
  for (int i = 0; i <= 5; ++i) {
    const double t = first_exposure_us + span_us * i / 5;
    absl::StrAppendFormat(
        &svg, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%.3g</text>\n",
        x(t), kHeight - kBottom + 18, (t - first_exposure_us) / unit.second);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s "
                        "since the first exposure</text>\n",
                        (kLeft + kWidth - kRight) / 2, kHeight - 10,
                        unit.first);
  if (lo < 0 && hi > 0) {
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" "
                          "stroke=\"gray\" stroke-dasharray=\"4 4\"/>\n",
                          kLeft, y(0), kWidth - kRight, y(0));
  }
  for (size_t c = 0; c < lift_curves.size(); ++c) {
    const char* colour = kColours[c % 5];
    std::string upper, lower, line;
    for (const LiftPoint& p : lift_curves[c]) {
      if (!p.defined) continue;
      absl::StrAppendFormat(&upper, "%.2f,%.2f ", x(p.time_us),
                            y(p.interval.upper));
      lower = absl::StrFormat("%.2f,%.2f ", x(p.time_us), y(p.interval.lower)) +
              lower;
      absl::StrAppendFormat(&line, "%.2f,%.2f ", x(p.time_us), y(p.lift));
    }
    if (line.empty()) continue;
    absl::StrAppendFormat(&svg,
                          "<polygon points=\"%s%s\" fill=\"%s\" "
                          "fill-opacity=\"0.2\" stroke=\"none\"/>\n",
                          upper, lower, colour);
    absl::StrAppendFormat(&svg,
                          "<polyline points=\"%s\" fill=\"none\" "
                          "stroke=\"%s\" stroke-width=\"2\"/>\n",
                          line, colour);
    absl::StrAppendFormat(
        &svg, "<text x=\"%g\" y=\"%g\" fill=\"%s\">%s</text>\n",
        kWidth - kRight - 150, kTop + 16 * (c + 1), colour, comparisons[c].arm);
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace optrec
