// Late interaction in the core: segments encoded alone through the lower
// layers (TransformerLM::EncodeSegments) and a joint upper stack over their
// states (TransformerLM::ForwardJoint), checked against the plain forward
// pass and against the plain-loop reference in double precision.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "core/checkpoint/weight_store.h"
#include "core/model/transformer.h"
#include "tests/testlib/reference_forward.h"
#include "tests/testlib/tiny_models.h"

namespace optrec {
namespace {

using ::testing::HasSubstr;

std::vector<std::vector<double>> ToRows(const torch::Tensor& t) {
  torch::Tensor d = t.to(torch::kFloat64).contiguous();
  std::vector<std::vector<double>> rows;
  for (int64_t i = 0; i < d.size(0); ++i) {
    rows.emplace_back(d[i].data_ptr<double>(),
                      d[i].data_ptr<double>() + d.size(1));
  }
  return rows;
}

TinyModelSpec Spec(const std::string& type) {
  TinyModelSpec s;
  s.model_type = type;
  s.layers = 3;
  if (type == "gpt2") {
    s.kv_heads = s.heads;
    s.ffn = 4 * s.hidden;
  }
  return s;
}

// A profile, two behaviours and a candidate, each with BOS in front.
const std::vector<std::vector<int32_t>> kSegments = {
    {1, 5, 17, 42}, {1, 8, 96}, {1, 3, 60, 11, 7, 19}, {1, 33, 2}};

class LateInteractionTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    spec_ = Spec(GetParam());
    dir_ = MakeTempDir(GetParam());
    ASSERT_TRUE(WriteTinyModel(dir_, spec_).ok());
    auto model = TransformerLM::Load(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
  }

  std::vector<torch::Tensor> Encode(
      int64_t lower, const std::vector<std::vector<int32_t>>& segments) {
    auto states = model_->EncodeSegments(segments, lower);
    EXPECT_TRUE(states.ok()) << states.status();
    return states.ok() ? *states : std::vector<torch::Tensor>();
  }

  // Logits [T, V] of one joint row, padding cut off.
  torch::Tensor JointLogits(const JointRowInput& row, int64_t lower) {
    auto out = model_->ForwardJoint({row}, lower);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return torch::Tensor();
    return out->logits[0].narrow(0, 0, out->lengths[0]);
  }

  TinyModelSpec spec_;
  std::string dir_;
  std::shared_ptr<const TransformerLM> model_;
};

INSTANTIATE_TEST_SUITE_P(Families, LateInteractionTest,
                         ::testing::Values("llama", "gpt2"));

TEST_P(LateInteractionTest, NoLowerLayersEqualsThePlainForwardPass) {
  torch::manual_seed(3);
  torch::Tensor prompt = torch::randn({4, spec_.hidden});
  JointRowInput joint;
  joint.prompt = prompt;
  joint.segments = Encode(0, kSegments);
  RowInput plain;
  plain.prompt = prompt;
  for (const auto& seg : kSegments) {
    plain.ids.insert(plain.ids.end(), seg.begin(), seg.end());
  }
  auto want = model_->Forward({plain});
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_LT(MaxAbsDiff(JointLogits(joint, 0), want->logits[0]), 1e-6);
}

TEST_P(LateInteractionTest, MatchesThePlainLoopReferenceAtEverySplit) {
  auto store = WeightStore::OpenDir(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  const ReferenceWeights weights = ReadAllWeights(**store);
  torch::manual_seed(5);
  torch::Tensor prompt = torch::randn({3, spec_.hidden}, torch::kFloat64);
  torch::Tensor seg_emb =
      torch::randn({static_cast<int64_t>(kSegments.size()), spec_.hidden},
                   torch::kFloat64) *
      0.5;
  std::vector<std::vector<int>> ref_segments;
  for (const auto& seg : kSegments)
    ref_segments.emplace_back(seg.begin(), seg.end());
  for (int64_t lower = 0; lower <= spec_.layers; ++lower) {
    torch::Tensor want = ToTensor(ReferenceLateInteraction(
        TinyReferenceConfig(spec_), weights, ref_segments,
        static_cast<int>(lower), ToRows(prompt), ToRows(seg_emb)));
    JointRowInput joint;
    joint.prompt = prompt.to(torch::kFloat32);
    joint.segments = Encode(lower, kSegments);
    for (size_t i = 0; i < kSegments.size(); ++i) {
      joint.segment_embeddings.push_back(seg_emb[i].to(torch::kFloat32));
    }
    // f32 against f64 over three layers of width 32.
    EXPECT_LT(MaxAbsDiff(JointLogits(joint, lower), want), 1e-4)
        << "lower layers " << lower;
  }
}

TEST_P(LateInteractionTest, SplitChangesTheResultOnlyWhenSegmentsInteract) {
  // One segment alone: nothing to interact with, so every split gives the
  // plain forward pass over it (llama: same positions; gpt2: positions 0..N
  // either way).
  const std::vector<std::vector<int32_t>> one = {kSegments[2]};
  RowInput plain;
  plain.ids = kSegments[2];
  auto want = model_->Forward({plain});
  ASSERT_TRUE(want.ok());
  JointRowInput joint;
  for (int64_t lower = 0; lower <= spec_.layers; ++lower) {
    joint.segments = Encode(lower, one);
    EXPECT_LT(MaxAbsDiff(JointLogits(joint, lower), want->logits[0]), 1e-5)
        << "lower layers " << lower;
  }
  // Several segments: the lower layers no longer see the earlier segments,
  // so the last segment's outputs change with the split.
  joint.segments = Encode(0, kSegments);
  torch::Tensor full = JointLogits(joint, 0);
  joint.segments = Encode(spec_.layers - 1, kSegments);
  torch::Tensor late = JointLogits(joint, spec_.layers - 1);
  EXPECT_GT(MaxAbsDiff(full.narrow(0, 10, 3), late.narrow(0, 10, 3)), 1e-3);
}

TEST_P(LateInteractionTest, SegmentStatesDoNotDependOnTheirBatch) {
  const std::vector<torch::Tensor> batch = Encode(2, kSegments);
  ASSERT_EQ(batch.size(), kSegments.size());
  for (size_t i = 0; i < kSegments.size(); ++i) {
    const std::vector<torch::Tensor> alone = Encode(2, {kSegments[i]});
    ASSERT_EQ(alone.size(), 1u);
    EXPECT_EQ(batch[i].sizes(),
              (std::vector<int64_t>{static_cast<int64_t>(kSegments[i].size()),
                                    spec_.hidden}));
    EXPECT_LT(MaxAbsDiff(batch[i], alone[0]), 1e-5) << "segment " << i;
    EXPECT_FALSE(batch[i].requires_grad());
  }
}

TEST_P(LateInteractionTest, PaddedJointBatchEqualsRowsAlone) {
  torch::manual_seed(9);
  const int64_t lower = 1;
  std::vector<JointRowInput> rows(3);
  rows[0].prompt = torch::randn({2, spec_.hidden});
  rows[0].segments = Encode(lower, {kSegments[0], kSegments[3]});
  rows[1].segments = Encode(lower, kSegments);
  rows[2].prompt = torch::randn({5, spec_.hidden});
  rows[2].segments = Encode(lower, {kSegments[1]});
  rows[2].segment_embeddings = {torch::randn({spec_.hidden})};
  auto batch = model_->ForwardJoint(rows, lower);
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t n = batch->lengths[r];
    EXPECT_LT(MaxAbsDiff(batch->logits[r].narrow(0, 0, n),
                         JointLogits(rows[r], lower)),
              1e-5)
        << "row " << r;
  }
}

TEST_P(LateInteractionTest, GradientsReachTheTaskPartsOfTheUpperLayersOnly) {
  torch::manual_seed(13);
  const int64_t lower = 1, rank = 3;
  JointRowInput row;
  row.prompt = torch::randn({2, spec_.hidden}).requires_grad_(true);
  row.segments = Encode(lower, kSegments);
  for (size_t i = 0; i < kSegments.size(); ++i) {
    row.segment_embeddings.push_back(
        (torch::randn({spec_.hidden}) * 0.1).requires_grad_(true));
  }
  row.adapter.down = (torch::randn({spec_.layers, spec_.hidden, rank}) * 0.3)
                         .requires_grad_(true);
  row.adapter.up = (torch::randn({spec_.layers, rank, spec_.hidden}) * 0.3)
                       .requires_grad_(true);
  row.adapter.scale = torch::ones({spec_.layers}).requires_grad_(true);
  auto out = model_->ForwardJoint({row}, lower);
  ASSERT_TRUE(out.ok()) << out.status();
  out->logits.logsumexp(-1).sum().backward();
  EXPECT_GT(row.prompt.grad().abs().sum().item<double>(), 0.0);
  for (const torch::Tensor& e : row.segment_embeddings) {
    EXPECT_GT(e.grad().abs().sum().item<double>(), 0.0);
  }
  // The adapter acts in layers lower..L-1 only.
  torch::Tensor up_grad = row.adapter.up.grad();
  for (int64_t l = 0; l < spec_.layers; ++l) {
    const double g = up_grad[l].abs().sum().item<double>();
    if (l < lower) {
      EXPECT_EQ(g, 0.0) << "layer " << l;
    } else {
      EXPECT_GT(g, 0.0) << "layer " << l;
    }
  }
  for (const torch::Tensor& w : model_->parameters()) {
    EXPECT_FALSE(w.grad().defined());
  }
}

TEST_P(LateInteractionTest, BadInputNamesWhatIsWrong) {
  auto too_deep = model_->EncodeSegments(kSegments, spec_.layers + 1);
  EXPECT_EQ(too_deep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_deep.status().message(), HasSubstr("lower_layers 4"));
  auto empty = model_->EncodeSegments({{1, 2}, {}}, 1);
  EXPECT_THAT(empty.status().message(), HasSubstr("segment 1 is empty"));
  auto bad_id = model_->EncodeSegments({{1, 2, 500}}, 1);
  EXPECT_THAT(bad_id.status().message(), HasSubstr("token id 500"));

  JointRowInput row;
  row.segments = Encode(1, kSegments);
  row.segments[2] = torch::zeros({3, spec_.hidden + 1});
  auto wrong_width = model_->ForwardJoint({row}, 1);
  EXPECT_EQ(wrong_width.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_width.status().message(), HasSubstr("row 0 segment 2"));

  row.segments = Encode(1, kSegments);
  row.segment_embeddings = {torch::zeros({spec_.hidden})};
  auto count = model_->ForwardJoint({row}, 1);
  EXPECT_THAT(count.status().message(),
              HasSubstr("1 segment embeddings for 4 segments"));

  row.segment_embeddings.clear();
  JointRowInput nothing;
  auto none = model_->ForwardJoint({row, nothing}, 1);
  EXPECT_THAT(none.status().message(), HasSubstr("row 1 has no prompt"));
  EXPECT_EQ(model_->ForwardJoint({}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace optrec
