#include "tuning/metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

namespace optrec {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Log loss clamps true-class probabilities below this (scikit-learn's eps).
constexpr double kMinProbability = 1e-15;

bool IsAsciiSpace(unsigned char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

// Letters, digits and non-ASCII bytes: the bytes of word runs.
bool IsWordByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c >= 0x80;
}

using NgramCounts = std::map<std::vector<std::string>, int64_t>;

NgramCounts CountNgrams(const std::vector<std::string>& tokens, size_t n) {
  NgramCounts counts;
  for (size_t i = 0; i + n <= tokens.size(); ++i) {
    ++counts[std::vector<std::string>(tokens.begin() + i,
                                      tokens.begin() + i + n)];
  }
  return counts;
}

// Sum over the candidate's n-grams of min(candidate count, reference
// count): BLEU's clipped matches and ROUGE-N's overlap.
int64_t ClippedMatches(const NgramCounts& candidate,
                       const NgramCounts& reference) {
  int64_t matches = 0;
  for (const auto& [ngram, count] : candidate) {
    auto it = reference.find(ngram);
    if (it != reference.end()) matches += std::min(count, it->second);
  }
  return matches;
}

int64_t NgramTotal(size_t tokens, size_t n) {
  return tokens >= n ? static_cast<int64_t>(tokens - n + 1) : 0;
}

// 2 P R / (P + R) with P = overlap / candidate_total and R = overlap /
// reference_total; 0 when there is no overlap.
double F1(int64_t overlap, int64_t candidate_total, int64_t reference_total) {
  if (overlap == 0 || candidate_total == 0 || reference_total == 0) return 0;
  const double precision = static_cast<double>(overlap) / candidate_total;
  const double recall = static_cast<double>(overlap) / reference_total;
  return 2 * precision * recall / (precision + recall);
}

// Length of the longest common subsequence, one row of the table at a time.
int64_t LcsLength(const std::vector<std::string>& a,
                  const std::vector<std::string>& b) {
  std::vector<int64_t> previous(b.size() + 1, 0), current(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      current[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1
                                        : std::max(previous[j], current[j - 1]);
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

// MetricWords without the single-character punctuation tokens.
std::vector<std::string> RougeWords(std::string_view text) {
  std::vector<std::string> words = MetricWords(text);
  words.erase(std::remove_if(
                  words.begin(), words.end(),
                  [](const std::string& w) { return !IsWordByte(w.front()); }),
              words.end());
  return words;
}

// Flattens rows of equal size; false when they differ.
bool Flatten(const std::vector<std::vector<double>>& rows,
             std::vector<double>* flat, int* num_classes) {
  *num_classes = rows.empty() ? 0 : static_cast<int>(rows.front().size());
  for (const std::vector<double>& row : rows) {
    if (static_cast<int>(row.size()) != *num_classes) return false;
    flat->insert(flat->end(), row.begin(), row.end());
  }
  return true;
}

// The shared checks of LogLoss and Accuracy.
bool ValidClassLayout(size_t values, int num_classes,
                      absl::Span<const int> labels) {
  if (num_classes < 1 || labels.empty() ||
      values != labels.size() * static_cast<size_t>(num_classes)) {
    return false;
  }
  return std::all_of(labels.begin(), labels.end(), [&](int label) {
    return label >= 0 && label < num_classes;
  });
}

}  // namespace

double Auc(absl::Span<const double> scores, absl::Span<const int> labels) {
  if (scores.size() != labels.size()) return kNaN;
  std::vector<size_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  double positive_rank_sum = 0;
  int64_t positives = 0;
  for (size_t i = 0; i < order.size();) {
    // Items i..j-1 tie; each gets the mean of ranks i+1..j.
    size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double mid_rank = (static_cast<double>(i + 1) + j) / 2.0;
    for (size_t k = i; k < j; ++k) {
      if (labels[order[k]] != 0) {
        positive_rank_sum += mid_rank;
        ++positives;
      }
    }
    i = j;
  }
  const int64_t negatives = static_cast<int64_t>(scores.size()) - positives;
  if (positives == 0 || negatives == 0) return kNaN;
  const double p = static_cast<double>(positives);
  return (positive_rank_sum - p * (p + 1) / 2.0) /
         (p * static_cast<double>(negatives));
}

double LogLoss(absl::Span<const double> probabilities, int num_classes,
               absl::Span<const int> labels) {
  if (!ValidClassLayout(probabilities.size(), num_classes, labels)) {
    return kNaN;
  }
  double total = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const double p = probabilities[i * num_classes + labels[i]];
    total -= std::log(std::max(p, kMinProbability));
  }
  return total / static_cast<double>(labels.size());
}

double LogLoss(const std::vector<std::vector<double>>& probabilities,
               absl::Span<const int> labels) {
  std::vector<double> flat;
  int num_classes = 0;
  if (!Flatten(probabilities, &flat, &num_classes)) return kNaN;
  return LogLoss(flat, num_classes, labels);
}

double BinaryLogLoss(absl::Span<const double> p_positive,
                     absl::Span<const int> labels) {
  if (p_positive.size() != labels.size() || labels.empty()) return kNaN;
  double total = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const double p = labels[i] != 0 ? p_positive[i] : 1.0 - p_positive[i];
    total -= std::log(std::max(p, kMinProbability));
  }
  return total / static_cast<double>(labels.size());
}

double Accuracy(absl::Span<const double> scores, int num_classes,
                absl::Span<const int> labels) {
  if (!ValidClassLayout(scores.size(), num_classes, labels)) return kNaN;
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const double* row = scores.data() + i * num_classes;
    // max_element returns the first of equal maxima: ties go to the lowest.
    const auto best = std::max_element(row, row + num_classes) - row;
    if (best == labels[i]) ++correct;
  }
  return static_cast<double>(correct) / static_cast<double>(labels.size());
}

double Accuracy(const std::vector<std::vector<double>>& scores,
                absl::Span<const int> labels) {
  std::vector<double> flat;
  int num_classes = 0;
  if (!Flatten(scores, &flat, &num_classes)) return kNaN;
  return Accuracy(flat, num_classes, labels);
}

double Rmse(absl::Span<const double> predicted,
            absl::Span<const double> truth) {
  if (predicted.size() != truth.size() || truth.empty()) return kNaN;
  double total = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    const double error = predicted[i] - truth[i];
    total += error * error;
  }
  return std::sqrt(total / static_cast<double>(truth.size()));
}

double Mae(absl::Span<const double> predicted, absl::Span<const double> truth) {
  if (predicted.size() != truth.size() || truth.empty()) return kNaN;
  double total = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    total += std::abs(predicted[i] - truth[i]);
  }
  return total / static_cast<double>(truth.size());
}

std::vector<std::string> MetricWords(std::string_view text) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (IsAsciiSpace(c)) {
      ++i;
    } else if (IsWordByte(c)) {
      size_t j = i;
      std::string word;
      while (j < text.size() &&
             IsWordByte(static_cast<unsigned char>(text[j]))) {
        const auto b = static_cast<unsigned char>(text[j]);
        word.push_back(b >= 'A' && b <= 'Z' ? static_cast<char>(b - 'A' + 'a')
                                            : static_cast<char>(b));
        ++j;
      }
      words.push_back(std::move(word));
      i = j;
    } else {
      words.emplace_back(1, text[i]);
      ++i;
    }
  }
  return words;
}

double Bleu4(absl::Span<const std::string> candidates,
             absl::Span<const std::string> references) {
  if (candidates.size() != references.size() || candidates.empty()) {
    return kNaN;
  }
  constexpr size_t kMaxOrder = 4;
  int64_t matches[kMaxOrder] = {0, 0, 0, 0};
  int64_t totals[kMaxOrder] = {0, 0, 0, 0};
  int64_t candidate_length = 0, reference_length = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const std::vector<std::string> candidate = MetricWords(candidates[i]);
    const std::vector<std::string> reference = MetricWords(references[i]);
    candidate_length += static_cast<int64_t>(candidate.size());
    reference_length += static_cast<int64_t>(reference.size());
    for (size_t n = 1; n <= kMaxOrder; ++n) {
      matches[n - 1] +=
          ClippedMatches(CountNgrams(candidate, n), CountNgrams(reference, n));
      totals[n - 1] += NgramTotal(candidate.size(), n);
    }
  }
  double log_precision_sum = 0;
  for (size_t n = 0; n < kMaxOrder; ++n) {
    if (matches[n] == 0) return 0;
    log_precision_sum += std::log(static_cast<double>(matches[n]) / totals[n]);
  }
  const double c = static_cast<double>(candidate_length);
  const double r = static_cast<double>(reference_length);
  const double log_brevity = c > r ? 0.0 : 1.0 - r / c;
  return 100.0 * std::exp(log_brevity + log_precision_sum / kMaxOrder);
}

RougeScores Rouge(absl::Span<const std::string> candidates,
                  absl::Span<const std::string> references) {
  if (candidates.size() != references.size() || candidates.empty()) {
    return {kNaN, kNaN, kNaN};
  }
  MeanAccumulator rouge1, rouge2, rouge_l;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const std::vector<std::string> candidate = RougeWords(candidates[i]);
    const std::vector<std::string> reference = RougeWords(references[i]);
    for (size_t n = 1; n <= 2; ++n) {
      const int64_t overlap =
          ClippedMatches(CountNgrams(candidate, n), CountNgrams(reference, n));
      (n == 1 ? rouge1 : rouge2)
          .Add(F1(overlap, NgramTotal(candidate.size(), n),
                  NgramTotal(reference.size(), n)));
    }
    rouge_l.Add(F1(LcsLength(candidate, reference),
                   static_cast<int64_t>(candidate.size()),
                   static_cast<int64_t>(reference.size())));
  }
  return {100.0 * rouge1.Mean(), 100.0 * rouge2.Mean(), 100.0 * rouge_l.Mean()};
}

double HitRate(int64_t rank, int k) {
  return rank >= 0 && rank < k ? 1.0 : 0.0;
}

double Ndcg(int64_t rank, int k) {
  return rank >= 0 && rank < k ? 1.0 / std::log2(static_cast<double>(rank) + 2)
                               : 0.0;
}

double MeanAccumulator::Mean() const {
  return count_ == 0 ? kNaN : sum_ / static_cast<double>(count_);
}

RankingAccumulator::RankingAccumulator(std::vector<int> ks)
    : ks_(std::move(ks)), hit_rate_(ks_.size()), ndcg_(ks_.size()) {}

void RankingAccumulator::Add(int64_t rank) {
  for (size_t i = 0; i < ks_.size(); ++i) {
    hit_rate_[i].Add(HitRate(rank, ks_[i]));
    ndcg_[i].Add(Ndcg(rank, ks_[i]));
  }
  ++count_;
}

std::vector<RankingAtK> RankingAccumulator::Means() const {
  std::vector<RankingAtK> means;
  for (size_t i = 0; i < ks_.size(); ++i) {
    means.push_back({ks_[i], hit_rate_[i].Mean(), ndcg_[i].Mean()});
  }
  return means;
}

}  // namespace optrec
