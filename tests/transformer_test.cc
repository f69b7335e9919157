// The forward-pass contract: agreement with a plain-loop reference for each
// family, padding and per-row soft prompts, KV-cache decoding, masks,
// gradients to soft prompts only, checkpoint variants and bad input.
#include "core/model/transformer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/model/generation.h"
#include "core/model/scoring.h"
#include "tests/testlib/reference_forward.h"
#include "tests/testlib/tiny_models.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const TransformerLM> LoadOrDie(const std::string& dir) {
  auto model = TransformerLM::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

std::shared_ptr<const TransformerLM> TinyModel(const TinyModelSpec& spec,
                                               std::string* dir_out = nullptr) {
  std::string dir = MakeTempDir(spec.model_type);
  absl::Status written = WriteTinyModel(dir, spec);
  EXPECT_TRUE(written.ok()) << written;
  if (dir_out) *dir_out = dir;
  return LoadOrDie(dir);
}

// Logits [T, V] of one row run alone.
// An undefined tensor (and a test failure) when Forward fails.
torch::Tensor RowLogits(const TransformerLM& model, const RowInput& row) {
  auto out = model.Forward({row});
  if (!out.ok()) {
    ADD_FAILURE() << out.status();
    return torch::Tensor();
  }
  return out->logits[0];
}

const std::vector<int32_t> kIds = {1, 5, 17, 42, 8, 96, 3, 60, 11};

// ---------------------------------------------------------------------------
// Against the plain-loop reference, one case per supported variant.

struct FamilyCase {
  std::string name;
  TinyModelSpec spec;
};

class ReferenceTest : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(ReferenceTest, ForwardMatchesPlainLoopReference) {
  const TinyModelSpec& spec = GetParam().spec;
  std::string dir;
  auto model = TinyModel(spec, &dir);
  ASSERT_NE(model, nullptr);
  auto store = WeightStore::OpenDir(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  ReferenceWeights weights = ReadAllWeights(**store);
  std::vector<int> ids(kIds.begin(), kIds.end());
  torch::Tensor want =
      ToTensor(ReferenceForward(TinyReferenceConfig(spec), weights, ids));

  RowInput row;
  row.ids = kIds;
  torch::Tensor got = RowLogits(*model, row);
  // f32 against f64 over a few layers of width 32: 1e-4 absolute.
  EXPECT_LT(MaxAbsDiff(got, want), 1e-4);
}

TEST_P(ReferenceTest, SoftPromptMatchesReferencePrefix) {
  const TinyModelSpec& spec = GetParam().spec;
  std::string dir;
  auto model = TinyModel(spec, &dir);
  ASSERT_NE(model, nullptr);
  auto store = WeightStore::OpenDir(dir);
  ASSERT_TRUE(store.ok());
  torch::manual_seed(7);
  torch::Tensor prompt = torch::randn({3, spec.hidden}, torch::kFloat64);
  std::vector<std::vector<double>> prefix;
  for (int64_t p = 0; p < 3; ++p) {
    prefix.emplace_back(prompt[p].data_ptr<double>(),
                        prompt[p].data_ptr<double>() + spec.hidden);
  }
  std::vector<int> ids(kIds.begin(), kIds.begin() + 5);
  torch::Tensor want = ToTensor(ReferenceForward(
      TinyReferenceConfig(spec), ReadAllWeights(**store), ids, prefix));
  RowInput row;
  row.ids.assign(kIds.begin(), kIds.begin() + 5);
  row.prompt = prompt.to(torch::kFloat32);
  EXPECT_LT(MaxAbsDiff(RowLogits(*model, row), want), 1e-4);
}

TinyModelSpec Spec(const std::string& type, bool tied = false) {
  TinyModelSpec s;
  s.model_type = type;
  s.tied = tied;
  if (type == "gpt2") {
    s.kv_heads = s.heads;
    s.ffn = 4 * s.hidden;
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Families, ReferenceTest,
    ::testing::Values(FamilyCase{"llama_gqa", Spec("llama")},
                      FamilyCase{"llama_tied", Spec("llama", /*tied=*/true)},
                      FamilyCase{"mistral", Spec("mistral")},
                      FamilyCase{"qwen2_biases", Spec("qwen2", /*tied=*/true)},
                      FamilyCase{"qwen3_qk_norm", Spec("qwen3")},
                      FamilyCase{"gpt2", Spec("gpt2")},
                      FamilyCase{"gpt2_prefixed",
                                 [] {
                                   TinyModelSpec s = Spec("gpt2");
                                   s.gpt2_prefix = true;
                                   return s;
                                 }()}),
    [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------
// Batching, soft prompts, masks.

class BothFamiliesTest : public ::testing::TestWithParam<std::string> {};

INSTANTIATE_TEST_SUITE_P(Families, BothFamiliesTest,
                         ::testing::Values("llama", "gpt2"));

TEST_P(BothFamiliesTest, PaddedBatchWithMixedPromptsEqualsRowsAlone) {
  TinyModelSpec spec = Spec(GetParam());
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  torch::manual_seed(3);
  std::vector<RowInput> rows(4);
  rows[0].ids = {1, 4, 9};
  rows[1].ids = {1, 7, 7, 7, 20, 30, 40};
  rows[1].prompt = torch::randn({2, spec.hidden});
  rows[2].ids = {};
  rows[2].prompt = torch::randn({5, spec.hidden});
  rows[3].ids = {1, 2};
  rows[3].prompt = torch::randn({4, spec.hidden});

  auto batch = model->Forward(rows);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->logits.size(1), 9);  // longest row: 2 + 7
  for (size_t r = 0; r < rows.size(); ++r) {
    torch::Tensor alone = RowLogits(*model, rows[r]);
    const int64_t n = batch->lengths[r];
    ASSERT_EQ(alone.size(0), n);
    EXPECT_LT(MaxAbsDiff(batch->logits[r].narrow(0, 0, n), alone), 1e-5)
        << "row " << r;
    EXPECT_EQ(batch->valid[r].sum().item<int64_t>(), n);
  }
}

TEST_P(BothFamiliesTest, LastLogitsAreTheLastValidPositions) {
  auto model = TinyModel(Spec(GetParam()));
  ASSERT_NE(model, nullptr);
  std::vector<RowInput> rows(2);
  rows[0].ids = {1, 4, 9};
  rows[1].ids = {1, 7, 7, 7, 20};
  ForwardOptions last;
  last.logits = ForwardOptions::Logits::kLast;
  auto all = model->Forward(rows);
  auto tail = model->Forward(rows, nullptr, last);
  ASSERT_TRUE(all.ok() && tail.ok());
  EXPECT_LT(MaxAbsDiff(tail->logits[0], all->logits[0][2]), 1e-6);
  EXPECT_LT(MaxAbsDiff(tail->logits[1], all->logits[1][4]), 1e-6);
}

TEST_P(BothFamiliesTest, PrefixLmSeesTheWholePrefixAndStaysCausalAfter) {
  auto model = TinyModel(Spec(GetParam()));
  ASSERT_NE(model, nullptr);
  RowInput a, b;
  a.ids = {1, 5, 6, 7, 8, 9};
  b.ids = {1, 5, 6, 50, 8, 9};  // differs at position 3
  a.bidirectional_prefix = b.bidirectional_prefix = 4;
  torch::Tensor la = RowLogits(*model, a), lb = RowLogits(*model, b);
  // Inside the prefix, position 0 sees position 3.
  EXPECT_GT(MaxAbsDiff(la[0], lb[0]), 1e-4);
  // Causal plain rows: position 0 does not see position 3.
  a.bidirectional_prefix = b.bidirectional_prefix = 0;
  EXPECT_LT(MaxAbsDiff(RowLogits(*model, a)[0], RowLogits(*model, b)[0]), 1e-6);
  // After the prefix, a change at position 5 is not seen by position 4.
  RowInput c = a, d = a;
  c.bidirectional_prefix = d.bidirectional_prefix = 3;
  d.ids[5] = 70;
  EXPECT_LT(MaxAbsDiff(RowLogits(*model, c)[4], RowLogits(*model, d)[4]), 1e-6);
}

TEST(TransformerTest, SlidingWindowLimitsHowFarBackKeysAreSeen) {
  TinyModelSpec windowed = Spec("mistral");
  windowed.sliding_window = 3;
  TinyModelSpec plain = Spec("mistral");
  auto w = TinyModel(windowed), p = TinyModel(plain);
  ASSERT_NE(w, nullptr);
  ASSERT_NE(p, nullptr);
  RowInput row;
  row.ids = kIds;
  torch::Tensor lw = RowLogits(*w, row), lp = RowLogits(*p, row);
  // Positions 0-2 see at most 3 keys either way; later ones differ.
  EXPECT_LT(MaxAbsDiff(lw.narrow(0, 0, 3), lp.narrow(0, 0, 3)), 1e-6);
  EXPECT_GT(MaxAbsDiff(lw[8], lp[8]), 1e-4);
}

// ---------------------------------------------------------------------------
// KV cache.

TEST_P(BothFamiliesTest, IncrementalDecodingMatchesFullRecompute) {
  auto model = TinyModel(Spec(GetParam()));
  ASSERT_NE(model, nullptr);
  torch::InferenceMode inference;
  RowInput full;
  full.ids = kIds;
  torch::Tensor want = RowLogits(*model, full);

  KVCache cache = model->NewCache(1);
  RowInput first;
  first.ids.assign(kIds.begin(), kIds.begin() + 4);
  auto out = model->Forward({first}, &cache);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(MaxAbsDiff(out->logits[0], want.narrow(0, 0, 4)), 1e-5);
  for (size_t i = 4; i < kIds.size(); ++i) {
    RowInput step;
    step.ids = {kIds[i]};
    auto next = model->Forward({step}, &cache);
    ASSERT_TRUE(next.ok()) << next.status();
    // Same arithmetic in a different order: 1e-5 absolute.
    EXPECT_LT(MaxAbsDiff(next->logits[0][0], want[i]), 1e-5) << "step " << i;
  }
  EXPECT_EQ(cache.next_position(0), static_cast<int64_t>(kIds.size()));
}

TEST_P(BothFamiliesTest, RowsStartedAtDifferentTimesDecodeLikeFullRecompute) {
  TinyModelSpec spec = Spec(GetParam());
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  torch::InferenceMode inference;
  torch::manual_seed(11);
  const std::vector<int32_t> a = {1, 3, 5, 7, 9, 11, 13, 15};
  const std::vector<int32_t> b = {1, 20, 21, 22, 23, 24};
  torch::Tensor prompt_b = torch::randn({2, spec.hidden});

  // Row a starts with 3 tokens and decodes 2; row b then joins (with a soft
  // prompt) and both decode together; a leaves; b continues alone.
  KVCache cache = model->NewCache(1);
  RowInput a0;
  a0.ids = {a[0], a[1], a[2]};
  ASSERT_TRUE(model->Forward({a0}, &cache).ok());
  for (int i = 3; i < 5; ++i) {
    RowInput s;
    s.ids = {a[i]};
    ASSERT_TRUE(model->Forward({s}, &cache).ok());
  }
  KVCache joined = model->NewCache(1);
  RowInput b0;
  b0.ids = {b[0], b[1], b[2], b[3]};
  b0.prompt = prompt_b;
  ASSERT_TRUE(model->Forward({b0}, &joined).ok());
  ASSERT_TRUE(cache.AppendRows(joined).ok());

  RowInput full_a, full_b;
  full_a.ids = a;
  full_b.ids = b;
  full_b.prompt = prompt_b;
  torch::Tensor want_a = RowLogits(*model, full_a);
  torch::Tensor want_b = RowLogits(*model, full_b);

  for (int i = 0; i < 2; ++i) {
    RowInput sa, sb;
    sa.ids = {a[5 + i]};
    sb.ids = {b[4 + i]};
    auto out = model->Forward({sa, sb}, &cache);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LT(MaxAbsDiff(out->logits[0][0], want_a[5 + i]), 1e-5);
    EXPECT_LT(MaxAbsDiff(out->logits[1][0], want_b[2 + 4 + i]), 1e-5);
  }
  ASSERT_TRUE(cache.SelectRows({1}).ok());
  EXPECT_FALSE(cache.SelectRows({3}).ok());
  cache.Compact();
  EXPECT_EQ(cache.valid_count(0), 2 + 6);
  RowInput more;
  more.ids = {30};
  auto last = model->Forward({more}, &cache);
  ASSERT_TRUE(last.ok());
  RowInput longer = full_b;
  longer.ids.push_back(30);
  EXPECT_LT(MaxAbsDiff(last->logits[0][0], RowLogits(*model, longer)[8]), 1e-5);
}

// ---------------------------------------------------------------------------
// Autograd.

TEST_P(BothFamiliesTest, GradientsReachSoftPromptsAndNoBackboneWeight) {
  TinyModelSpec spec = Spec(GetParam());
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  for (const torch::Tensor& w : model->parameters()) {
    ASSERT_FALSE(w.requires_grad());
  }
  torch::Tensor prompt = torch::randn({3, spec.hidden}).requires_grad_(true);
  RowInput row;
  row.ids = {1, 2, 3};
  row.prompt = prompt;
  RowInput plain;
  plain.ids = {4, 5};
  auto out = model->Forward({row, plain});
  ASSERT_TRUE(out.ok()) << out.status();
  torch::Tensor loss = out->logits.logsumexp(-1).sum();
  loss.backward();
  ASSERT_TRUE(prompt.grad().defined());
  EXPECT_GT(prompt.grad().abs().sum().item<double>(), 0.0);
}

RowAdapter RandomAdapter(const TinyModelSpec& spec, int64_t rank) {
  RowAdapter a;
  a.down = torch::randn({spec.layers, spec.hidden, rank}) * 0.3;
  a.up = torch::randn({spec.layers, rank, spec.hidden}) * 0.3;
  a.scale = torch::rand({spec.layers}) + 0.5;
  return a;
}

// The adapter formula written out through the MLP hook, one row at a time.
torch::Tensor HookedRowLogits(const TransformerLM& model, const RowInput& row,
                              const RowAdapter& a) {
  ForwardOptions options;
  options.mlp_hook = [&a](int64_t l, const torch::Tensor& in,
                          const torch::Tensor& out) {
    torch::Tensor h = torch::gelu(torch::matmul(in, a.down[l]), "tanh");
    return out + a.scale[l] * torch::matmul(h, a.up[l]);
  };
  RowInput plain = row;
  plain.adapter = {};
  auto result = model.Forward({plain}, nullptr, options);
  EXPECT_TRUE(result.ok()) << result.status();
  return result->logits[0].narrow(0, 0, result->lengths[0]);
}

TEST_P(BothFamiliesTest, MixedAdaptersInOneBatchEqualEachRowAlone) {
  TinyModelSpec spec = Spec(GetParam());
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  torch::manual_seed(11);
  // Ranks differ: the batch pads the smaller adapter.
  const RowAdapter a = RandomAdapter(spec, 3), b = RandomAdapter(spec, 5);
  std::vector<RowInput> rows(4);
  rows[0].ids = {1, 4, 9};
  rows[0].adapter = a;
  rows[1].ids = {1, 7, 7, 20, 30};
  rows[1].prompt = torch::randn({2, spec.hidden});
  rows[1].adapter = b;
  rows[2].ids = {1, 2};  // no adapter
  rows[3].ids = {5, 6, 8, 9};
  rows[3].adapter = a;
  auto batch = model->Forward(rows);
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t n = batch->lengths[r];
    torch::Tensor expected =
        rows[r].adapter.defined()
            ? HookedRowLogits(*model, rows[r], rows[r].adapter)
            : RowLogits(*model, rows[r]);
    EXPECT_LT(MaxAbsDiff(batch->logits[r].narrow(0, 0, n), expected), 1e-4)
        << "row " << r;
  }
  // One adapter shared by every row takes the unbatched path: same result.
  auto shared = model->Forward({rows[0], rows[3]});
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_LT(MaxAbsDiff(shared->logits[0].narrow(0, 0, 3),
                       batch->logits[0].narrow(0, 0, 3)),
            1e-5);
  // An adapter changes the output.
  RowInput without = rows[0];
  without.adapter = {};
  EXPECT_GT(
      MaxAbsDiff(batch->logits[0].narrow(0, 0, 3), RowLogits(*model, without)),
      1e-3);
}

TEST_P(BothFamiliesTest, TokenOverridesActLikeTheTokensTheyCopy) {
  TinyModelSpec spec = Spec(GetParam());
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  RowInput original;
  original.ids = {1, 4, 9, 12};
  RowInput overridden;
  overridden.ids = {1, 0, 9, 0};
  overridden.override_at = {3, 1};
  overridden.override_embeddings =
      model->EmbedTokens(torch::tensor({12, 4}, torch::kInt64));
  auto out = model->Forward({original, overridden});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(MaxAbsDiff(out->logits[0], out->logits[1]), 1e-5);

  // Gradients reach learned embeddings.
  torch::Tensor learned = torch::randn({1, spec.hidden}).requires_grad_(true);
  RowInput row;
  row.ids = {1, 0, 3};
  row.override_at = {1};
  row.override_embeddings = learned;
  auto trained = model->Forward({row});
  ASSERT_TRUE(trained.ok()) << trained.status();
  trained->logits.logsumexp(-1).sum().backward();
  ASSERT_TRUE(learned.grad().defined());
  EXPECT_GT(learned.grad().abs().sum().item<double>(), 0.0);
}

TEST(TransformerTest, BadAdaptersAndOverridesNameTheRow) {
  TinyModelSpec spec = Spec("llama");
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  RowInput ok;
  ok.ids = {1, 2};
  RowInput bad_adapter = ok;
  bad_adapter.adapter = RandomAdapter(spec, 2);
  bad_adapter.adapter.up = torch::zeros({spec.layers, 3, spec.hidden});
  auto out = model->Forward({ok, bad_adapter});
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()),
              ::testing::HasSubstr("row 1 has an adapter"));
  RowInput bad_override = ok;
  bad_override.override_at = {2};
  bad_override.override_embeddings = torch::zeros({1, spec.hidden});
  out = model->Forward({bad_override});
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()),
              ::testing::HasSubstr("row 0 overrides token position 2"));
  bad_override.override_at = {1};
  bad_override.override_embeddings = torch::zeros({2, spec.hidden});
  out = model->Forward({bad_override});
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()),
              ::testing::HasSubstr("row 0 overrides 1 token embeddings"));
}

// ---------------------------------------------------------------------------
// Checkpoint variants.

TEST(TransformerTest, HalfPrecisionAndShardedCheckpointsLoad) {
  TinyModelSpec base = Spec("llama");
  std::string base_dir;
  auto f32 = TinyModel(base, &base_dir);
  ASSERT_NE(f32, nullptr);
  RowInput row;
  row.ids = kIds;
  torch::Tensor want = RowLogits(*f32, row);

  TinyModelSpec sharded = base;
  sharded.shards = 3;
  auto s = TinyModel(sharded);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->fingerprint(), f32->fingerprint());
  EXPECT_LT(MaxAbsDiff(RowLogits(*s, row), want), 1e-7);

  for (auto dtype : {torch::kFloat16, torch::kBFloat16}) {
    TinyModelSpec half = base;
    half.disk_dtype = dtype;
    auto h = TinyModel(half);
    ASSERT_NE(h, nullptr);
    EXPECT_NE(h->fingerprint(), f32->fingerprint());
    // Rounding of the weights only: the logits stay close.
    const double tolerance = dtype == torch::kFloat16 ? 0.02 : 0.15;
    EXPECT_LT(MaxAbsDiff(RowLogits(*h, row), want), tolerance);
  }
}

TEST(TransformerTest, FingerprintIsStableAndFollowsTheWeights) {
  TinyModelSpec spec = Spec("llama");
  auto a = TinyModel(spec);
  auto b = TinyModel(spec);
  spec.seed = 2;
  auto c = TinyModel(spec);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->fingerprint().size(), 32u);
  EXPECT_EQ(a->fingerprint(), b->fingerprint());
  EXPECT_NE(a->fingerprint(), c->fingerprint());
}

// ---------------------------------------------------------------------------
// Outputs built on the forward pass.

TEST(TransformerTest, ContinuationScoresEqualSummedLogSoftmax) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  std::vector<ContinuationRequest> reqs(2);
  reqs[0].context = {1, 5, 6};
  reqs[0].continuation = {7, 8};
  reqs[1].context = {1, 9};
  reqs[1].continuation = {10, 11, 12};
  auto scores = ScoreContinuations(*model, reqs);
  ASSERT_TRUE(scores.ok()) << scores.status();
  for (size_t i = 0; i < reqs.size(); ++i) {
    RowInput row;
    row.ids = reqs[i].context;
    row.ids.insert(row.ids.end(), reqs[i].continuation.begin(),
                   reqs[i].continuation.end());
    torch::Tensor logp = RowLogits(*model, row).log_softmax(-1);
    double want = 0.0;
    for (size_t j = 0; j < reqs[i].continuation.size(); ++j) {
      want += logp[reqs[i].context.size() - 1 + j][reqs[i].continuation[j]]
                  .item<double>();
    }
    EXPECT_NEAR((*scores)[i].log_likelihood, want, 1e-4);
    EXPECT_EQ((*scores)[i].tokens,
              static_cast<int64_t>(reqs[i].continuation.size()));
    EXPECT_NEAR((*scores)[i].mean_log_likelihood,
                want / reqs[i].continuation.size(), 1e-4);
  }
}

TEST(TransformerTest, SharedContextScoresEqualSeparateRequests) {
  for (const char* type : {"llama", "gpt2"}) {
    auto model = TinyModel(Spec(type));
    ASSERT_NE(model, nullptr) << type;
    const std::vector<int32_t> context = {1, 5, 6, 7};
    // Different lengths, one of a single token, more rows than one chunk.
    const std::vector<std::vector<int32_t>> options = {
        {8, 9}, {10}, {11, 12, 13, 14}, {15, 16, 17}, {8}};
    torch::Tensor prompt = torch::randn({2, model->config().hidden_size});
    for (bool with_prompt : {false, true}) {
      std::vector<ContinuationRequest> reqs(options.size());
      for (size_t i = 0; i < options.size(); ++i) {
        reqs[i].context = context;
        reqs[i].continuation = options[i];
        if (with_prompt) reqs[i].soft_prompt = prompt;
      }
      auto separate = ScoreContinuations(*model, reqs);
      auto shared = ScoreSharedContext(*model, context, options,
                                       with_prompt ? prompt : torch::Tensor(),
                                       /*max_rows=*/2);
      ASSERT_TRUE(separate.ok() && shared.ok()) << shared.status();
      for (size_t i = 0; i < options.size(); ++i) {
        EXPECT_NEAR((*shared)[i].log_likelihood, (*separate)[i].log_likelihood,
                    1e-4)
            << type << " option " << i;
        EXPECT_EQ((*shared)[i].tokens, (*separate)[i].tokens);
      }
    }
  }
}

TEST(TransformerTest, SharedContextScoringRejectsEmptyInputs) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  EXPECT_FALSE(ScoreSharedContext(*model, {}, {{1}}).ok());
  auto empty_option = ScoreSharedContext(*model, {1}, {{2}, {}});
  EXPECT_THAT(std::string(empty_option.status().message()),
              HasSubstr("continuation 1"));
  EXPECT_FALSE(ScoreSharedContext(*model, {1}, {{2}}, {}, 0).ok());
  auto outside = ScoreSharedContext(*model, {1}, {{2}, {3, -1}, {1000000}});
  EXPECT_THAT(std::string(outside.status().message()),
              HasSubstr("continuation 1 token 1"));
}

TEST(TransformerTest, PooledEmbeddingsIgnorePadding) {
  torch::Tensor hidden = torch::arange(2 * 3 * 2, torch::kFloat32)
                             .view({2, 3, 2});  // [B=2, T=3, D=2]
  torch::Tensor valid =
      torch::tensor({1, 1, 0, 1, 0, 0}, torch::kBool).view({2, 3});
  torch::Tensor mean = PoolHidden(hidden, valid, PoolMode::kMean);
  torch::Tensor last = PoolHidden(hidden, valid, PoolMode::kLast);
  EXPECT_TRUE(torch::allclose(mean, torch::tensor({{1.f, 2.f}, {6.f, 7.f}})));
  EXPECT_TRUE(torch::allclose(last, torch::tensor({{2.f, 3.f}, {6.f, 7.f}})));
  // Valid positions with a gap (a masked-out soft prompt, say), and a row
  // with none.
  torch::Tensor gapped =
      torch::tensor({0, 1, 1, 0, 0, 0}, torch::kBool).view({2, 3});
  EXPECT_TRUE(torch::allclose(PoolHidden(hidden, gapped, PoolMode::kLast),
                              torch::tensor({{4.f, 5.f}, {0.f, 0.f}})));
  EXPECT_TRUE(torch::allclose(PoolHidden(hidden, gapped, PoolMode::kMean),
                              torch::tensor({{3.f, 4.f}, {0.f, 0.f}})));
}

TEST(GenerationTest, GreedyEqualsArgmaxOfFullRecompute) {
  auto model = TinyModel(Spec("gpt2"));
  ASSERT_NE(model, nullptr);
  GenerationRequest req;
  req.prompt_ids = {1, 5, 9};
  req.params.max_tokens = 6;
  req.params.stop_ids = {-1};  // never stops early
  auto results = Generate(model, {req});
  ASSERT_TRUE(results.ok()) << results.status();
  std::vector<int32_t> ids = req.prompt_ids;
  for (int i = 0; i < 6; ++i) {
    RowInput row;
    row.ids = ids;
    ids.push_back(RowLogits(*model, row)[-1].argmax().item<int64_t>());
  }
  std::vector<int32_t> want(ids.begin() + 3, ids.end());
  EXPECT_EQ((*results)[0].ids, want);
  EXPECT_EQ((*results)[0].finish, FinishReason::kLength);
}

TEST(GenerationTest, SamplingIsReproducibleForASeedAndTopKOneIsGreedy) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  GenerationRequest sampled;
  sampled.prompt_ids = {1, 5};
  sampled.params.max_tokens = 12;
  sampled.params.temperature = 1.5;
  sampled.params.top_p = 0.9;
  sampled.params.seed = 42;
  sampled.params.stop_ids = {-1};
  GenerationRequest other_seed = sampled;
  other_seed.params.seed = 43;
  GenerationRequest top1 = sampled;
  top1.params.top_k = 1;
  GenerationRequest greedy = sampled;
  greedy.params.temperature = 0;
  auto r = Generate(model, {sampled, sampled, other_seed, top1, greedy});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].ids, (*r)[1].ids);
  EXPECT_NE((*r)[0].ids, (*r)[2].ids);
  EXPECT_EQ((*r)[3].ids, (*r)[4].ids);
}

TEST(GenerationTest, BatchedGenerationEqualsOneAtATime) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  std::vector<GenerationRequest> reqs(3);
  reqs[0].prompt_ids = {1, 5};
  reqs[0].params.max_tokens = 3;
  reqs[1].prompt_ids = {1, 8, 9, 10, 11};
  reqs[1].params.max_tokens = 7;
  reqs[2].prompt_ids = {1};
  reqs[2].params.max_tokens = 5;
  reqs[2].params.temperature = 0.8;
  reqs[2].params.seed = 5;
  for (auto& r : reqs) r.params.stop_ids = {-1};
  auto together = Generate(model, reqs);
  ASSERT_TRUE(together.ok()) << together.status();
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto alone = Generate(model, {reqs[i]});
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ((*together)[i].ids, (*alone)[0].ids) << "request " << i;
  }
}

TEST(GenerationTest, StopIdsEndAndBadParamsAreRejected) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  GenerationRequest probe;
  probe.prompt_ids = {1, 5};
  probe.params.max_tokens = 4;
  probe.params.stop_ids = {-1};
  auto free_run = Generate(model, {probe});
  ASSERT_TRUE(free_run.ok());
  GenerationRequest stopping = probe;
  stopping.params.stop_ids = {(*free_run)[0].ids[2]};
  auto stopped = Generate(model, {stopping});
  ASSERT_TRUE(stopped.ok());
  // Stops at the first occurrence of the stop id, which is not returned.
  const auto& ids = (*free_run)[0].ids;
  size_t first = std::find(ids.begin(), ids.end(), ids[2]) - ids.begin();
  EXPECT_EQ((*stopped)[0].ids,
            std::vector<int32_t>(ids.begin(), ids.begin() + first));
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kStopId);

  GenerationRequest bad = probe;
  bad.params.top_p = 0;
  auto rejected = Generate(model, {bad});
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rejected.status().message(), HasSubstr("top_p"));
  GenerationRequest stop_text = probe;
  stop_text.params.stop = {"."};
  auto no_tokenizer = Generate(model, {stop_text});
  EXPECT_THAT(no_tokenizer.status().message(), HasSubstr("tokenizer"));
}

TEST(GenerationTest, SequencesJoiningMidwayDecodeAsIfAlone) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  GenerationRequest a, b;
  a.prompt_ids = {1, 5, 6};
  a.params.max_tokens = 6;
  a.params.stop_ids = {-1};
  b.prompt_ids = {1, 9, 10, 11, 12};
  b.params.max_tokens = 5;
  b.params.temperature = 0.7;
  b.params.seed = 3;
  b.params.stop_ids = {-1};
  Decoder decoder(model);
  auto first = decoder.Join({a});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(decoder.Step().ok());
  ASSERT_TRUE(decoder.Step().ok());
  auto second = decoder.Join({b});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(decoder.active(), 2);
  while (decoder.active() > 0) ASSERT_TRUE(decoder.Step().ok());
  auto alone_a = Generate(model, {a});
  auto alone_b = Generate(model, {b});
  ASSERT_TRUE(alone_a.ok() && alone_b.ok());
  EXPECT_EQ(decoder.result((*first)[0]).ids, (*alone_a)[0].ids);
  EXPECT_EQ(decoder.result((*second)[0]).ids, (*alone_b)[0].ids);
}

TEST(GenerationTest, Gpt2StopsAtTheEndOfItsPositionTable) {
  TinyModelSpec spec = Spec("gpt2");
  spec.max_positions = 8;
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  GenerationRequest req;
  req.prompt_ids = {1, 2, 3};
  req.params.max_tokens = 20;
  req.params.stop_ids = {-1};
  auto out = Generate(model, {req});
  ASSERT_TRUE(out.ok()) << out.status();
  // Positions 3..7 take the first five generated tokens; the sixth is
  // produced by position 7 and never fed.
  EXPECT_EQ((*out)[0].ids.size(), 6u);
  EXPECT_EQ((*out)[0].finish, FinishReason::kLength);
}

TEST(TransformerTest, Gpt2PaddingOfARowNearTheTableEndStaysInside) {
  TinyModelSpec spec = Spec("gpt2");
  spec.max_positions = 8;
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  torch::InferenceMode inference;
  KVCache cache = model->NewCache(2);
  std::vector<RowInput> first(2);
  first[0].ids = {1, 2, 3, 4, 5, 6};  // next position 6
  first[1].ids = {7};                 // next position 1
  ASSERT_TRUE(model->Forward(first, &cache).ok());
  std::vector<RowInput> second(2);
  second[0].ids = {8};              // position 6, padded to T = 4
  second[1].ids = {9, 10, 11, 12};  // positions 1..4
  auto out = model->Forward(second, &cache);
  ASSERT_TRUE(out.ok()) << out.status();
  RowInput full;
  full.ids = {7, 9, 10, 11, 12};
  EXPECT_LT(MaxAbsDiff(out->logits[1], RowLogits(*model, full).narrow(0, 1, 4)),
            1e-5);
}

TEST(TransformerTest, FailedForwardLeavesTheCacheAsItWas) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  torch::InferenceMode inference;
  KVCache cache = model->NewCache(1);
  RowInput row;
  row.ids = {1, 2, 3};
  ASSERT_TRUE(model->Forward({row}, &cache).ok());
  const int64_t columns = cache.columns();
  ForwardOptions failing;
  failing.mlp_hook = [](int64_t layer, const torch::Tensor& in,
                        const torch::Tensor& out) -> torch::Tensor {
    if (layer == 1) return out.narrow(-1, 0, 3);  // wrong width: throws
    return out;
  };
  RowInput step;
  step.ids = {4};
  auto failed = model->Forward({step}, &cache, failing);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(cache.columns(), columns);
  EXPECT_EQ(cache.next_position(0), 3);
  // Decoding goes on as if the failure had not happened.
  auto next = model->Forward({step}, &cache);
  ASSERT_TRUE(next.ok());
  RowInput full;
  full.ids = {1, 2, 3, 4};
  EXPECT_LT(MaxAbsDiff(next->logits[0][0], RowLogits(*model, full)[3]), 1e-5);
}

std::string SharedDataDir() {
  return std::string(OPTREC_SOURCE_DIR) + "/../shared/data";
}

TEST(GenerationTest, StopSequencesCutTheTextAndStreamedDeltasAddUp) {
  const std::string tokenizer =
      SharedDataDir() + "/tokenizers/gpt2/tokenizer.json";
  if (!std::filesystem::exists(tokenizer)) {
    GTEST_SKIP() << tokenizer << " is absent; a real tokenizer is needed";
  }
  TinyModelSpec spec = Spec("gpt2");
  spec.vocab = 50257;
  spec.bos_id = spec.eos_id = 50256;
  std::string dir = MakeTempDir("stop");
  ASSERT_TRUE(WriteTinyModel(dir, spec).ok());
  std::filesystem::copy_file(tokenizer, dir + "/tokenizer.json");
  auto model = LoadOrDie(dir);
  ASSERT_NE(model, nullptr);
  ASSERT_NE(model->tokenizer(), nullptr);

  GenerationRequest req;
  auto prompt = model->tokenizer()->Encode("Clicked: trail shoes", false);
  ASSERT_TRUE(prompt.ok());
  req.prompt_ids = *prompt;
  req.params.max_tokens = 16;
  req.params.stop_ids = {-1};
  auto free_run = Generate(model, {req});
  ASSERT_TRUE(free_run.ok()) << free_run.status();
  const std::string full = (*free_run)[0].text;
  const auto& ids = (*free_run)[0].ids;
  auto stop = model->tokenizer()->Decode({ids[6], ids[7]}, true);
  ASSERT_TRUE(stop.ok());
  ASSERT_FALSE(stop->empty());
  const size_t cut = full.find(*stop);
  ASSERT_NE(cut, std::string::npos);

  req.params.stop = {*stop};
  std::string streamed;
  auto stopped =
      Generate(model, {req}, [&](int64_t, int32_t, const std::string& delta) {
        streamed += delta;
        return true;
      });
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ((*stopped)[0].text, full.substr(0, cut));
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kStopSequence);
  EXPECT_EQ(streamed, (*stopped)[0].text);
}

// ---------------------------------------------------------------------------
// Bad input: every error names what is wrong.

void RewriteConfig(const std::string& dir,
                   const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(dir + "/config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  std::ofstream(dir + "/config.json") << j.dump();
}

// Writes a tiny Llama, edits its config.json and returns the load status.
absl::Status LoadWithEditedConfig(
    const std::string& stem, const std::function<void(nlohmann::json&)>& edit) {
  std::string dir = MakeTempDir(stem);
  absl::Status written = WriteTinyModel(dir, Spec("llama"));
  if (!written.ok()) return written;
  RewriteConfig(dir, edit);
  return TransformerLM::Load(dir).status();
}

TEST(TransformerTest, GenerationConfigAddsEndOfSequenceIds) {
  std::string dir = MakeTempDir("genconfig");
  ASSERT_TRUE(WriteTinyModel(dir, Spec("llama")).ok());
  std::ofstream(dir + "/generation_config.json")
      << R"({"eos_token_id": [2, 7], "do_sample": false})";
  auto model = TransformerLM::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().eos_ids, (std::vector<int32_t>{2, 7}));

  std::ofstream(dir + "/generation_config.json") << "{not json";
  auto broken = TransformerLM::Load(dir);
  EXPECT_THAT(broken.status().message(), HasSubstr("generation_config.json"));
}

TEST(BadInputTest, NonPositiveRopeThetaNamesTheField) {
  absl::Status status = LoadWithEditedConfig(
      "theta", [](nlohmann::json& j) { j["rope_theta"] = 0; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("rope_theta"));
}

TEST(BadInputTest, MissingDirectoryOrConfigIsNotFound) {
  auto missing = TransformerLM::Load("/nonexistent/optrec-model");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("config.json"));
}

TEST(BadInputTest, UnknownArchitectureNamesTheField) {
  absl::Status status = LoadWithEditedConfig(
      "arch", [](nlohmann::json& j) { j["model_type"] = "mamba"; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model_type"));
  EXPECT_THAT(status.message(), HasSubstr("mamba"));
}

TEST(BadInputTest, InconsistentHeadsNameTheField) {
  absl::Status status = LoadWithEditedConfig(
      "heads", [](nlohmann::json& j) { j["num_key_value_heads"] = 3; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("num_key_value_heads"));
}

TEST(BadInputTest, WrongShapedTensorNamesTheTensor) {
  // The config claims a wider MLP than the weights have.
  absl::Status status = LoadWithEditedConfig(
      "shape", [](nlohmann::json& j) { j["intermediate_size"] = 64; });
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("mlp.gate_proj.weight"));
}

TEST(BadInputTest, MissingTensorNamesTheTensor) {
  std::string dir = MakeTempDir("missing");
  TinyModelSpec spec = Spec("llama");
  ASSERT_TRUE(WriteTinyModel(dir, spec).ok());
  // The config names a third layer the weights do not have.
  RewriteConfig(dir, [](nlohmann::json& j) { j["num_hidden_layers"] = 3; });
  auto model = TransformerLM::Load(dir);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr("model.layers.2."));
}

TEST(BadInputTest, TruncatedWeightsNameTheFile) {
  std::string dir = MakeTempDir("truncated");
  ASSERT_TRUE(WriteTinyModel(dir, Spec("gpt2")).ok());
  const std::string path = dir + "/model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  auto model = TransformerLM::Load(dir);
  EXPECT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(), HasSubstr("model.safetensors"));
}

TEST(BadInputTest, TokenOutsideVocabularyAndBadPromptNameTheRow) {
  auto model = TinyModel(Spec("llama"));
  ASSERT_NE(model, nullptr);
  RowInput ok_row, bad_row;
  ok_row.ids = {1, 2};
  bad_row.ids = {1, 97};
  auto out = model->Forward({ok_row, bad_row});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("row 1"));
  EXPECT_THAT(out.status().message(), HasSubstr("97"));

  RowInput wide;
  wide.ids = {1};
  wide.prompt = torch::zeros({2, 33});
  auto bad_prompt = model->Forward({wide});
  EXPECT_THAT(bad_prompt.status().message(), HasSubstr("soft prompt"));

  KVCache cache = model->NewCache(2);
  auto bad_cache = model->Forward({ok_row}, &cache);
  EXPECT_THAT(bad_cache.status().message(), HasSubstr("cache"));
}

TEST(BadInputTest, Gpt2PositionsBeyondTheTableAreRejected) {
  TinyModelSpec spec = Spec("gpt2");
  spec.max_positions = 8;
  auto model = TinyModel(spec);
  ASSERT_NE(model, nullptr);
  RowInput row;
  row.ids = kIds;  // 9 tokens
  auto out = model->Forward({row});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("position"));
}

// ---------------------------------------------------------------------------
// The real pretrained checkpoint in ../shared/data, when present.

std::string SharedModelDir() {
  return SharedDataDir() + "/models/llama-gqa-tiny";
}

// Loads the shared checkpoint and its reference.json; skips when absent.
class SharedCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = SharedModelDir();
    if (!std::filesystem::exists(dir + "/reference.json")) {
      GTEST_SKIP() << dir << " is absent; the shared reference data is needed";
    }
    model_ = LoadOrDie(dir);
    ASSERT_NE(model_, nullptr);
    std::ifstream in(dir + "/reference.json");
    ref_ = nlohmann::json::parse(in);
  }

  std::shared_ptr<const TransformerLM> model_;
  nlohmann::json ref_;
};

TEST_F(SharedCheckpointTest, LogitsMatchFloat64Reference) {
  RowInput row;
  row.ids = ref_["prompt_ids"].get<std::vector<int32_t>>();
  auto want_rows =
      ref_["logits_float64"].get<std::vector<std::vector<double>>>();
  EXPECT_LT(MaxAbsDiff(RowLogits(*model_, row), ToTensor(want_rows)), 1e-4);
}

TEST_F(SharedCheckpointTest, GreedyContinuationMatchesReference) {
  auto want = ref_["greedy_from_bos"].get<std::vector<int32_t>>();
  GenerationRequest req;
  req.prompt_ids = {ref_["bos_id"].get<int32_t>()};
  req.params.max_tokens = static_cast<int64_t>(want.size());
  auto got = Generate(model_, {req});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0].ids, want);
}

}  // namespace
}  // namespace optrec
