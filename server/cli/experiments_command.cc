// optrec experiments: the report of an A/B experiment from its logs, and a
// simulated experiment on the shop world.
#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/cli/args.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "server/cli/commands.h"
#include "server/cli/experiment_simulation.h"
#include "server/experiments/report.h"

namespace optrec {
namespace {

Args ReportArgs() {
  const ReportOptions d;
  return Args(
      "experiments report",
      "Reports an A/B experiment from experiment logs (the log folder under "
      "a server's experiments.dir; one --log per server): per arm units, "
      "exposures, events and rates with intervals; each treatment against "
      "the control with difference, lift, interval and p-value; the "
      "sample-ratio check; and, with --svg, the cumulative lift over time.",
      {
          {"log", "an experiment log folder (repeat for several servers)", true,
           true},
          {"experiment", "the experiment's name"},
          {"confidence", "interval level", true, false,
           absl::StrCat(d.confidence)},
          {"srm-threshold", "p-value below which the split is flagged", true,
           false, absl::StrCat(d.srm_threshold)},
          {"curve", "the rate the lift plot follows: click or purchase", true,
           false, "click"},
          {"json", "also write the report as JSON to this file"},
          {"svg", "write the cumulative lift plot (SVG) to this file"},
          {"help", "print this help", false},
      });
}

Args SimulateArgs() {
  const SimulationOptions d;
  return Args(
      "experiments simulate",
      "Runs a simulated A/B experiment through an in-process server: two "
      "versions of a next-click retrieval module as control and treatment, "
      "each test user of the world a unit, each of its test examples a "
      "Retrieve visit, a click when the list holds the item the user really "
      "clicked next. Writes indexes, the experiment log, report.json, "
      "report.txt and lift.svg under --out and prints the report.",
      {
          {"model", "the frozen backbone"},
          {"world", "the world's directory (optrec world generate)"},
          {"control", "the control arm's retrieve module file"},
          {"treatment", "the treatment arm's retrieve module file"},
          {"out", "a new folder for the run"},
          {"units", "test users to simulate (0 = all)", true, false,
           absl::StrCat(d.units)},
          {"k", "items per Retrieve", true, false, absl::StrCat(d.k)},
          {"traffic", "share of units in the experiment", true, false,
           absl::StrCat(d.traffic)},
          {"salt", "seeds the arm split", true, false, d.salt},
          {"threads", "client threads", true, false, absl::StrCat(d.threads)},
          {"help", "print this help", false},
      });
}

int Report(int argc, char** argv) {
  Args args = ReportArgs();
  if (int code = ParseOrExit(args, argc, argv, 3, {"log", "experiment"});
      code >= 0) {
    return code;
  }
  ReportOptions o;
  o.experiment = args.Get("experiment");
  absl::StatusOr<double> confidence = args.GetDouble("confidence");
  absl::StatusOr<double> srm = args.GetDouble("srm-threshold");
  absl::StatusOr<EventKind> curve = ParseEventKind(args.Get("curve"));
  if (!confidence.ok()) return UsageError(confidence.status().ToString());
  if (!srm.ok()) return UsageError(srm.status().ToString());
  if (!curve.ok()) return UsageError(curve.status().ToString());
  o.confidence = *confidence;
  o.srm_threshold = *srm;
  o.curve_kind = *curve;
  absl::Status valid = ValidateReportOptions(o);
  if (!valid.ok()) return UsageError(valid.ToString());
  absl::StatusOr<ExperimentReport> report =
      BuildExperimentReport(args.GetAll("log"), o);
  if (!report.ok()) return Fail(report.status());
  std::fputs(report->ToText().c_str(), stdout);
  if (args.Has("json")) {
    absl::Status written =
        WriteFileAtomic(args.Get("json"), report->ToJson().dump(2) + "\n");
    if (!written.ok()) return Fail(written);
  }
  if (args.Has("svg")) {
    absl::Status written = WriteFileAtomic(args.Get("svg"), report->LiftSvg());
    if (!written.ok()) return Fail(written);
    std::printf("wrote %s\n", args.Get("svg").c_str());
  }
  return 0;
}

int Simulate(int argc, char** argv) {
  Args args = SimulateArgs();
  if (int code = ParseOrExit(args, argc, argv, 3,
                             {"model", "world", "control", "treatment", "out"});
      code >= 0) {
    return code;
  }
  SimulationOptions o;
  o.model_dir = args.Get("model");
  o.world_dir = args.Get("world");
  o.control_module = args.Get("control");
  o.treatment_module = args.Get("treatment");
  o.out_dir = args.Get("out");
  o.salt = args.Get("salt");
  absl::StatusOr<int64_t> units = args.GetInt("units");
  absl::StatusOr<int64_t> k = args.GetInt("k");
  absl::StatusOr<int64_t> threads = args.GetInt("threads");
  absl::StatusOr<double> traffic = args.GetDouble("traffic");
  for (const absl::Status& s :
       {units.status(), k.status(), threads.status(), traffic.status()}) {
    if (!s.ok()) return UsageError(s.ToString());
  }
  o.units = *units;
  o.k = *k;
  o.threads = static_cast<int>(std::clamp<int64_t>(*threads, 0, 1 << 20));
  o.traffic = *traffic;
  absl::StatusOr<SimulationResult> result = SimulateExperiment(o);
  if (!result.ok()) return Fail(result.status());
  std::printf("%lld visits (%lld served by an arm), %lld clicks\n",
              static_cast<long long>(result->visits),
              static_cast<long long>(result->exposed_visits),
              static_cast<long long>(result->clicks));
  std::fputs(result->report.ToText().c_str(), stdout);
  std::printf("wrote %s/report.json, report.txt and lift.svg\n",
              o.out_dir.c_str());
  return 0;
}

}  // namespace

int RunExperiments(int argc, char** argv) {
  const std::string sub = argc >= 3 ? argv[2] : "";
  if (sub == "report") return Report(argc, argv);
  if (sub == "simulate") return Simulate(argc, argv);
  return UsageError(
      "usage: optrec experiments report --log DIR --experiment NAME | "
      "optrec experiments simulate --model DIR --world DIR --control FILE "
      "--treatment FILE --out DIR (add --help for the flags)");
}

}  // namespace optrec
