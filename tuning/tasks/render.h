// From examples to token ids: templates rendered over an example's fields
// (task_spec.h describes the template language), then tokenized with the
// backbone's tokenizer, with the positions of trainable special tokens
// recorded and the input cut to the task's token budget.
#ifndef OPTREC_TUNING_TASKS_RENDER_H_
#define OPTREC_TUNING_TASKS_RENDER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/tokenizer.h"
#include "tuning/tasks/examples.h"
#include "tuning/tasks/task_spec.h"

namespace optrec {

// A rendered template: text, or a <|name|> special token (its name in
// `text`).
struct RenderedPiece {
  bool special = false;
  std::string text;
};

// Template `t` over `fields` as text pieces and special tokens. Markers
// come only from the template's own text: a field value holding "<|x|>"
// stays plain text. Errors as RenderTemplate's.
absl::StatusOr<std::vector<RenderedPiece>> RenderPieces(const TaskTemplate& t,
                                                        const FieldMap& fields,
                                                        const FieldMap* item,
                                                        int64_t keep_list);

// The text of template `t` over `fields`, with {item.name} read from
// `item` (may be null when the template has none). Lists, expanded as
// whole parts or inline, keep their newest `keep_list` elements (all when
// negative); special tokens are written back as <|name|>.
// InvalidArgument naming the field when one is missing or has the wrong
// shape (the data loader checks this first, so it only happens with data
// that bypassed it).
absl::StatusOr<std::string> RenderTemplate(const TaskTemplate& t,
                                           const FieldMap& fields,
                                           const FieldMap* item,
                                           int64_t keep_list);

// Token ids of one row's input.
struct EncodedInput {
  std::vector<int32_t> ids;  // BOS first when the tokenizer has one
  // Positions in `ids` of <|name|> tokens (their id is a placeholder whose
  // embedding the module replaces) and, for each, the index of its name in
  // SpecialTokenNames(spec).
  std::vector<int64_t> special_at;
  std::vector<int> special_index;
  // Late interaction (spec.lower_layers > 0): the input as segments instead
  // of `ids` (then empty): each template part, or each kept element of a
  // whole-list part, tokenized alone with BOS first; and for each segment
  // the index of its part in the template (which segment embedding it
  // gets).
  std::vector<std::vector<int32_t>> segments;
  std::vector<int> segment_part;
};

// Encodes a task's inputs. Immutable and thread-safe; borrows the spec,
// tokenizer and catalog, which must outlive it.
class InputEncoder {
 public:
  InputEncoder(const TaskSpec& spec, const Tokenizer& tokenizer,
               const Catalog* catalog);

  // Template `template_index` over example `e`. When the ids exceed the
  // spec's max_tokens, the oldest list elements are dropped first; if the
  // rest is still too long, tokens after BOS are cut from the front. With
  // the spec's lower_layers > 0 the result holds segments (see
  // EncodedInput), fitted to max_tokens in all the same way.
  absl::StatusOr<EncodedInput> EncodeExample(const Example& e,
                                             size_t template_index) const;
  // Any template (the zero-shot one, say) over `e`, with the same budget.
  absl::StatusOr<EncodedInput> EncodeWith(const TaskTemplate& t,
                                          const Example& e) const;
  // The item tower's input for catalog item `item` (retrieve tasks).
  absl::StatusOr<EncodedInput> EncodeItem(int64_t item) const;
  // Text without BOS (targets, continuations, option words).
  absl::StatusOr<std::vector<int32_t>> EncodeText(
      const std::string& text) const;

  const TaskSpec& spec() const { return spec_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const Catalog* catalog() const { return catalog_; }
  const std::vector<std::string>& special_names() const {
    return special_names_;
  }

 private:
  absl::StatusOr<EncodedInput> Encode(
      const std::vector<RenderedPiece>& pieces) const;
  absl::StatusOr<EncodedInput> EncodeFitted(const TaskTemplate& t,
                                            const FieldMap& fields,
                                            const FieldMap* item) const;
  absl::StatusOr<EncodedInput> EncodeSegmented(const TaskTemplate& t,
                                               const FieldMap& fields,
                                               const FieldMap* item,
                                               int64_t keep_list) const;
  absl::StatusOr<EncodedInput> FitSegments(const TaskTemplate& t,
                                           const FieldMap& fields,
                                           const FieldMap* item,
                                           int64_t longest_list) const;

  const TaskSpec& spec_;
  const Tokenizer& tokenizer_;
  const Catalog* catalog_;
  std::vector<std::string> special_names_;
  int32_t placeholder_id_ = 0;  // the id special positions carry
};

// The token ids of one late-interaction segment: `text` tokenized alone,
// without the tokenizer's post-processing, with BOS in front when the
// tokenizer has one. Requests, tuning and `optrec cache warm` all encode
// segments with it, so the same text always gives the same cache key.
absl::StatusOr<std::vector<int32_t>> EncodeSegmentText(
    const Tokenizer& tokenizer, const std::string& text);

// Substitutes {name} references of `text` from `fields` (lists joined with
// `separator`, their newest `keep_list` elements, all when negative); the
// continuation templates of zero-shot scoring use it.
absl::StatusOr<std::string> FillText(const std::string& text,
                                     const FieldMap& fields,
                                     const FieldMap* item,
                                     const std::string& separator,
                                     int64_t keep_list = -1);

}  // namespace optrec

#endif  // OPTREC_TUNING_TASKS_RENDER_H_
