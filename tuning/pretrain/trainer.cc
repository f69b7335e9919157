#include "tuning/pretrain/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint/safetensors.h"
#include "core/model/transformer.h"
#include "core/tokenizer/sentencepiece_backend.h"
#include "core/util/files.h"
#include "core/util/log.h"
#include "core/util/status_macros.h"
#include "core/util/torch_errors.h"
#include "tuning/common/progress.h"
#include "tuning/common/run_dir.h"
#include "tuning/pretrain/corpus.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

constexpr char kTokenizerFile[] = "tokenizer.model";

std::string WorkDir(const PretrainOptions& o) {
  return o.work_dir.empty() ? o.out_dir + ".work" : o.work_dir;
}

// The settings that decide the result. A checkpoint is resumed only by a
// run with the same settings.
nlohmann::json RunSettings(const PretrainOptions& o, const Corpus& train,
                           const Corpus& valid) {
  nlohmann::json j;
  j["model"] = LlamaConfigJson(o.shape);
  j["seed"] = o.seed;
  j["steps"] = o.steps;
  j["batch_blocks"] = o.batch_blocks;
  j["learning_rate"] = o.learning_rate;
  j["min_learning_rate"] = o.min_learning_rate;
  j["warmup_steps"] = o.warmup_steps;
  j["weight_decay"] = o.weight_decay;
  j["betas"] = {o.beta1, o.beta2};
  j["grad_clip_norm"] = o.grad_clip_norm;
  j["compute_dtype"] = o.compute_dtype == torch::kBFloat16 ? "bf16" : "f32";
  j["train_corpus_hash"] = train.hash;
  j["valid_corpus_hash"] = valid.hash;
  return j;
}

// Trains the tokenizer into work_dir unless it is there already.
absl::Status EnsureTokenizer(const std::string& work, const Corpus& train,
                             int64_t vocab) {
  const std::string model = absl::StrCat(work, "/", kTokenizerFile);
  std::error_code exists_ec;
  if (fs::exists(model, exists_ec)) return absl::OkStatus();
  if (work.find_first_of(" \t\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "work directory '", work, "' has whitespace in its path, which the",
        " SentencePiece trainer's flags cannot carry"));
  }
  const std::string input = work + "/tokenizer-input.txt";
  RETURN_IF_ERROR(WritePlainText(train, input));
  const std::string prefix = work + "/tokenizer-training";
  // One thread and no sampling: the same corpus gives the same tokenizer.
  const std::string flags = absl::StrCat(
      "--input=", input, " --model_prefix=", prefix, " --vocab_size=", vocab,
      " --model_type=bpe --character_coverage=1.0 --byte_fallback=true",
      " --split_digits=true --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1",
      " --num_threads=1 --input_sentence_size=0 --max_sentence_length=65536",
      " --minloglevel=2");
  LOG_INFO << "training a " << vocab << "-piece SentencePiece tokenizer on "
           << train.documents.size() << " documents";
  absl::Status trained = TrainSentencePieceModel(flags);
  std::error_code ec;
  fs::remove(input, ec);
  fs::remove(prefix + ".vocab", ec);
  if (!trained.ok()) {
    fs::remove(prefix + ".model", ec);
    return trained;
  }
  fs::rename(prefix + ".model", model, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot move the tokenizer to ",
                                            model, ": ", ec.message()));
  }
  return absl::OkStatus();
}

// Which blocks each step trains on: epoch e visits all N blocks in the order
// of a permutation drawn from (seed, e), B blocks a step.
class BlockOrder {
 public:
  BlockOrder(int64_t blocks, int64_t batch, uint64_t seed)
      : blocks_(blocks), batch_(batch), seed_(seed) {}

  // Block indices [B] (int64) of step `step` (0-based).
  torch::Tensor Step(int64_t step) {
    std::vector<int64_t> picked(batch_);
    for (int64_t i = 0; i < batch_; ++i) {
      const int64_t global = step * batch_ + i;
      const int64_t epoch = global / blocks_;
      if (epoch != epoch_) {
        torch::Generator gen = at::detail::createCPUGenerator(
            seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
        perm_ = torch::randperm(blocks_, gen, torch::kInt64);
        epoch_ = epoch;
      }
      picked[i] = perm_[global % blocks_].item<int64_t>();
    }
    return torch::tensor(picked, torch::kInt64);
  }

 private:
  int64_t blocks_, batch_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  torch::Tensor perm_;
};

// The learning rate of step `step` (0-based): linear warm-up to the peak,
// then a cosine down to min_learning_rate.
double LearningRate(const PretrainOptions& o, int64_t step) {
  return WarmupCosineRate(step, o.steps, o.warmup_steps, o.learning_rate,
                          o.min_learning_rate);
}

// Mean next-token loss (nats) of the model on blocks [N, T + 1].
double MeanLoss(TrainableLlama& model, const torch::Tensor& blocks,
                int64_t batch, torch::ScalarType compute) {
  torch::NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  for (int64_t start = 0; start < blocks.size(0); start += batch) {
    const int64_t n = std::min(batch, blocks.size(0) - start);
    torch::Tensor chunk = blocks.narrow(0, start, n);
    const int64_t t = chunk.size(1) - 1;
    torch::Tensor logits = model->Forward(chunk.narrow(1, 0, t), compute);
    torch::Tensor targets = chunk.narrow(1, 1, t);
    total += torch::nn::functional::cross_entropy(
                 logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
                 torch::nn::functional::CrossEntropyFuncOptions().reduction(
                     torch::kSum))
                 .item<double>();
    count += targets.numel();
  }
  return total / static_cast<double>(count);
}

// The same loss through the core's frozen forward pass on a written model
// directory.
absl::StatusOr<double> CoreMeanLoss(const std::string& dir,
                                    const torch::Tensor& blocks, int64_t batch,
                                    const LlamaShape& shape) {
  LoadOptions load;
  load.device.dtype = torch::kFloat32;
  ASSIGN_OR_RETURN(auto model, TransformerLM::Load(dir, load));
  const Tokenizer* tokenizer = model->tokenizer();
  if (tokenizer == nullptr || tokenizer->special().bos_id != shape.bos_id ||
      tokenizer->special().eos_id != shape.eos_id ||
      tokenizer->vocab_size() != shape.vocab) {
    return absl::InternalError(absl::StrCat(
        "the written model in ", dir,
        " does not load back with its tokenizer's vocabulary and BOS/EOS"));
  }
  torch::NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  const int64_t t = blocks.size(1) - 1;
  for (int64_t start = 0; start < blocks.size(0); start += batch) {
    const int64_t n = std::min(batch, blocks.size(0) - start);
    std::vector<RowInput> rows(n);
    for (int64_t r = 0; r < n; ++r) {
      torch::Tensor ids =
          blocks[start + r].narrow(0, 0, t).to(torch::kInt32).contiguous();
      rows[r].ids.assign(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + t);
    }
    ASSIGN_OR_RETURN(ForwardOutput out, model->Forward(rows));
    torch::Tensor targets = blocks.narrow(0, start, n).narrow(1, 1, t);
    total += torch::nn::functional::cross_entropy(
                 out.logits.reshape({-1, out.logits.size(-1)}),
                 targets.reshape({-1}),
                 torch::nn::functional::CrossEntropyFuncOptions().reduction(
                     torch::kSum))
                 .item<double>();
    count += targets.numel();
  }
  return total / static_cast<double>(count);
}

struct TrainState {
  int64_t step = 0;         // steps done
  int64_t tokens_seen = 0;  // training tokens processed
  double seconds = 0;       // time spent training, over all runs
  double recent_loss = 0;   // mean loss of the steps since the last log
  int threads = 0;          // torch threads of the run that saved it
};

nlohmann::json StateJson(const TrainState& s) {
  return {{"step", s.step},
          {"tokens_seen", s.tokens_seen},
          {"seconds", s.seconds},
          {"recent_loss", s.recent_loss},
          {"threads", s.threads}};
}

// Writes the checkpoint of state.step into the work directory (see
// tuning/common/run_dir.h).
absl::Status SaveCheckpoint(const std::string& work,
                            const TrainableLlama& model,
                            const torch::optim::AdamW& optimizer,
                            const TrainState& state) {
  const CheckpointDir checkpoints(work);
  ASSIGN_OR_RETURN(StagedDirectory staged, checkpoints.Begin(state.step));
  RETURN_IF_ERROR(WriteSafetensors(staged.path() + "/model.safetensors",
                                   model->StateDict()));
  try {
    torch::save(optimizer, staged.path() + "/optimizer.pt");
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("cannot save the optimizer: ", TorchErrorMessage(e)));
  }
  RETURN_IF_ERROR(WriteFileAtomic(staged.path() + "/state.json",
                                  StateJson(state).dump(2) + "\n"));
  return checkpoints.Publish(std::move(staged), state.step);
}

absl::StatusOr<TrainState> ReadState(const std::string& path, int64_t steps) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  auto integer = [&](const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_number_integer();
  };
  auto number = [&](const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_number();
  };
  if (!integer("step") || !integer("tokens_seen") || !number("seconds") ||
      !number("recent_loss")) {
    return absl::DataLossError(absl::StrCat(path, " is unreadable"));
  }
  TrainState state;
  state.step = j["step"].get<int64_t>();
  state.tokens_seen = j["tokens_seen"].get<int64_t>();
  state.seconds = j["seconds"].get<double>();
  state.recent_loss = j["recent_loss"].get<double>();
  state.threads = integer("threads") ? j["threads"].get<int>() : 0;
  if (state.step < 0 || state.step > steps) {
    return absl::DataLossError(
        absl::StrCat(path, ": step ", state.step, " outside [0, ", steps, "]"));
  }
  return state;
}

// Loads the newest checkpoint of `work` into the model and optimizer and
// returns the state to continue from (step 0 when there is none).
absl::StatusOr<TrainState> LoadCheckpoint(const std::string& work,
                                          int64_t steps, TrainableLlama& model,
                                          torch::optim::AdamW& optimizer) {
  ASSIGN_OR_RETURN(std::string dir, CheckpointDir(work).Latest());
  if (dir.empty()) return TrainState{};
  ASSIGN_OR_RETURN(TrainState state, ReadState(dir + "/state.json", steps));
  ASSIGN_OR_RETURN(auto file,
                   SafetensorsFile::Open(dir + "/model.safetensors"));
  Named tensors;
  for (const std::string& name : file->names()) {
    ASSIGN_OR_RETURN(torch::Tensor t,
                     ToTorch(file, *file->Find(name), torch::kFloat32));
    tensors.emplace_back(name, t);
  }
  RETURN_IF_ERROR(model->LoadStateDict(tensors));
  try {
    torch::load(optimizer, dir + "/optimizer.pt");
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint ", dir,
        ": cannot load the optimizer state: ", TorchErrorMessage(e)));
  }
  if (state.threads > 0 && state.threads != torch::get_num_threads()) {
    LOG_WARNING << "the checkpoint was written with " << state.threads
                << " threads, this run has " << torch::get_num_threads()
                << ": the result will differ from an uninterrupted run in "
                   "the last digits";
  }
  return state;
}

std::string Fixed(double v, int digits) {
  return absl::StrFormat("%.*f", digits, v);
}

std::string ModelCard(const PretrainOptions& o, const PretrainResult& r,
                      int64_t train_tokens, int64_t valid_tokens) {
  const LlamaShape& s = o.shape;
  std::string card = absl::StrCat(
      "# optrec default model\n\n",
      "A Llama-architecture language model trained from scratch by `optrec "
      "pretrain`, with a SentencePiece BPE tokenizer trained on the same "
      "corpus. Files: `config.json`, `model.safetensors` (f32), "
      "`tokenizer.model`, `training.json` (every setting and figure).\n\n",
      "## Reproduce\n\n```\n", o.command_line, "\n```\n\n");
  for (const std::string& note : o.card_notes)
    absl::StrAppend(&card, note, "\n\n");
  absl::StrAppend(
      &card, "## Model\n\n", "| | |\n|---|---|\n", "| parameters | ",
      r.parameters, " |\n", "| layers, width, heads (key/value heads) | ",
      s.layers, ", ", s.hidden, ", ", s.heads, " (", s.kv_heads, ") |\n",
      "| SwiGLU width | ", s.ffn, " |\n", "| vocabulary | ", s.vocab,
      " (BPE, byte fallback) |\n", "| context trained | ", s.max_positions,
      " tokens |\n\n", "## Training\n\n", "| | |\n|---|---|\n", "| seed | ",
      o.seed, " |\n", "| corpus | `", o.train_corpus, "`, XXH3-128 ",
      r.corpus_hash, ", ", train_tokens, " tokens |\n",
      "| steps x blocks x tokens | ", o.steps, " x ", o.batch_blocks, " x ",
      s.max_positions, " (", r.tokens_seen, " tokens seen) |\n",
      "| optimizer | AdamW, lr ", o.learning_rate, " -> ", o.min_learning_rate,
      " (", o.warmup_steps, " warm-up steps, cosine), betas ", o.beta1, "/",
      o.beta2, ", weight decay ", o.weight_decay, ", clip ", o.grad_clip_norm,
      " |\n", "| compute | ",
      o.compute_dtype == torch::kBFloat16 ? "bf16" : "f32", ", ",
      torch::get_num_threads(), " threads |\n", "| training time | ",
      Fixed(r.seconds / 60.0, 1), " min |\n\n", "## Held-out results\n\n",
      "On `", o.valid_corpus, "` (", valid_tokens, " tokens):\n\n",
      "| | loss (nats/token) | perplexity |\n|---|---|---|\n",
      "| this model | ", Fixed(r.valid_loss, 4), " | ",
      Fixed(r.valid_perplexity, 2), " |\n", "| unigram baseline (add-one) | ",
      Fixed(std::log(r.unigram_perplexity), 4), " | ",
      Fixed(r.unigram_perplexity, 2), " |\n\n",
      "Perplexity recomputed by the serving forward pass on the written "
      "files: ",
      Fixed(r.valid_perplexity_core, 2),
      ". Training loss at the "
      "end: ",
      Fixed(r.train_loss, 4), ".\n\n",
      "The result is bit-for-bit the same when the command runs again with "
      "the same number of threads; another thread count changes the order of "
      "floating-point sums and so the last digits.\n");
  return card;
}

}  // namespace

absl::Status ValidatePretrainOptions(const PretrainOptions& o) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (o.train_corpus.empty()) return bad("--corpus is required");
  if (o.valid_corpus.empty()) return bad("--valid-corpus is required");
  if (o.out_dir.empty()) return bad("--out is required");
  const fs::path out = fs::absolute(o.out_dir).lexically_normal();
  const fs::path work = fs::absolute(WorkDir(o)).lexically_normal();
  const fs::path inside = work.lexically_relative(out);
  if (!inside.empty() && *inside.begin() != "..") {
    return bad("--work-dir ", WorkDir(o), " must not lie inside --out ",
               o.out_dir, ", which is replaced at the end");
  }
  RETURN_IF_ERROR(ValidateShape(o.shape));
  if (o.shape.vocab < 260) {
    return bad("--vocab ", o.shape.vocab,
               " is too small: the tokenizer needs 256 byte pieces and 3 "
               "specials");
  }
  RETURN_IF_ERROR(ValidateTrainingSchedule({o.steps, o.learning_rate,
                                            o.min_learning_rate, o.warmup_steps,
                                            o.weight_decay, o.grad_clip_norm}));
  if (o.batch_blocks <= 0) {
    return bad("--batch must be positive, got ", o.batch_blocks);
  }
  if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1)) {
    return bad("AdamW betas ", o.beta1, ", ", o.beta2, " must lie in [0, 1)");
  }
  if (o.checkpoint_every_steps <= 0) {
    return bad("--checkpoint-every must be positive, got ",
               o.checkpoint_every_steps);
  }
  if (o.eval_every_steps < 0) {
    return bad("--eval-every must not be negative, got ", o.eval_every_steps);
  }
  if (o.compute_dtype != torch::kFloat32 &&
      o.compute_dtype != torch::kBFloat16) {
    return bad("--dtype must be f32 or bf16");
  }
  return absl::OkStatus();
}

namespace {

// Corpora, tokenizer and token blocks of one run.
struct RunData {
  Corpus train, valid;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::vector<int32_t> train_ids, valid_ids;
  torch::Tensor train_blocks, valid_blocks;  // [N, T + 1] int64
  nlohmann::json settings;                   // see RunSettings
};

// Reads the corpora, claims the work directory, trains or reuses the
// tokenizer and cuts the token streams into blocks.
absl::StatusOr<RunData> PrepareRun(const PretrainOptions& o) {
  RunData data;
  ASSIGN_OR_RETURN(data.train, ReadCorpus(o.train_corpus));
  ASSIGN_OR_RETURN(data.valid, ReadCorpus(o.valid_corpus));
  // Fail on an unusable output path now, not after hours of training.
  {
    ASSIGN_OR_RETURN(StagedDirectory probe,
                     StagedDirectory::Create(o.out_dir, o.force));
  }
  const std::string work = WorkDir(o);
  data.settings = RunSettings(o, data.train, data.valid);
  RETURN_IF_ERROR(ClaimWorkDir(work, data.settings, o.force));
  RETURN_IF_ERROR(EnsureTokenizer(work, data.train, o.shape.vocab));
  ASSIGN_OR_RETURN(data.tokenizer,
                   LoadTokenizerFile(absl::StrCat(work, "/", kTokenizerFile)));
  if (data.tokenizer->vocab_size() != o.shape.vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the tokenizer trained to ", data.tokenizer->vocab_size(),
        " pieces, not ", o.shape.vocab,
        ": the corpus is too small for this vocabulary; lower --vocab"));
  }
  ASSIGN_OR_RETURN(data.train_ids, TokenizeCorpus(data.train, *data.tokenizer));
  ASSIGN_OR_RETURN(data.valid_ids, TokenizeCorpus(data.valid, *data.tokenizer));
  const int64_t t = o.shape.max_positions;
  ASSIGN_OR_RETURN(data.train_blocks, PackBlocks(data.train_ids, t));
  ASSIGN_OR_RETURN(data.valid_blocks, PackBlocks(data.valid_ids, t));
  LOG_INFO << "corpus: " << data.train_ids.size() << " training tokens ("
           << data.train_blocks.size(0) << " blocks of " << t << "), "
           << data.valid_ids.size() << " validation tokens";
  return data;
}

// AdamW with weight decay on the matrices and none on the norm weights.
std::unique_ptr<torch::optim::AdamW> MakeOptimizer(
    const PretrainOptions& o, const TrainableLlama& model) {
  std::vector<torch::Tensor> decayed, plain;
  for (const auto& [name, p] : model->StateDict()) {
    (p.dim() >= 2 ? decayed : plain).push_back(p);
  }
  auto group_options = [&](double decay) {
    auto opts = std::make_unique<torch::optim::AdamWOptions>(o.learning_rate);
    opts->betas({o.beta1, o.beta2}).weight_decay(decay).eps(1e-8);
    return opts;
  };
  return std::make_unique<torch::optim::AdamW>(
      std::vector<torch::optim::OptimizerParamGroup>{
          torch::optim::OptimizerParamGroup(decayed,
                                            group_options(o.weight_decay)),
          torch::optim::OptimizerParamGroup(plain, group_options(0.0))});
}

// Runs the steps from state.step to o.steps, checkpointing on the way.
absl::Status TrainSteps(const PretrainOptions& o, const RunData& data,
                        TrainableLlama& model, torch::optim::AdamW& optimizer,
                        TrainState& state) {
  const std::string work = WorkDir(o);
  const int64_t t = o.shape.max_positions;
  BlockOrder order(data.train_blocks.size(0), o.batch_blocks, o.seed);
  ProgressLine progress(stderr, state.step, o.steps);
  double loss_sum = 0;
  int64_t loss_count = 0;
  const auto run_start = std::chrono::steady_clock::now();
  const double seconds_before = state.seconds;
  while (state.step < o.steps) {
    const double lr = LearningRate(o, state.step);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    torch::Tensor batch =
        data.train_blocks.index_select(0, order.Step(state.step));
    torch::Tensor logits =
        model->Forward(batch.narrow(1, 0, t), o.compute_dtype);  // [B, T, V]
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}),
        batch.narrow(1, 1, t).reshape({-1}));
    optimizer.zero_grad();
    loss.backward();
    if (o.grad_clip_norm > 0) {
      torch::nn::utils::clip_grad_norm_(model->parameters(), o.grad_clip_norm);
    }
    optimizer.step();
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      progress.Finish();
      return absl::InternalError(absl::StrCat(
          "the training loss became ", loss_value, " at step ", state.step + 1,
          "; lower --lr (the last checkpoint is kept in ", work, ")"));
    }
    loss_sum += loss_value;
    ++loss_count;
    ++state.step;
    state.tokens_seen += batch.size(0) * t;
    state.recent_loss = loss_sum / loss_count;
    progress.Update(
        state.step, batch.size(0) * t,
        absl::StrFormat("loss %.4f  lr %.2e", state.recent_loss, lr));
    const bool at_end = state.step == o.steps;
    if (o.eval_every_steps > 0 && state.step % o.eval_every_steps == 0 &&
        !at_end) {
      progress.Finish();
      LOG_INFO << "step " << state.step << ": validation loss "
               << MeanLoss(model, data.valid_blocks, o.batch_blocks,
                           o.compute_dtype);
    }
    if (state.step % o.checkpoint_every_steps == 0 || at_end) {
      state.seconds =
          seconds_before + std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - run_start)
                               .count();
      state.threads = torch::get_num_threads();
      RETURN_IF_ERROR(SaveCheckpoint(work, model, optimizer, state));
      loss_sum = 0;
      loss_count = 0;
    }
  }
  progress.Finish();
  return absl::OkStatus();
}

// Writes the model directory (see Pretrain), checks it through the core and
// moves it into place.
absl::Status ExportModel(const PretrainOptions& o, const RunData& data,
                         TrainableLlama& model, PretrainResult& result) {
  const LlamaShape& shape = model->shape();
  ASSIGN_OR_RETURN(StagedDirectory out,
                   StagedDirectory::Create(o.out_dir, o.force));
  const std::string dir = out.path();
  RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json",
                                  LlamaConfigJson(shape).dump(2) + "\n"));
  nlohmann::json generation = {{"bos_token_id", shape.bos_id},
                               {"eos_token_id", shape.eos_id}};
  RETURN_IF_ERROR(
      WriteFileAtomic(dir + "/generation_config.json", generation.dump(2)));
  RETURN_IF_ERROR(WriteSafetensors(
      dir + "/model.safetensors", model->StateDict(),
      {{"format", "pt"}, {"optrec_corpus_hash", data.train.hash}}));
  ASSIGN_OR_RETURN(std::string sp_model,
                   ReadFile(absl::StrCat(WorkDir(o), "/", kTokenizerFile)));
  RETURN_IF_ERROR(WriteFileAtomic(dir + "/tokenizer.model", sp_model));

  ASSIGN_OR_RETURN(double core_loss,
                   CoreMeanLoss(dir, data.valid_blocks, o.batch_blocks, shape));
  result.valid_perplexity_core = std::exp(core_loss);
  if (std::abs(core_loss - result.valid_loss) >
      1e-3 * (1 + result.valid_loss)) {
    return absl::InternalError(absl::StrCat(
        "the written model's validation loss through the core (", core_loss,
        ") differs from the trainer's (", result.valid_loss, ")"));
  }
  nlohmann::json record;
  record["settings"] = data.settings;
  record["command"] = o.command_line;
  record["threads"] = torch::get_num_threads();
  record["result"] = {{"steps", result.steps},
                      {"tokens_seen", result.tokens_seen},
                      {"parameters", result.parameters},
                      {"train_loss", result.train_loss},
                      {"valid_loss", result.valid_loss},
                      {"valid_perplexity", result.valid_perplexity},
                      {"valid_perplexity_core", result.valid_perplexity_core},
                      {"unigram_perplexity", result.unigram_perplexity},
                      {"train_tokens", data.train_ids.size()},
                      {"valid_tokens", data.valid_ids.size()},
                      {"seconds", result.seconds}};
  RETURN_IF_ERROR(
      WriteFileAtomic(dir + "/training.json", record.dump(2) + "\n"));
  RETURN_IF_ERROR(WriteFileAtomic(
      dir + "/README.md",
      ModelCard(o, result, static_cast<int64_t>(data.train_ids.size()),
                static_cast<int64_t>(data.valid_ids.size()))));
  return out.Commit();
}

}  // namespace

absl::StatusOr<PretrainResult> Pretrain(const PretrainOptions& o) {
  RETURN_IF_ERROR(ValidatePretrainOptions(o));
  ASSIGN_OR_RETURN(RunData data, PrepareRun(o));

  torch::manual_seed(o.seed);
  LlamaShape shape = o.shape;
  shape.bos_id = data.tokenizer->special().bos_id;
  shape.eos_id = data.tokenizer->special().eos_id;
  TrainableLlama model(shape);
  std::unique_ptr<torch::optim::AdamW> optimizer = MakeOptimizer(o, model);
  ASSIGN_OR_RETURN(TrainState state,
                   LoadCheckpoint(WorkDir(o), o.steps, model, *optimizer));
  if (state.step > 0) {
    LOG_INFO << "resuming from the checkpoint at step " << state.step << " of "
             << o.steps;
  }
  LOG_INFO << "model: " << model->parameter_count() << " parameters, "
           << torch::get_num_threads() << " threads";
  RETURN_IF_ERROR(TrainSteps(o, data, model, *optimizer, state));

  PretrainResult result;
  result.steps = state.step;
  result.tokens_seen = state.tokens_seen;
  result.parameters = model->parameter_count();
  result.train_loss = state.recent_loss;
  result.seconds = state.seconds;
  result.corpus_hash = data.train.hash;
  // Judged in f32 whatever the training compute, as the core serves it.
  result.valid_loss =
      MeanLoss(model, data.valid_blocks, o.batch_blocks, torch::kFloat32);
  result.valid_perplexity = std::exp(result.valid_loss);
  result.unigram_perplexity =
      UnigramPerplexity(data.train_ids, data.valid_blocks, o.shape.vocab);
  RETURN_IF_ERROR(ExportModel(o, data, model, result));
  return result;
}

}  // namespace optrec
