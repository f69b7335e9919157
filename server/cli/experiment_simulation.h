// A simulated A/B experiment on the shop world, end to end through a real
// server: two versions of a next-item retrieval module as control and
// treatment, each test user of the world a unit. Every test example of a
// unit is one visit: a Retrieve call naming the unit (the experiment picks
// the version), and a click event (RecordEvents, by request id) when the
// top-k list holds the item the user really clicked next in the world's
// test split. The experiment log is then reported like any other.
//
// A version that retrieves better offline should win here; the simulation
// checks, through every layer of the experiment machinery, that the
// report detects it.
#ifndef OPTREC_SERVER_CLI_EXPERIMENT_SIMULATION_H_
#define OPTREC_SERVER_CLI_EXPERIMENT_SIMULATION_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/experiments/report.h"

namespace optrec {

struct SimulationOptions {
  // The frozen backbone, and the world (optrec world generate) whose
  // next-click test split and catalog drive the visits.
  std::string model_dir;
  std::string world_dir;
  // Retrieve modules of one task with different versions.
  std::string control_module;
  std::string treatment_module;
  // Where the indexes, the experiment's state and log, the report
  // (report.json, report.txt) and the lift plot (lift.svg) go; must not
  // exist yet, so a log never mixes two runs.
  std::string out_dir;
  // Units (distinct test users, in file order) to simulate; 0 = all.
  int64_t units = 0;
  // Items each Retrieve shows; >= 1.
  int64_t k = 10;
  // Share of units in the experiment, in (0, 1]; the others get the task's
  // default version (the control's, loaded first) and no exposure.
  double traffic = 1;
  // Seeds the arm split.
  std::string salt = "simulation";
  // Client threads calling the server at once; >= 1.
  int threads = 4;
};

struct SimulationResult {
  ExperimentReport report;
  int64_t visits = 0;          // Retrieve calls made
  int64_t exposed_visits = 0;  // of them, served by an arm
  int64_t clicks = 0;          // click events sent
};

// Runs the simulation. Errors name what failed: a module, index, world
// file, the server, or an RPC.
absl::StatusOr<SimulationResult> SimulateExperiment(
    const SimulationOptions& options);

}  // namespace optrec

#endif  // OPTREC_SERVER_CLI_EXPERIMENT_SIMULATION_H_
