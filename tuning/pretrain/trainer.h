// Pretraining of the default model: trains a SentencePiece tokenizer and a
// Llama-architecture model from scratch on a JSONL corpus, with checkpoints
// that survive a kill, and writes a Hugging Face-layout model directory that
// the core loads like any other checkpoint.
#ifndef OPTREC_TUNING_PRETRAIN_TRAINER_H_
#define OPTREC_TUNING_PRETRAIN_TRAINER_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tuning/pretrain/trainable_llama.h"

namespace optrec {

struct PretrainOptions {
  // JSONL corpora of {"text": ...} documents (see corpus.h). Both required.
  std::string train_corpus;
  std::string valid_corpus;
  // The model directory written at the end. Must not exist unless `force`.
  std::string out_dir;
  // Tokenizer, checkpoints and run settings; empty = out_dir + ".work". A
  // run finding a checkpoint here with the same settings continues from it.
  std::string work_dir;
  // Replace an existing out_dir; discard a work_dir holding a different run.
  bool force = false;

  // Architecture; shape.vocab is also the tokenizer's vocabulary size and
  // shape.max_positions the block length trained on.
  LlamaShape shape;
  uint64_t seed = 1;  // initial weights and data order

  int64_t steps = 2000;       // optimizer steps
  int64_t batch_blocks = 16;  // blocks of shape.max_positions tokens a step
  double learning_rate = 2e-3;
  double min_learning_rate = 2e-4;  // the end of the cosine decay
  int64_t warmup_steps = 100;       // linear warm-up from lr / warmup_steps
  double weight_decay = 0.1;        // AdamW decay on matrices, not norms
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip_norm = 1.0;  // global L2 norm; 0 = no clipping
  // Matrix products in kFloat32 or kBFloat16 (weights and optimizer state
  // stay f32).
  torch::ScalarType compute_dtype = torch::kFloat32;

  int64_t checkpoint_every_steps = 100;  // and always at the end
  int64_t eval_every_steps = 500;        // validation loss; 0 = at the end
  // The command that started the run and free-form lines, for the card.
  std::string command_line;
  std::vector<std::string> card_notes;
};

struct PretrainResult {
  int64_t steps = 0;
  int64_t tokens_seen = 0;  // training tokens processed
  int64_t parameters = 0;
  double train_loss = 0;  // mean loss of the last logged steps
  double valid_loss = 0;  // nats per token on the validation blocks
  double valid_perplexity = 0;
  // The same perplexity computed by the core's forward pass on the written
  // directory: the check that the export loads as trained.
  double valid_perplexity_core = 0;
  double unigram_perplexity = 0;  // add-one unigram baseline, same tokens
  double seconds = 0;             // training time over all resumed runs
  std::string corpus_hash;        // XXH3-128 of the training corpus file
};

// InvalidArgument naming the field for options that cannot run.
absl::Status ValidatePretrainOptions(const PretrainOptions& options);

// Runs (or resumes) the training and writes options.out_dir:
// config.json, generation_config.json, model.safetensors (f32),
// tokenizer.model, training.json (the options and PretrainResult) and
// README.md (the model card). The directory appears whole or not at all: it
// is assembled under a temporary name and renamed. Prints a progress line
// to stderr. Blocks for the whole run.
//
// Errors: InvalidArgument for bad options or a corrupt or empty corpus
// (naming file and line); FailedPrecondition when out_dir exists (without
// force) or work_dir holds a run with other settings (without force);
// PermissionDenied / Internal naming the path when a directory cannot be
// written. Whatever fails, no out_dir is left behind, and the last
// checkpoint in work_dir stays usable.
absl::StatusOr<PretrainResult> Pretrain(const PretrainOptions& options);

}  // namespace optrec

#endif  // OPTREC_TUNING_PRETRAIN_TRAINER_H_
