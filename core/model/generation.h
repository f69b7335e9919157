// Text generation over the frozen LM with a KV cache: a decoder whose batch
// sequences join and leave between steps (continuous batching), and a
// one-call Generate built on it.
#ifndef OPTREC_CORE_MODEL_GENERATION_H_
#define OPTREC_CORE_MODEL_GENERATION_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/kv_cache.h"
#include "core/model/sampling.h"
#include "core/model/transformer.h"

namespace optrec {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;  // context tokens (BOS included if wanted)
  torch::Tensor soft_prompt;        // [P, D] before prompt_ids, or undefined
  RowAdapter adapter;               // FFN adapter for every step, or none
  SamplingParams params;
};

enum class FinishReason { kLength, kStopId, kStopSequence, kCancelled };
const char* FinishReasonName(FinishReason reason);

struct GenerationResult {
  std::vector<int32_t> ids;  // generated ids (stop id excluded)
  std::string text;          // decoded text, cut before a stop sequence
  FinishReason finish = FinishReason::kLength;
};

// Called after each step for each sequence that produced output: its index
// (order of Join), the new token, and the new text that is final (held back
// while it could still become part of a stop sequence or an incomplete
// UTF-8 character). Return false to cancel that sequence.
using TokenCallback = std::function<bool(int64_t sequence, int32_t id,
                                         const std::string& text_delta)>;

// A batch of sequences decoded together. Not thread-safe: one owner drives
// Join and Step; the model may be shared. Finished sequences leave the batch
// (and the KV cache) at once, but their results stay readable until the
// decoder is destroyed, so a long-lived decoder grows by one result per
// sequence. A failed Join or Step changes nothing and may be retried.
class Decoder {
 public:
  explicit Decoder(std::shared_ptr<const TransformerLM> model);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Adds sequences: runs their prompts (one batched forward) and samples
  // their first token. Returns their sequence indices. Errors (bad params,
  // stop sequences without a tokenizer, bad ids) leave the decoder as it was.
  absl::StatusOr<std::vector<int64_t>> Join(
      const std::vector<GenerationRequest>& requests,
      const TokenCallback& on_token = nullptr);

  // One decoding step for every unfinished sequence; finished ones leave
  // the batch. No-op when none is active.
  absl::Status Step(const TokenCallback& on_token = nullptr);

  // Ends a sequence now with FinishReason::kCancelled.
  void Cancel(int64_t sequence);

  int64_t active() const { return static_cast<int64_t>(active_.size()); }
  bool finished(int64_t sequence) const;
  const GenerationResult& result(int64_t sequence) const;
  // `sequence` in Cancel, finished and result must be an index returned by
  // Join on this decoder.

 private:
  struct Sequence;

  // Appends token `id` to sequence `s`, updates text and finish state, and
  // reports to the callback.
  void Accept(Sequence& s, int64_t index, int32_t id,
              const TokenCallback& on_token);
  void DropFinished();

  std::shared_ptr<const TransformerLM> model_;
  std::unique_ptr<KVCache> cache_;  // rows = active_ in order
  std::vector<int64_t> active_;     // sequence indices of cache rows
  std::vector<std::unique_ptr<Sequence>> sequences_;
};

// Generates for all requests together and returns their results in order.
absl::StatusOr<std::vector<GenerationResult>> Generate(
    std::shared_ptr<const TransformerLM> model,
    const std::vector<GenerationRequest>& requests,
    const TokenCallback& on_token = nullptr);

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_GENERATION_H_
