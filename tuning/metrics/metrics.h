// Evaluation metrics for the recommendation tasks: ranking of a binary
// label (AUC), class probabilities (log loss, accuracy), numeric targets
// (RMSE, MAE), generated text (BLEU-4, ROUGE-1/2/L) and retrieval of one
// relevant item (hit rate and NDCG at k). Everything is computed in double
// precision.
//
// Conventions: inputs that must have equal sizes and do not, and empty
// inputs, give NaN (a value no caller can mistake for a score) rather than
// an error; each function says which sentinel it uses. The functions are
// pure and thread-safe; the accumulators are not thread-safe (use one per
// thread and merge the results).
#ifndef OPTREC_TUNING_METRICS_METRICS_H_
#define OPTREC_TUNING_METRICS_METRICS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/types/span.h"

namespace optrec {

// ---- Binary labels and class probabilities. ----

// The area under the ROC curve of `scores` against 0/1 `labels` (any
// non-zero label counts as positive): the probability that a random
// positive scores above a random negative, ties counted half. Computed with
// the Mann-Whitney U statistic over mid-ranks (Hanley & McNeil 1982):
//   AUC = (R+ - P (P + 1) / 2) / (P N),
// R+ the sum of the positives' ranks (ascending score, tied scores sharing
// their mean rank), P positives, N negatives. NaN when the sizes differ or
// a class is missing.
double Auc(absl::Span<const double> scores, absl::Span<const int> labels);

// Mean negative log-likelihood of the true class (the cross-entropy of
// scikit-learn's log_loss):
//   LogLoss = -(1/N) sum_i ln max(p[i][y_i], 1e-15).
// `probabilities` holds N rows of `num_classes` values, row-major; rows are
// taken as given (not renormalised). NaN when num_classes < 1, the sizes do
// not match (probabilities.size() != N * num_classes), N = 0, or a label is
// outside [0, num_classes).
double LogLoss(absl::Span<const double> probabilities, int num_classes,
               absl::Span<const int> labels);
// The same over one vector per example; NaN also when rows differ in size.
double LogLoss(const std::vector<std::vector<double>>& probabilities,
               absl::Span<const int> labels);
// The binary case: `p_positive[i]` is the probability of label 1, so the
// true-class probability is p for label 1 and 1 - p for label 0 (any
// non-zero label counts as 1). NaN when the sizes differ or are 0.
double BinaryLogLoss(absl::Span<const double> p_positive,
                     absl::Span<const int> labels);

// Fraction of examples whose highest score is at the true class; among
// equal highest scores the lowest class index wins. Same layout and NaN
// cases as LogLoss.
double Accuracy(absl::Span<const double> scores, int num_classes,
                absl::Span<const int> labels);
double Accuracy(const std::vector<std::vector<double>>& scores,
                absl::Span<const int> labels);

// ---- Numeric targets. ----

// Root mean squared error, sqrt((1/N) sum (predicted - truth)^2), and mean
// absolute error, (1/N) sum |predicted - truth|. NaN when the sizes differ
// or are 0.
double Rmse(absl::Span<const double> predicted, absl::Span<const double> truth);
double Mae(absl::Span<const double> predicted, absl::Span<const double> truth);

// ---- Generated text. ----

// The tokens the text metrics compare: the text with ASCII letters
// lowercased, split into maximal runs of ASCII letters and digits, and
// every other character that is not ASCII whitespace as a token of its own
// ("It's 5-star!" -> it ' s 5 - star !). Bytes >= 0x80 (UTF-8 beyond
// ASCII) join the letter runs, so a multi-byte character is never split.
std::vector<std::string> MetricWords(std::string_view text);

// Corpus-level BLEU-4 (Papineni et al. 2002, "BLEU: a Method for Automatic
// Evaluation of Machine Translation"), one reference per candidate, over
// MetricWords tokens, on a 0-100 scale as commonly reported:
//   p_n  = sum over candidates of clipped n-gram matches / sum of candidate
//          n-grams, n = 1..4 (a candidate n-gram matches at most as many
//          times as it occurs in its reference);
//   BP   = 1 if c > r, else exp(1 - r / c), c and r the total candidate and
//          reference lengths in tokens;
//   BLEU = 100 BP exp((1/4) sum_n ln p_n).
// No smoothing: 0 when any p_n is 0 (including a corpus with no 4-grams).
// NaN when the sizes differ or are 0.
double Bleu4(absl::Span<const std::string> candidates,
             absl::Span<const std::string> references);

// ROUGE F1 scores on a 0-100 scale.
struct RougeScores {
  double rouge1 = 0;   // unigram overlap
  double rouge2 = 0;   // bigram overlap
  double rouge_l = 0;  // longest common subsequence
};

// ROUGE (Lin 2004, "ROUGE: A Package for Automatic Evaluation of
// Summaries"), one reference per candidate, averaged over examples:
//   ROUGE-N: overlap = sum over n-grams of min(count in candidate, count in
//            reference); P = overlap / candidate n-grams, R = overlap /
//            reference n-grams;
//   ROUGE-L: P = LCS / candidate length, R = LCS / reference length, LCS the
//            longest common token subsequence;
//   F1 = 2 P R / (P + R), 0 when the overlap is 0 or a side has no n-grams.
// Tokens are MetricWords without the punctuation tokens (only runs of
// letters and digits), as in Google's rouge-score package without
// stemming. All three fields are NaN when the sizes differ or are 0.
RougeScores Rouge(absl::Span<const std::string> candidates,
                  absl::Span<const std::string> references);

// ---- Retrieval of one relevant item. ----

// For one relevant item at 0-based position `rank` of a ranked list (rank
// < 0: it is not in the list), the hit rate at k,
//   HR@k = 1 if 0 <= rank < k else 0,
// and the normalised discounted cumulative gain at k (Jarvelin & Kekalainen
// 2002; the ideal DCG of one relevant item is 1),
//   NDCG@k = 1 / log2(rank + 2) if 0 <= rank < k else 0.
// Both are 0 for k <= 0.
double HitRate(int64_t rank, int k);
double Ndcg(int64_t rank, int k);

// A running mean. Not thread-safe.
class MeanAccumulator {
 public:
  void Add(double value) {
    sum_ += value;
    ++count_;
  }
  int64_t count() const { return count_; }
  // The mean of the added values; NaN when none was added.
  double Mean() const;

 private:
  double sum_ = 0;
  int64_t count_ = 0;
};

// Mean HR@k and NDCG@k at one cutoff.
struct RankingAtK {
  int k = 0;
  double hit_rate = 0;
  double ndcg = 0;
};

// Collects the ranks of the relevant item over a set of queries and reports
// mean HR@k and NDCG@k for each of a fixed list of cutoffs. Not
// thread-safe.
class RankingAccumulator {
 public:
  // `ks` are the cutoffs reported, in the order given (e.g. {1, 5, 10});
  // cutoffs <= 0 report 0.
  explicit RankingAccumulator(std::vector<int> ks);

  // Adds one query whose relevant item is at 0-based `rank` (< 0: not
  // found).
  void Add(int64_t rank);
  int64_t count() const { return count_; }
  // One entry per cutoff, in the order of `ks`; the means are NaN when no
  // rank was added.
  std::vector<RankingAtK> Means() const;

 private:
  std::vector<int> ks_;
  std::vector<MeanAccumulator> hit_rate_;  // per cutoff
  std::vector<MeanAccumulator> ndcg_;      // per cutoff
  int64_t count_ = 0;
};

}  // namespace optrec

#endif  // OPTREC_TUNING_METRICS_METRICS_H_
