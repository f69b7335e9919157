// The world's data sets, rendered as JSON Lines text: per user the profile,
// events, reviews, task examples and corpus documents; per item the catalog
// line and its corpus document. Every example belongs to the split of its
// target event's time and its history holds only earlier behaviour.
//
// Rendering is a pure function of the world and the user (or item) index,
// so callers can render users on any thread and write them in index order.
#ifndef OPTREC_TUNING_WORLD_DATASETS_H_
#define OPTREC_TUNING_WORLD_DATASETS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tuning/world/world.h"

namespace optrec {

enum class Split { kTrain = 0, kValid = 1, kTest = 2 };
inline constexpr int kNumSplits = 3;
// "train", "valid", "test".
const char* SplitName(Split split);
// The split an event at `time_s` belongs to (see WorldConfig::days).
Split SplitOf(const ShopWorld& world, int64_t time_s);

// The task data sets, in this order; TaskName() gives their folder names.
enum class Task {
  kCtr = 0,
  kNextClick,
  kExplanation,
  kQueryGen,
  kProductDesign,
  kRating,
  kSequential,
  kP5Explanation,
  kReviewSummary,
  kDirect,
};
inline constexpr int kNumTasks = 10;
// "ctr", "next_click", "explanation", "query_gen", "product_design",
// "rating", "sequential", "p5_explanation", "review_summary", "direct".
const char* TaskName(Task task);

// Candidates of a direct example: the positive and this many negatives.
inline constexpr int kDirectCandidates = 100;

// One user's lines for every output file; each string holds whole lines.
struct UserRecords {
  std::string users;                         // users.jsonl
  std::string oracle_users;                  // oracle/users.jsonl
  std::string events;                        // events.jsonl
  std::string reviews;                       // reviews.jsonl
  std::string tasks[kNumTasks][kNumSplits];  // tasks/<task>/<split>.jsonl
  std::string corpus[2];                     // corpus/{train,valid}.jsonl
  int64_t sessions = 0;
  int64_t impressions = 0;
  int64_t clicks = 0;
  int64_t purchases = 0;
  int64_t searches = 0;
  int64_t review_count = 0;
};

// Simulates user `user_index` and renders all of its lines. Thread-safe.
UserRecords RenderUser(const ShopWorld& world, int64_t user_index);

// One item's lines.
struct ItemRecords {
  std::string catalog;       // catalog.jsonl
  std::string oracle_items;  // oracle/items.jsonl
  std::string corpus[2];     // its catalog document, in train or valid
};

// Appends item `item_index`'s lines to `records`. Thread-safe.
void RenderItem(const ShopWorld& world, int64_t item_index,
                ItemRecords* records);

// The AUC (Auc in tuning/metrics/metrics.h: ties get mid-ranks) of the
// stored "p_click" against "label" over a ctr split file
// (tasks/ctr/<split>.jsonl). NotFound / InvalidArgument "path:line" for an
// unreadable or corrupt file or a line without the fields;
// FailedPrecondition when the split lacks positives or negatives.
absl::StatusOr<double> OracleAuc(const std::string& ctr_split_path);

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_DATASETS_H_
