// Tests of the evaluation metrics against values worked out by hand (the
// working is in the comments), and of their NaN sentinels for empty or
// mismatched inputs.
#include "tuning/metrics/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace optrec {
namespace {

// ---- AUC. ----

TEST(AucTest, TiesCountHalf) {
  EXPECT_DOUBLE_EQ(Auc({0.1, 0.9}, {0, 1}), 1.0);
  EXPECT_DOUBLE_EQ(Auc({0.9, 0.1}, {0, 1}), 0.0);
  EXPECT_DOUBLE_EQ(Auc({0.5, 0.5, 0.5}, {0, 1, 0}), 0.5);
  // Ranks 1, 2.5, 2.5, 4; positives at 2.5 and 4: (6.5 - 3) / (2 * 2).
  EXPECT_DOUBLE_EQ(Auc({0.2, 0.5, 0.5, 0.9}, {0, 1, 0, 1}), 0.875);
}

TEST(AucTest, MissingClassOrSizeMismatchIsNaN) {
  EXPECT_TRUE(std::isnan(Auc({0.2, 0.3}, {1, 1})));
  EXPECT_TRUE(std::isnan(Auc({0.2, 0.3}, {0, 0})));
  EXPECT_TRUE(std::isnan(Auc({}, {})));
  EXPECT_TRUE(std::isnan(Auc({0.2, 0.3}, {0, 1, 1})));
}

// ---- Class probabilities. ----

TEST(LogLossTest, MeansTheTrueClassNegativeLogClampedAtEpsilon) {
  const std::vector<std::vector<double>> rows = {
      {0.7, 0.2, 0.1}, {0.1, 0.8, 0.1}, {0.5, 0.5, 0.0}};
  // The third row gives the true class 0, clamped to 1e-15.
  const double expected =
      -(std::log(0.7) + std::log(0.8) + std::log(1e-15)) / 3;
  EXPECT_NEAR(LogLoss(rows, {0, 1, 2}), expected, 1e-12);
  const std::vector<double> flat = {0.7, 0.2, 0.1, 0.1, 0.8,
                                    0.1, 0.5, 0.5, 0.0};
  EXPECT_NEAR(LogLoss(flat, 3, {0, 1, 2}), expected, 1e-12);
}

TEST(LogLossTest, BinaryUsesOneMinusPForNegatives) {
  EXPECT_NEAR(BinaryLogLoss({0.9, 0.2}, {1, 0}),
              -(std::log(0.9) + std::log(0.8)) / 2, 1e-12);
  EXPECT_NEAR(BinaryLogLoss({1.0}, {0}), -std::log(1e-15), 1e-9);
}

TEST(LogLossTest, BadLayoutIsNaN) {
  EXPECT_TRUE(std::isnan(LogLoss({0.5, 0.5}, 2, {0, 1})));  // 1 row, 2 labels
  EXPECT_TRUE(std::isnan(LogLoss({0.5, 0.5}, 2, {2})));     // label too big
  EXPECT_TRUE(std::isnan(LogLoss({0.5, 0.5}, 0, {0})));
  EXPECT_TRUE(std::isnan(LogLoss({{0.5, 0.5}, {1.0}}, {0, 0})));  // ragged
  EXPECT_TRUE(std::isnan(LogLoss(std::vector<double>{}, 2, {})));
  EXPECT_TRUE(std::isnan(BinaryLogLoss({}, {})));
}

TEST(AccuracyTest, TiesGoToTheLowestClass) {
  // Row 0 ties: class 0 wins, label 1 is wrong; rows 1 and 2 are right.
  const std::vector<std::vector<double>> rows = {
      {0.5, 0.5}, {0.2, 0.8}, {0.6, 0.4}};
  EXPECT_DOUBLE_EQ(Accuracy(rows, {1, 1, 0}), 2.0 / 3);
  EXPECT_DOUBLE_EQ(Accuracy(rows, {0, 1, 0}), 1.0);
  EXPECT_TRUE(std::isnan(Accuracy(rows, {0, 1})));
}

// ---- Numeric targets. ----

TEST(RegressionTest, RmseAndMaeOfHandErrors) {
  // Errors -1, 0, -2: squared mean 5/3, absolute mean 1.
  EXPECT_DOUBLE_EQ(Rmse({1, 2, 3}, {2, 2, 5}), std::sqrt(5.0 / 3));
  EXPECT_DOUBLE_EQ(Mae({1, 2, 3}, {2, 2, 5}), 1.0);
  EXPECT_TRUE(std::isnan(Rmse({}, {})));
  EXPECT_TRUE(std::isnan(Mae({1}, {1, 2})));
}

// ---- Text. ----

TEST(MetricWordsTest, LowercasesAndSplitsPunctuation) {
  EXPECT_EQ(MetricWords("It's 5-star!\tCAFÉ ok"),
            (std::vector<std::string>{"it", "'", "s", "5", "-", "star", "!",
                                      "cafÉ", "ok"}));
  EXPECT_TRUE(MetricWords(" \n ").empty());
}

TEST(BleuTest, TinyCorpusMatchesHandComputation) {
  // Candidate 1 "the cat sat on the mat", reference "the cat is on the mat";
  // candidate 2 equals its reference "a dog runs fast".
  //   unigrams: 5/6 (sat unmatched) + 4/4 -> p1 = 9/10
  //   bigrams:  3/5 (the cat, on the, the mat) + 3/3 -> p2 = 6/8
  //   trigrams: 1/4 (on the mat) + 2/2 -> p3 = 3/6
  //   4-grams:  0/3 + 1/1 -> p4 = 1/4
  // c = r = 10, so BP = exp(1 - 10/10) = 1.
  const std::vector<std::string> candidates = {"the cat sat on the mat",
                                               "a dog runs fast"};
  const std::vector<std::string> references = {"the cat is on the mat",
                                               "A dog runs fast"};
  EXPECT_NEAR(Bleu4(candidates, references),
              100 * std::pow(0.9 * 0.75 * 0.5 * 0.25, 0.25), 1e-9);
}

TEST(BleuTest, ShortCandidatesArePenalised) {
  // All precisions 1; c = 4, r = 5: BP = exp(1 - 5/4).
  EXPECT_NEAR(Bleu4({"a dog runs fast"}, {"a dog runs fast today"}),
              100 * std::exp(-0.25), 1e-9);
}

TEST(BleuTest, RepeatedNgramsAreClipped) {
  // "a b c d a b c d" against "a b c d": p1 = 4/8, p2 = 3/7, p3 = 2/6,
  // p4 = 1/5; c = 8 > r = 4, so BP = 1.
  EXPECT_NEAR(Bleu4({"a b c d a b c d"}, {"a b c d"}),
              100 * std::pow(0.5 * 3.0 / 7 * 2.0 / 6 * 0.2, 0.25), 1e-9);
}

TEST(BleuTest, NoFourGramMatchGivesZeroAndBadSizesNaN) {
  EXPECT_EQ(Bleu4({"the cat sat on the mat"}, {"the cat is on the mat"}), 0);
  EXPECT_EQ(Bleu4({""}, {"anything"}), 0);
  EXPECT_TRUE(std::isnan(Bleu4({}, {})));
  EXPECT_TRUE(std::isnan(Bleu4({"a"}, {"a", "b"})));
}

TEST(RougeTest, LinsExampleSeparatesWordOrderOnlyWithLcs) {
  // Lin (2004), section 3.1: reference "police killed the gunman".
  //   "police kill the gunman": overlap 3 of 4 words -> R1 = 0.75; bigram
  //     "the gunman" of 3 -> R2 = 1/3; LCS "police the gunman" = 3 -> 0.75.
  //   "the gunman kill police": R1 = 0.75; bigram "the gunman" -> 1/3;
  //     LCS "the gunman" = 2 -> 0.5.
  // Means: R1 75, R2 33.3, RL (0.75 + 0.5) / 2 = 62.5. Punctuation is
  // dropped, so the final period changes nothing.
  const RougeScores scores =
      Rouge({"police kill the gunman", "the gunman kill police"},
            {"Police killed the gunman.", "police killed the gunman"});
  EXPECT_NEAR(scores.rouge1, 75.0, 1e-9);
  EXPECT_NEAR(scores.rouge2, 100.0 / 3, 1e-9);
  EXPECT_NEAR(scores.rouge_l, 62.5, 1e-9);
}

TEST(RougeTest, F1CombinesUnequalPrecisionAndRecall) {
  // "the cat" vs "the cat sat": P = 1, R = 2/3, F1 = 0.8 for ROUGE-1 and L;
  // ROUGE-2: P = 1, R = 1/2, F1 = 2/3. An empty candidate scores 0.
  const RougeScores scores = Rouge({"the cat", ""}, {"the cat sat", "a b"});
  EXPECT_NEAR(scores.rouge1, 40.0, 1e-9);
  EXPECT_NEAR(scores.rouge2, 100.0 / 3, 1e-9);
  EXPECT_NEAR(scores.rouge_l, 40.0, 1e-9);
  EXPECT_TRUE(std::isnan(Rouge({}, {}).rouge_l));
}

// ---- Ranking. ----

TEST(RankingTest, HitRateAndNdcgOfOneRelevantItem) {
  EXPECT_EQ(HitRate(0, 1), 1.0);
  EXPECT_EQ(HitRate(4, 5), 1.0);
  EXPECT_EQ(HitRate(5, 5), 0.0);
  EXPECT_EQ(HitRate(-1, 10), 0.0);
  EXPECT_EQ(HitRate(0, 0), 0.0);
  EXPECT_DOUBLE_EQ(Ndcg(0, 1), 1.0);
  EXPECT_DOUBLE_EQ(Ndcg(1, 5), 1.0 / std::log2(3.0));
  EXPECT_DOUBLE_EQ(Ndcg(2, 5), 0.5);
  EXPECT_EQ(Ndcg(5, 5), 0.0);
  EXPECT_EQ(Ndcg(-1, 5), 0.0);
}

TEST(RankingTest, AccumulatorAveragesEachCutoff) {
  RankingAccumulator ranking({1, 5, 10});
  for (int64_t rank : {0, 3, 7, -1}) ranking.Add(rank);
  EXPECT_EQ(ranking.count(), 4);
  const std::vector<RankingAtK> means = ranking.Means();
  ASSERT_EQ(means.size(), 3u);
  EXPECT_EQ(means[0].k, 1);
  EXPECT_DOUBLE_EQ(means[0].hit_rate, 0.25);
  EXPECT_DOUBLE_EQ(means[0].ndcg, 0.25);
  EXPECT_EQ(means[1].k, 5);
  EXPECT_DOUBLE_EQ(means[1].hit_rate, 0.5);
  EXPECT_DOUBLE_EQ(means[1].ndcg, (1 + 1 / std::log2(5.0)) / 4);
  EXPECT_DOUBLE_EQ(means[2].hit_rate, 0.75);
  EXPECT_DOUBLE_EQ(means[2].ndcg,
                   (1 + 1 / std::log2(5.0) + 1 / std::log2(9.0)) / 4);
}

TEST(RankingTest, EmptyAccumulatorsReportNaN) {
  EXPECT_TRUE(std::isnan(RankingAccumulator({10}).Means()[0].hit_rate));
  EXPECT_TRUE(std::isnan(MeanAccumulator().Mean()));
  MeanAccumulator mean;
  mean.Add(1);
  mean.Add(4);
  EXPECT_DOUBLE_EQ(mean.Mean(), 2.5);
}

}  // namespace
}  // namespace optrec
