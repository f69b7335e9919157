// Task examples and item catalogs read from JSON Lines, checked line by
// line against a task spec so that a bad line is reported with its file and
// line number before any training starts.
//
// An example line is a JSON object; the fields a spec's templates use are
// found in its "segments" object first, then among its top-level fields
// (the layout the world generator writes, docs/world.md). A catalog line is
// a JSON object with an id field and any text fields.
#ifndef OPTREC_TUNING_TASKS_EXAMPLES_H_
#define OPTREC_TUNING_TASKS_EXAMPLES_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "tuning/tasks/task_spec.h"

namespace optrec {

// A field of an example or catalog line: text, or a list of texts.
struct FieldValue {
  bool is_list = false;
  std::string text;               // scalars; numbers as JSON prints them
  std::vector<std::string> list;  // lists of strings
};
using FieldMap = std::map<std::string, FieldValue>;

// The fields a spec reads from examples and from catalog lines.
struct FieldRefs {
  std::set<std::string> example;  // {name} in any template
  std::set<std::string> item;     // {item.name} in example templates
  std::set<std::string> catalog;  // {name} in the item template and the
                                  // retrieve zero-shot continuation
};
FieldRefs ReferencedFields(const TaskSpec& spec);

// The <|name|> special tokens of every template of the spec, sorted: a
// module has one learned embedding per name, in this order.
std::vector<std::string> SpecialTokenNames(const TaskSpec& spec);

// An item catalog: one line per item. Immutable once loaded.
class Catalog {
 public:
  // Reads `path`, keeping `id_field` and the fields in `keep` of every line.
  // NotFound for an unreadable file; InvalidArgument "path:line" for a line
  // that is not a JSON object, lacks the id or a kept field, or repeats an
  // id; InvalidArgument for an empty catalog.
  static absl::StatusOr<std::shared_ptr<const Catalog>> Load(
      const std::string& path, const std::string& id_field,
      const std::set<std::string>& keep);

  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  const std::string& id(int64_t index) const { return ids_[index]; }
  const FieldMap& fields(int64_t index) const { return fields_[index]; }
  // The index of the item with `id`, or -1.
  int64_t Find(const std::string& id) const;
  const std::string& path() const { return path_; }
  // XXH3-128 of the file's bytes (core/util/hash.h).
  const std::string& hash() const { return hash_; }

 private:
  std::string path_, hash_;
  std::vector<std::string> ids_;
  std::vector<FieldMap> fields_;
  std::unordered_map<std::string, int64_t> index_;
};

struct Example {
  int64_t line = 0;  // 1-based line of its file
  FieldMap fields;   // the referenced fields (segments flattened)
  // Score: the index of the option whose label the example has.
  int label = -1;
  // Generate: the target text.
  std::string target;
  // The catalog index of the example's item (item_id_field; -1 when the
  // spec looks no item up) and of its target item (retrieve and
  // constrained generate; -1 otherwise).
  int64_t item = -1;
  int64_t target_item = -1;
  std::string user_id;  // "" when the line has none
  // Candidate-list tasks: the index of the line's example among the file's
  // (rows of one line share it, and rank against each other); else -1.
  int64_t group = -1;
};

struct TaskData {
  std::string path;
  std::string hash;  // XXH3-128 of the file's bytes (core/util/hash.h)
  std::vector<Example> examples;
};

// Reads a split file of a task, keeping what the spec needs. Every line is
// checked: valid JSON object; every referenced field present (text, a
// number or a list of texts); the label numeric and one of the options'
// (score); the target a non-empty string (generate); the item and target
// item found in `catalog` where the spec uses them. Errors are
// InvalidArgument "path:line: ..." naming the field and value; NotFound for
// an unreadable file; InvalidArgument for a file without examples.
// Candidate-list specs give one example per candidate (see TaskSpec).
struct TaskDataOptions {
  // Keep only the first `limit` lines (still checking them); 0 = all.
  int64_t limit = 0;
  // Training data: candidate-list tasks keep the positives and
  // spec.train_negatives negatives per line, drawn from `seed`.
  bool training = false;
  uint64_t seed = 1;
};
absl::StatusOr<TaskData> LoadTaskData(const TaskSpec& spec,
                                      const std::string& path,
                                      const Catalog* catalog,
                                      const TaskDataOptions& options = {});

// A fixed sample of `n` examples drawn without replacement from (seed),
// kept in file order; all of them when n is 0 or not below their number.
// Candidate-list rows count per line: n lines are drawn, with all their
// rows.
std::vector<Example> SampleExamples(const std::vector<Example>& examples,
                                    int64_t n, uint64_t seed);

}  // namespace optrec

#endif  // OPTREC_TUNING_TASKS_EXAMPLES_H_
