#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/cli/args.h"
#include "core/util/status_macros.h"
#include "tuning/cli/commands.h"
#include "tuning/pretrain/trainer.h"

namespace optrec {
namespace {

Args PretrainArgs() {
  const PretrainOptions d;
  auto num = [](auto v) { return absl::StrCat(v); };
  return Args(
      "pretrain",
      "Trains a SentencePiece tokenizer and a Llama-architecture model from "
      "scratch on a JSONL corpus of {\"text\": ...} lines, and writes a "
      "Hugging Face-layout model directory. Rerun the same command after an "
      "interruption to continue from the last checkpoint.",
      {
          {"corpus", "training corpus (JSONL)"},
          {"valid-corpus", "held-out corpus (JSONL)"},
          {"out", "model directory to write"},
          {"work-dir", "checkpoints and tokenizer (default OUT.work)"},
          {"force", "replace OUT, and a work dir of another run", false},
          {"seed", "initial weights and data order", true, false, num(d.seed)},
          {"vocab", "tokenizer pieces", true, false, num(d.shape.vocab)},
          {"hidden", "model width", true, false, num(d.shape.hidden)},
          {"layers", "transformer layers", true, false, num(d.shape.layers)},
          {"heads", "attention heads", true, false, num(d.shape.heads)},
          {"kv-heads", "key/value heads", true, false, num(d.shape.kv_heads)},
          {"ffn", "SwiGLU width", true, false, num(d.shape.ffn)},
          {"context", "tokens per training block", true, false,
           num(d.shape.max_positions)},
          {"steps", "optimizer steps", true, false, num(d.steps)},
          {"batch", "blocks per step", true, false, num(d.batch_blocks)},
          {"lr", "peak learning rate", true, false, num(d.learning_rate)},
          {"min-lr", "learning rate at the end of the cosine decay", true,
           false, num(d.min_learning_rate)},
          {"warmup", "linear warm-up steps", true, false, num(d.warmup_steps)},
          {"weight-decay", "AdamW weight decay on matrices", true, false,
           num(d.weight_decay)},
          {"clip", "gradient norm clipping; 0 = off", true, false,
           num(d.grad_clip_norm)},
          {"dtype", "f32 or bf16 matrix products", true, false, "f32"},
          {"checkpoint-every", "steps between checkpoints", true, false,
           num(d.checkpoint_every_steps)},
          {"eval-every", "steps between validation losses; 0 = end only", true,
           false, num(d.eval_every_steps)},
          {"note", "a line for the model card", true, true},
          {"help", "print this help", false},
      });
}

absl::StatusOr<PretrainOptions> OptionsFrom(const Args& args, int argc,
                                            char** argv) {
  PretrainOptions o;
  o.train_corpus = args.Get("corpus");
  o.valid_corpus = args.Get("valid-corpus");
  o.out_dir = args.Get("out");
  o.work_dir = args.Get("work-dir");
  o.force = args.Has("force");
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed"));
  if (seed < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed must not be negative, got ", seed));
  }
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.shape.vocab, args.GetInt("vocab"));
  ASSIGN_OR_RETURN(o.shape.hidden, args.GetInt("hidden"));
  ASSIGN_OR_RETURN(o.shape.layers, args.GetInt("layers"));
  ASSIGN_OR_RETURN(o.shape.heads, args.GetInt("heads"));
  ASSIGN_OR_RETURN(o.shape.kv_heads, args.GetInt("kv-heads"));
  ASSIGN_OR_RETURN(o.shape.ffn, args.GetInt("ffn"));
  ASSIGN_OR_RETURN(o.shape.max_positions, args.GetInt("context"));
  ASSIGN_OR_RETURN(o.steps, args.GetInt("steps"));
  ASSIGN_OR_RETURN(o.batch_blocks, args.GetInt("batch"));
  ASSIGN_OR_RETURN(o.learning_rate, args.GetDouble("lr"));
  ASSIGN_OR_RETURN(o.min_learning_rate, args.GetDouble("min-lr"));
  ASSIGN_OR_RETURN(o.warmup_steps, args.GetInt("warmup"));
  ASSIGN_OR_RETURN(o.weight_decay, args.GetDouble("weight-decay"));
  ASSIGN_OR_RETURN(o.grad_clip_norm, args.GetDouble("clip"));
  ASSIGN_OR_RETURN(o.checkpoint_every_steps, args.GetInt("checkpoint-every"));
  ASSIGN_OR_RETURN(o.eval_every_steps, args.GetInt("eval-every"));
  const std::string dtype = args.Get("dtype");
  if (dtype == "f32") {
    o.compute_dtype = torch::kFloat32;
  } else if (dtype == "bf16") {
    o.compute_dtype = torch::kBFloat16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype must be f32 or bf16, got '", dtype, "'"));
  }
  o.card_notes = args.GetAll("note");
  o.command_line = ShellCommandLine(argc, argv);
  return o;
}

}  // namespace

int RunPretrain(int argc, char** argv) {
  Args args = PretrainArgs();
  if (int code =
          ParseOrExit(args, argc, argv, 2, {"corpus", "valid-corpus", "out"});
      code >= 0) {
    return code;
  }
  absl::StatusOr<PretrainOptions> options = OptionsFrom(args, argc, argv);
  if (!options.ok()) return UsageError(std::string(options.status().message()));
  if (absl::Status valid = ValidatePretrainOptions(*options); !valid.ok()) {
    return UsageError(std::string(valid.message()));
  }
  absl::StatusOr<PretrainResult> result = Pretrain(*options);
  if (!result.ok()) return Fail(result.status());
  std::printf(
      "wrote %s: %lld parameters, validation perplexity %.2f (unigram "
      "baseline %.2f), %.1f min of training\n",
      options->out_dir.c_str(), static_cast<long long>(result->parameters),
      result->valid_perplexity, result->unigram_perplexity,
      result->seconds / 60.0);
  return 0;
}

}  // namespace optrec
