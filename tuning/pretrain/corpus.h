// The pretraining corpus: JSONL files of {"text": "..."} documents, turned
// into fixed-length blocks of token ids for next-token training.
#ifndef OPTREC_TUNING_PRETRAIN_CORPUS_H_
#define OPTREC_TUNING_PRETRAIN_CORPUS_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tokenizer/tokenizer.h"

namespace optrec {

struct Corpus {
  std::vector<std::string> documents;  // in file order
  std::string hash;                    // XXH3-128 of the file bytes, 32 hex
  int64_t bytes = 0;                   // file size
};

// Reads `path`: one JSON object per line with a string field "text" (other
// fields are ignored; blank lines are skipped). InvalidArgument naming
// path:line for a line that is not JSON or lacks a string "text", or for an
// empty "text"; InvalidArgument naming the path when no document is left;
// NotFound when the file cannot be opened.
absl::StatusOr<Corpus> ReadCorpus(const std::string& path);

// The documents written one per line as plain text (newlines inside a
// document become spaces): the input format of the SentencePiece trainer.
// Atomic: a temporary file renamed over `path`.
absl::Status WritePlainText(const Corpus& corpus, const std::string& path);

// Every document encoded as BOS, its ids, EOS, back to back. InvalidArgument
// naming the document index when the tokenizer rejects one.
absl::StatusOr<std::vector<int32_t>> TokenizeCorpus(const Corpus& corpus,
                                                    const Tokenizer& tokenizer);

// Cuts `stream` into blocks [N, T + 1] (int64) where block i holds tokens
// [i T, i T + T]: inputs are a block's first T tokens, targets its last T.
// N = (stream.size() - 1) / T; InvalidArgument when that is 0.
absl::StatusOr<torch::Tensor> PackBlocks(const std::vector<int32_t>& stream,
                                         int64_t block_tokens);

// Per-token add-one-smoothed unigram model fitted on `train` ids and its
// perplexity on the targets of `blocks` [N, T + 1] (columns 1..T): the
// baseline a language model must beat.
double UnigramPerplexity(const std::vector<int32_t>& train,
                         const torch::Tensor& blocks, int64_t vocab);

}  // namespace optrec

#endif  // OPTREC_TUNING_PRETRAIN_CORPUS_H_
