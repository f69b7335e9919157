// Pretraining: the trainable model against the core's forward, the corpus
// reader and packer, and whole short runs (loss falls, the export reloads
// exactly, a killed run resumes to the same bits, bad input fails cleanly).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>

#include "core/checkpoint/safetensors.h"
#include "core/model/transformer.h"
#include "core/util/files.h"
#include "tests/cli_path.h"
#include "tests/testlib/tiny_models.h"
#include "tuning/pretrain/corpus.h"
#include "tuning/pretrain/trainable_llama.h"
#include "tuning/pretrain/trainer.h"
#include "tuning/world/generate.h"
#include "tuning/world/world.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A small shop-like corpus with learnable structure: each document repeats
// a shopper's favourite items and colour.
void WriteToyCorpus(const std::string& path, int documents, uint32_t seed) {
  const char* items[] = {"running shoes", "trail jacket", "coffee grinder",
                         "desk lamp",     "yoga mat",     "headphones"};
  const char* colours[] = {"red", "blue", "green", "black"};
  std::mt19937 rng(seed);  // any fixed sequence will do for test data
  std::ofstream out(path);
  for (int d = 0; d < documents; ++d) {
    const char* favourite = items[rng() % 6];
    const char* colour = colours[rng() % 4];
    std::string text = "Shopper from the North";
    for (int e = 0; e < 8; ++e) {
      const char* item = rng() % 4 == 0 ? items[rng() % 6] : favourite;
      text += std::string(". Clicked: ") + item + ", " + colour;
    }
    out << nlohmann::json({{"text", text + "."}}).dump() << "\n";
  }
}

struct ToyRun {
  std::string dir;
  PretrainOptions options;
};

ToyRun MakeToyRun(int64_t steps) {
  ToyRun run;
  run.dir = MakeTempDir("pretrain");
  WriteToyCorpus(run.dir + "/train.jsonl", 400, 1);
  WriteToyCorpus(run.dir + "/valid.jsonl", 40, 2);
  PretrainOptions& o = run.options;
  o.train_corpus = run.dir + "/train.jsonl";
  o.valid_corpus = run.dir + "/valid.jsonl";
  o.out_dir = run.dir + "/model";
  o.shape.vocab = 300;
  o.shape.hidden = 32;
  o.shape.layers = 2;
  o.shape.heads = 2;
  o.shape.kv_heads = 1;
  o.shape.ffn = 64;
  o.shape.max_positions = 64;
  o.steps = steps;
  o.batch_blocks = 8;
  o.learning_rate = 1e-2;
  o.min_learning_rate = 1e-3;
  o.warmup_steps = 5;
  o.checkpoint_every_steps = 5;
  o.eval_every_steps = 0;
  o.command_line = "pretrain_test";
  return run;
}

int RunCli(const std::string& args) {
  const std::string command =
      std::string(OPTREC_CLI_PATH) + " " + args + " > /dev/null 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string FileBytes(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFile(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

// The newest checkpoint folder of a work directory, from its "latest" file.
std::string LatestCheckpoint(const std::string& work) {
  std::string name = FileBytes(work + "/latest");
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return work + "/" + name;
}

TEST(TrainableLlamaTest, ExportedWeightsGiveTheCoreTheSameLogits) {
  LlamaShape shape;
  shape.vocab = 50;
  shape.hidden = 32;
  shape.layers = 2;
  shape.heads = 4;
  shape.kv_heads = 2;
  shape.ffn = 48;
  shape.max_positions = 16;
  torch::manual_seed(3);
  TrainableLlama model(shape);
  // Norm weights away from 1, so a missed norm would show.
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : model->StateDict()) {
      if (p.dim() == 1) p.uniform_(0.5, 1.5);
    }
  }
  const std::string dir = MakeTempDir("trainable");
  ASSERT_TRUE(
      WriteFileAtomic(dir + "/config.json", LlamaConfigJson(shape).dump())
          .ok());
  ASSERT_TRUE(
      WriteSafetensors(dir + "/model.safetensors", model->StateDict()).ok());
  auto core = TransformerLM::Load(dir, {});
  ASSERT_TRUE(core.ok()) << core.status();

  torch::Tensor ids = torch::randint(0, shape.vocab, {2, 12}, torch::kInt64);
  torch::Tensor trained = model->Forward(ids).detach();  // [2, 12, V]
  std::vector<RowInput> rows(2);
  for (int r = 0; r < 2; ++r) {
    for (int t = 0; t < 12; ++t) {
      rows[r].ids.push_back(static_cast<int32_t>(ids[r][t].item<int64_t>()));
    }
  }
  auto out = (*core)->Forward(rows);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT((out->logits - trained).abs().max().item<double>(), 1e-4);
}

TEST(TrainableLlamaTest, GradientsReachEveryParameter) {
  LlamaShape shape;
  shape.vocab = 40;
  shape.hidden = 16;
  shape.layers = 2;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.ffn = 24;
  TrainableLlama model(shape);
  torch::Tensor ids = torch::randint(0, shape.vocab, {2, 8}, torch::kInt64);
  model->Forward(ids).logsumexp(-1).sum().backward();
  for (const auto& [name, p] : model->StateDict()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0) << name;
  }
}

TEST(TrainableLlamaTest, LoadStateDictRejectsMissingAndMisshapenTensors) {
  LlamaShape shape;
  shape.vocab = 40;
  shape.hidden = 16;
  shape.layers = 1;
  shape.heads = 2;
  shape.kv_heads = 2;
  shape.ffn = 24;
  TrainableLlama model(shape);
  auto state = model->StateDict();
  auto missing = state;
  missing.pop_back();
  EXPECT_THAT(std::string(model->LoadStateDict(missing).message()),
              HasSubstr("missing tensor"));
  auto wrong = state;
  wrong[0].second = torch::zeros({3});
  EXPECT_THAT(std::string(model->LoadStateDict(wrong).message()),
              HasSubstr(wrong[0].first));
}

TEST(CorpusTest, PackBlocksOverlapsByOneToken) {
  std::vector<int32_t> stream = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto blocks = PackBlocks(stream, 3);
  ASSERT_TRUE(blocks.ok());
  ASSERT_EQ(blocks->size(0), 3);  // (10 - 1) / 3
  EXPECT_TRUE(torch::equal(
      *blocks,
      torch::tensor({0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9}, torch::kInt64)
          .view({3, 4})));
  EXPECT_FALSE(PackBlocks({1, 2}, 3).ok());
}

TEST(CorpusTest, UnigramPerplexityMatchesAHandComputation) {
  // Counts with add-one over vocabulary 3: ids 0,0,1 -> (3, 2, 1) / 6.
  std::vector<int32_t> train = {0, 0, 1};
  torch::Tensor blocks = torch::tensor({2, 0, 1}, torch::kInt64).view({1, 3});
  const double expected =
      std::exp(-(std::log(3.0 / 6) + std::log(2.0 / 6)) / 2);
  EXPECT_NEAR(UnigramPerplexity(train, blocks, 3), expected, 1e-12);
}

TEST(CorpusTest, CorruptAndEmptyCorporaNameTheFileAndLine) {
  const std::string dir = MakeTempDir("corpus");
  std::ofstream(dir + "/bad.jsonl") << "{\"text\": \"ok\"}\n\n{\"text\": 3}\n";
  auto bad = ReadCorpus(dir + "/bad.jsonl");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("bad.jsonl:3"));
  std::ofstream(dir + "/broken.jsonl") << "{\"text\": \"ok\"}\n{\"text\n";
  EXPECT_THAT(std::string(ReadCorpus(dir + "/broken.jsonl").status().message()),
              HasSubstr("broken.jsonl:2: not a JSON object"));
  std::ofstream(dir + "/empty.jsonl") << "\n  \n";
  EXPECT_THAT(std::string(ReadCorpus(dir + "/empty.jsonl").status().message()),
              HasSubstr("has no documents"));
  EXPECT_EQ(ReadCorpus(dir + "/absent.jsonl").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(PretrainTest, ShortRunLowersTheLossAndExportsWhatItTrained) {
  ToyRun run = MakeToyRun(40);
  auto result = Pretrain(run.options);
  ASSERT_TRUE(result.ok()) << result.status();
  // An untrained model predicts about uniformly: ln 300 = 5.7 nats.
  EXPECT_LT(result->valid_loss, std::log(300.0) - 2.5);
  EXPECT_LT(result->valid_perplexity, result->unigram_perplexity / 3);
  EXPECT_NEAR(result->valid_perplexity_core, result->valid_perplexity,
              1e-3 * result->valid_perplexity);
  EXPECT_EQ(result->tokens_seen, 40 * 8 * 64);

  // The exported weights are the last checkpoint's, bit for bit, and the
  // core loads them unchanged.
  const std::string out = run.options.out_dir;
  auto exported = SafetensorsFile::Open(out + "/model.safetensors");
  auto checkpoint = SafetensorsFile::Open(
      LatestCheckpoint(run.options.out_dir + ".work") + "/model.safetensors");
  ASSERT_TRUE(exported.ok()) << exported.status();
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ASSERT_EQ((*exported)->names(), (*checkpoint)->names());
  for (const std::string& name : (*exported)->names()) {
    auto a = ToTorch(*exported, *(*exported)->Find(name), torch::kFloat32);
    auto b = ToTorch(*checkpoint, *(*checkpoint)->Find(name), torch::kFloat32);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(torch::equal(*a, *b)) << name;
  }
  LoadOptions load;
  auto core = TransformerLM::Load(out, load);
  ASSERT_TRUE(core.ok()) << core.status();
  ASSERT_NE((*core)->tokenizer(), nullptr);
  EXPECT_EQ((*core)->tokenizer()->vocab_size(), 300);
  EXPECT_EQ((*core)->parameter_count(), result->parameters);
  for (const char* file : {"config.json", "generation_config.json",
                           "tokenizer.model", "training.json", "README.md"}) {
    EXPECT_TRUE(fs::exists(out + "/" + file)) << file;
  }
  EXPECT_THAT(FileBytes(out + "/README.md"), HasSubstr(result->corpus_hash));
}

TEST(PretrainTest, Bf16ComputeTrainsAndIsJudgedInF32) {
  ToyRun run = MakeToyRun(20);
  run.options.compute_dtype = torch::kBFloat16;
  auto result = Pretrain(run.options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(result->valid_loss, std::log(300.0) - 1.5);
  // The reported figure is the f32 one the core reproduces.
  EXPECT_NEAR(result->valid_perplexity_core, result->valid_perplexity,
              1e-3 * result->valid_perplexity);
}

TEST(PretrainTest, KilledRunResumesToTheSameWeights) {
  ToyRun run = MakeToyRun(200);
  const PretrainOptions& o = run.options;
  const std::string flags = absl::StrCat(
      "pretrain --corpus ", o.train_corpus, " --valid-corpus ", o.valid_corpus,
      " --vocab 300 --hidden 32 --layers 2 --heads 2",
      " --kv-heads 1 --ffn 64 --context 64 --steps 200 --batch 8 --lr 0.01",
      " --min-lr 0.001 --warmup 5 --checkpoint-every 5 --eval-every 0");
  ASSERT_EQ(RunCli(flags + " --out " + run.dir + "/straight"), 0);

  // The same run, killed once its first checkpoints are written.
  const std::string killed = run.dir + "/killed";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string command = std::string(OPTREC_CLI_PATH) + " " + flags +
                                " --out " + killed + " > /dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::string latest = killed + ".work/latest";
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(latest) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run ended before it was killed";
  ASSERT_FALSE(fs::exists(killed)) << "a killed run left an output directory";
  auto saved = nlohmann::json::parse(
      FileBytes(LatestCheckpoint(killed + ".work") + "/state.json"));
  ASSERT_LT(saved["step"].get<int>(), 200);

  ASSERT_EQ(RunCli(flags + " --out " + killed), 0);
  EXPECT_EQ(FileBytes(killed + "/model.safetensors"),
            FileBytes(run.dir + "/straight/model.safetensors"));
}

TEST(PretrainTest, BadInputFailsWithoutLeavingAnOutputDirectory) {
  ToyRun run = MakeToyRun(10);
  PretrainOptions o = run.options;

  std::ofstream(run.dir + "/corrupt.jsonl") << "{\"text\": \"fine\"}\nnope\n";
  o.train_corpus = run.dir + "/corrupt.jsonl";
  auto corrupt = Pretrain(o);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(corrupt.status().message()),
              HasSubstr("corrupt.jsonl:2"));

  std::ofstream(run.dir + "/empty.jsonl") << "";
  o.train_corpus = run.dir + "/empty.jsonl";
  EXPECT_THAT(std::string(Pretrain(o).status().message()),
              HasSubstr("has no documents"));
  EXPECT_FALSE(fs::exists(o.out_dir));

  o = run.options;
  o.out_dir = run.dir + "/no/such/folder/model";
  auto unwritable = Pretrain(o);
  EXPECT_FALSE(unwritable.ok());
  EXPECT_THAT(std::string(unwritable.status().message()),
              HasSubstr(run.dir + "/no/such/folder"));
  EXPECT_FALSE(fs::exists(o.out_dir));

  o = run.options;
  o.work_dir = o.out_dir + "/work";
  EXPECT_THAT(std::string(Pretrain(o).status().message()),
              HasSubstr("must not lie inside --out"));

  o = run.options;
  o.shape.heads = 3;
  EXPECT_THAT(std::string(Pretrain(o).status().message()), HasSubstr("heads"));
}

TEST(PretrainTest, WorkDirectoryOfAnotherRunIsRefusedUnlessForced) {
  ToyRun run = MakeToyRun(10);
  ASSERT_TRUE(Pretrain(run.options).ok());
  PretrainOptions again = run.options;
  again.seed = 2;
  again.out_dir = run.dir + "/second";
  again.work_dir = run.options.out_dir + ".work";
  auto refused = Pretrain(again);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("seed"));
  again.force = true;
  EXPECT_TRUE(Pretrain(again).ok());

  // The existing output directory is not overwritten without force.
  PretrainOptions same = run.options;
  auto exists = Pretrain(same);
  EXPECT_EQ(exists.status().code(), absl::StatusCode::kAlreadyExists);
}

// The committed default model (models/default): it loads, its card's
// figures are what it really does on the default world's held-out text, and
// it beats the unigram baseline by far. The world is regenerated here from
// its seed; a different training corpus means the generator changed and
// the model must be rebuilt.
TEST(DefaultModelTest, BeatsTheUnigramBaselineOnTheWorldsHeldOutText) {
  const std::string dir = std::string(OPTREC_SOURCE_DIR) + "/models/default";
  auto record = nlohmann::json::parse(FileBytes(dir + "/training.json"));
  const nlohmann::json& result = record["result"];
  const nlohmann::json& settings = record["settings"];

  const std::string world = MakeTempDir("default-world") + "/world";
  ASSERT_TRUE(GenerateWorld(SmallWorldConfig(1), world, {}).ok());
  auto train = ReadCorpus(world + "/corpus/train.jsonl");
  auto valid = ReadCorpus(world + "/corpus/valid.jsonl");
  ASSERT_TRUE(train.ok() && valid.ok());
  ASSERT_EQ(train->hash, settings["train_corpus_hash"].get<std::string>())
      << "the world generator's corpus changed: rebuild models/default with "
         "scripts/build-default-model.sh";

  auto model = TransformerLM::Load(dir, {});
  ASSERT_TRUE(model.ok()) << model.status();
  const Tokenizer* tokenizer = (*model)->tokenizer();
  ASSERT_NE(tokenizer, nullptr);
  auto train_ids = TokenizeCorpus(*train, *tokenizer);
  auto valid_ids = TokenizeCorpus(*valid, *tokenizer);
  ASSERT_TRUE(train_ids.ok() && valid_ids.ok());
  const int64_t context = (*model)->config().max_positions;
  auto blocks = PackBlocks(*valid_ids, context);
  ASSERT_TRUE(blocks.ok());

  // Mean next-token loss through the serving forward pass.
  double nll = 0;
  int64_t count = 0;
  for (int64_t start = 0; start < blocks->size(0); start += 16) {
    const int64_t n = std::min<int64_t>(16, blocks->size(0) - start);
    std::vector<RowInput> rows(n);
    for (int64_t r = 0; r < n; ++r) {
      torch::Tensor ids = (*blocks)[start + r].to(torch::kInt32).contiguous();
      rows[r].ids.assign(ids.data_ptr<int32_t>(),
                         ids.data_ptr<int32_t>() + context);
    }
    auto out = (*model)->Forward(rows);
    ASSERT_TRUE(out.ok()) << out.status();
    torch::Tensor targets = blocks->narrow(0, start, n).narrow(1, 1, context);
    torch::Tensor logp = out->logits.log_softmax(-1);  // [n, T, V]
    nll -= logp.narrow(1, 0, context)
               .gather(2, targets.unsqueeze(2))
               .sum()
               .item<double>();
    count += targets.numel();
  }
  const double perplexity = std::exp(nll / count);
  const double unigram =
      UnigramPerplexity(*train_ids, *blocks, (*model)->config().vocab_size);

  EXPECT_NEAR(perplexity, result["valid_perplexity"].get<double>(),
              0.01 * perplexity);
  EXPECT_NEAR(unigram, result["unigram_perplexity"].get<double>(),
              1e-6 * unigram);
  EXPECT_LT(perplexity * 20, unigram)
      << "perplexity " << perplexity << ", unigram " << unigram;
}

}  // namespace
}  // namespace optrec
