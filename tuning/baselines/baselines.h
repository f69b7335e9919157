// Simple non-LM baselines on the shop world's task data sets, the yardstick
// every tuned module is compared with (docs/tuning.md):
//   - popularity: click scoring by the item's smoothed training click rate;
//     rating by the item's mean training rating; next-click retrieval and
//     the sequential and direct tasks by how often each item was the
//     training target; explanations and review summaries by the most
//     frequent training target text;
//   - logistic regression for click scoring on categorical features of the
//     shopper, the item and their match with the recent behaviour (feature
//     list at CtrFeatures in baselines.cc);
//   - the oracle: the world's own click probabilities (the best AUC any
//     model can reach on that data).
// They read the world's files directly (docs/world.md), not task specs.
#ifndef OPTREC_TUNING_BASELINES_BASELINES_H_
#define OPTREC_TUNING_BASELINES_BASELINES_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"

namespace optrec {

struct BaselineOptions {
  std::string world;           // the world's directory
  std::string split = "test";  // evaluated split: "valid" or "test"
  uint64_t seed = 1;           // logistic regression's initial order
  int64_t logreg_epochs = 4;
  double logreg_learning_rate = 0.05;
  double logreg_l2 = 1e-6;
};

// Every baseline's metrics, as {"ctr": {"oracle": {...}, "popularity":
// {...}, "logistic_regression": {...}}, "rating": {...}, ...}, with the
// same metric names as optrec eval. Errors name the file and line of bad
// data (NotFound for a missing file).
absl::StatusOr<nlohmann::json> RunBaselines(const BaselineOptions& options);

}  // namespace optrec

#endif  // OPTREC_TUNING_BASELINES_BASELINES_H_
