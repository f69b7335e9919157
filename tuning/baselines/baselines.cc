#include "tuning/baselines/baselines.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/util/jsonl.h"
#include "core/util/status_macros.h"
#include "tuning/metrics/metrics.h"

namespace optrec {
namespace {

using Json = nlohmann::json;

Json Number(double v) { return std::isfinite(v) ? Json(v) : Json(); }

std::string TaskFile(const BaselineOptions& o, const std::string& task,
                     const std::string& split) {
  return absl::StrCat(o.world, "/tasks/", task, "/", split, ".jsonl");
}

// The catalog fields the baselines use.
struct Item {
  std::string id, title, top, sub, leaf, brand, colour, band;
};

struct World {
  std::vector<Item> items;
  std::unordered_map<std::string, int64_t> by_id;
  // Titles are not unique; every item sharing a title shares its leaf,
  // brand and colour, so any of them stands for the title.
  std::unordered_map<std::string, int64_t> by_title;
};

absl::StatusOr<World> ReadCatalog(const std::string& dir) {
  World w;
  const std::string path = dir + "/catalog.jsonl";
  RETURN_IF_ERROR(ForEachJsonl(
      path, [&](int64_t line, const Json& j) -> absl::StatusOr<bool> {
        try {
          Item it;
          it.id = j.at("item_id").get<std::string>();
          it.title = j.at("title").get<std::string>();
          const auto& cat = j.at("category");
          it.top = cat.at(0).get<std::string>();
          it.sub = cat.at(1).get<std::string>();
          it.leaf = cat.at(2).get<std::string>();
          it.brand = j.at("brand").get<std::string>();
          it.colour = j.at("colour").get<std::string>();
          it.band = j.at("price_band").get<std::string>();
          w.by_id[it.id] = static_cast<int64_t>(w.items.size());
          w.by_title.emplace(it.title, static_cast<int64_t>(w.items.size()));
          w.items.push_back(std::move(it));
        } catch (const std::exception& e) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ":", line, ": not a catalog line: ", e.what()));
        }
        return true;
      }));
  return w;
}

// Calls fn(line, value) for each line of a task split, turning access
// errors into InvalidArgument naming the line.
absl::Status ForEachExample(const std::string& path,
                            const std::function<void(const Json&)>& fn) {
  return ForEachJsonl(path,
                      [&](int64_t line, const Json& j) -> absl::StatusOr<bool> {
                        try {
                          fn(j);
                        } catch (const std::exception& e) {
                          // A missing field (json), or an id or index the
                          // catalog lookups do not find (out_of_range).
                          return absl::InvalidArgumentError(
                              absl::StrCat(path, ":", line, ": ", e.what()));
                        }
                        return true;
                      });
}

// ---- Click scoring. ----

// "Shopper aged 25-34 from the South, member for 15 months".
struct Profile {
  std::string age, region, tenure;
};

Profile ParseProfile(const std::string& text) {
  Profile p;
  auto after = [&](const std::string& key, const std::string& end) {
    const size_t at = text.find(key);
    if (at == std::string::npos) return std::string();
    const size_t from = at + key.size();
    return text.substr(from, text.find(end, from) - from);
  };
  p.age = after("aged ", " ");
  p.region = after("from the ", ",");
  int64_t months = 0;
  (void)absl::SimpleAtoi(after("member for ", " "), &months);
  p.tenure = months < 6    ? "<6"
             : months < 12 ? "<12"
             : months < 24 ? "<24"
             : months < 48 ? "<48"
                           : "48+";
  return p;
}

// The item a behaviour segment names ("Clicked: <title>", "Purchased:
// <title>", "Reviewed: <title>, N stars"), or -1; `kind` gets its verb.
int64_t BehaviourItem(const World& w, const std::string& segment,
                      std::string* kind) {
  const size_t colon = segment.find(": ");
  if (colon == std::string::npos) return -1;
  *kind = segment.substr(0, colon);
  std::string title = segment.substr(colon + 2);
  if (*kind == "Reviewed") title = title.substr(0, title.rfind(", "));
  auto it = w.by_title.find(title);
  return it == w.by_title.end() ? -1 : it->second;
}

std::string Capped(int64_t n) {
  return std::to_string(std::min<int64_t>(n, 3));
}

// The categorical features of one (shopper, history, item) example:
// shopper (age band, region, tenure bucket), item (id, category levels,
// brand, colour, price band), crosses of shopper and item, and how the
// recent behaviour matches the item (counts capped at 3 of clicks and
// purchases in its leaf, subcategory, brand and colour; a search naming its
// leaf; the last behaviour's match).
std::vector<std::string> CtrFeatures(const World& w, const Json& example) {
  const Json& s = example.at("segments");
  const Profile p = ParseProfile(s.at("profile").get<std::string>());
  const Item& item = w.items.at(w.by_id.at(example.at("item_id")));
  std::vector<std::string> f = {"age=" + p.age,
                                "region=" + p.region,
                                "tenure=" + p.tenure,
                                "item=" + item.id,
                                "top=" + item.top,
                                "sub=" + item.sub,
                                "leaf=" + item.leaf,
                                "brand=" + item.brand,
                                "colour=" + item.colour,
                                "band=" + item.band,
                                "age*top=" + p.age + item.top,
                                "region*top=" + p.region + item.top,
                                "age*band=" + p.age + item.band,
                                "tenure*band=" + p.tenure + item.band};
  int64_t leaf_clicks = 0, sub_clicks = 0, brand_clicks = 0, colour_clicks = 0;
  int64_t leaf_buys = 0, searches = 0;
  std::string last = "none";
  const Json& history = s.at("history");
  for (size_t i = 0; i < history.size(); ++i) {
    const std::string seg = history[i].get<std::string>();
    std::string kind, match = "other";
    if (absl::StartsWith(seg, "Searched: ")) {
      if (absl::StrContains(seg, item.leaf)) {
        ++searches;
        match = "search-leaf";
      }
    } else {
      const int64_t h = BehaviourItem(w, seg, &kind);
      if (h >= 0) {
        const Item& other = w.items[h];
        const bool leaf = other.leaf == item.leaf, sub = other.sub == item.sub;
        if (kind == "Purchased") {
          leaf_buys += leaf ? 1 : 0;
        } else {
          leaf_clicks += leaf ? 1 : 0;
          sub_clicks += sub ? 1 : 0;
          brand_clicks += other.brand == item.brand ? 1 : 0;
          colour_clicks +=
              !item.colour.empty() && other.colour == item.colour ? 1 : 0;
        }
        match = kind + (leaf ? "-leaf" : sub ? "-sub" : "-other");
      }
    }
    if (i + 1 == history.size()) last = match;
  }
  f.push_back("leaf_clicks=" + Capped(leaf_clicks));
  f.push_back("sub_clicks=" + Capped(sub_clicks));
  f.push_back("brand_clicks=" + Capped(brand_clicks));
  f.push_back("colour_clicks=" + Capped(colour_clicks));
  f.push_back("leaf_buys=" + Capped(leaf_buys) + "*" + item.top);
  f.push_back("searches=" + Capped(searches));
  f.push_back("last=" + last);
  return f;
}

struct CtrData {
  std::vector<std::vector<int64_t>> features;  // hashed buckets
  std::vector<int> labels;
  std::vector<std::string> items;
  std::vector<double> oracle;  // the world's p_click
};

constexpr int64_t kBuckets = 1 << 18;

absl::StatusOr<CtrData> ReadCtr(const World& w, const std::string& path) {
  CtrData d;
  std::hash<std::string> hash;
  RETURN_IF_ERROR(ForEachExample(path, [&](const Json& j) {
    std::vector<int64_t> buckets;
    for (const std::string& f : CtrFeatures(w, j)) {
      buckets.push_back(static_cast<int64_t>(hash(f) % kBuckets));
    }
    d.features.push_back(std::move(buckets));
    d.labels.push_back(j.at("label").get<int>());
    d.items.push_back(j.at("item_id").get<std::string>());
    d.oracle.push_back(j.at("p_click").get<double>());
  }));
  return d;
}

// Logistic regression over hashed one-hot features: a bias plus one weight
// per bucket, fitted with Adam on the log loss (L2 on the weights).
std::vector<double> FitAndPredict(const CtrData& train, const CtrData& test,
                                  const BaselineOptions& o) {
  torch::manual_seed(o.seed);
  torch::Tensor weights = torch::zeros({kBuckets}, torch::requires_grad());
  torch::Tensor bias = torch::zeros({1}, torch::requires_grad());
  torch::optim::Adam adam({weights, bias},
                          torch::optim::AdamOptions(o.logreg_learning_rate));
  auto batch_logits = [&](const CtrData& d, const std::vector<int64_t>& rows) {
    std::vector<int64_t> flat, offsets;
    for (int64_t r : rows) {
      offsets.push_back(static_cast<int64_t>(flat.size()));
      flat.insert(flat.end(), d.features[r].begin(), d.features[r].end());
    }
    auto bag = torch::embedding_bag(
        weights.unsqueeze(1), torch::tensor(flat, torch::kInt64),
        torch::tensor(offsets, torch::kInt64), false, /*mode=sum*/ 0);
    return std::get<0>(bag).squeeze(1) + bias;
  };
  const int64_t n = static_cast<int64_t>(train.labels.size());
  constexpr int64_t kBatch = 256;
  for (int64_t epoch = 0; epoch < o.logreg_epochs; ++epoch) {
    torch::Tensor order = torch::randperm(n, torch::kInt64);
    for (int64_t start = 0; start < n; start += kBatch) {
      std::vector<int64_t> rows;
      std::vector<float> y;
      for (int64_t i = start; i < std::min(n, start + kBatch); ++i) {
        rows.push_back(order[i].item<int64_t>());
        y.push_back(static_cast<float>(train.labels[rows.back()]));
      }
      torch::Tensor logits = batch_logits(train, rows);
      torch::Tensor loss =
          torch::binary_cross_entropy_with_logits(logits, torch::tensor(y)) +
          o.logreg_l2 * weights.pow(2).sum();
      adam.zero_grad();
      loss.backward();
      adam.step();
    }
  }
  torch::NoGradGuard no_grad;
  std::vector<double> p;
  for (int64_t start = 0; start < static_cast<int64_t>(test.labels.size());
       start += kBatch) {
    std::vector<int64_t> rows;
    for (int64_t i = start;
         i < std::min<int64_t>(test.labels.size(), start + kBatch); ++i) {
      rows.push_back(i);
    }
    torch::Tensor probs = torch::sigmoid(batch_logits(test, rows));
    for (int64_t i = 0; i < probs.size(0); ++i) {
      p.push_back(probs[i].item<double>());
    }
  }
  return p;
}

Json BinaryMetrics(const std::vector<double>& p, const std::vector<int>& y) {
  return {{"auc", Number(Auc(p, y))},
          {"log_loss", Number(BinaryLogLoss(p, y))},
          {"examples", y.size()}};
}

absl::StatusOr<Json> CtrBaselines(const World& w, const BaselineOptions& o) {
  ASSIGN_OR_RETURN(CtrData train, ReadCtr(w, TaskFile(o, "ctr", "train")));
  ASSIGN_OR_RETURN(CtrData test, ReadCtr(w, TaskFile(o, "ctr", o.split)));
  // Popularity: the item's training click rate, shrunk to the mean with
  // the weight of 10 impressions.
  std::unordered_map<std::string, std::pair<double, double>> counts;
  double clicks = 0;
  for (size_t i = 0; i < train.labels.size(); ++i) {
    counts[train.items[i]].first += train.labels[i];
    counts[train.items[i]].second += 1;
    clicks += train.labels[i];
  }
  if (train.labels.empty() || test.labels.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        TaskFile(o, "ctr", train.labels.empty() ? "train" : o.split),
        ": no examples"));
  }
  const double mean = clicks / train.labels.size();
  std::vector<double> popularity;
  for (const std::string& item : test.items) {
    const auto& c = counts[item];
    popularity.push_back((c.first + 10 * mean) / (c.second + 10));
  }
  Json out;
  out["oracle"] = BinaryMetrics(test.oracle, test.labels);
  out["popularity"] = BinaryMetrics(popularity, test.labels);
  out["logistic_regression"] =
      BinaryMetrics(FitAndPredict(train, test, o), test.labels);
  return out;
}

// ---- Rating. ----

absl::StatusOr<Json> RatingBaseline(const BaselineOptions& o) {
  std::unordered_map<std::string, std::pair<double, double>> sums;
  double total = 0, n = 0;
  RETURN_IF_ERROR(
      ForEachExample(TaskFile(o, "rating", "train"), [&](const Json& j) {
        const double r = j.at("target").get<double>();
        auto& s = sums[j.at("item_id").get<std::string>()];
        s.first += r;
        s.second += 1;
        total += r;
        n += 1;
      }));
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(TaskFile(o, "rating", "train"), ": no examples"));
  }
  const double mean = total / n;
  std::vector<double> predicted, truth;
  int64_t right = 0;
  RETURN_IF_ERROR(
      ForEachExample(TaskFile(o, "rating", o.split), [&](const Json& j) {
        const auto& s = sums[j.at("item_id").get<std::string>()];
        // The item's mean rating, shrunk to the global mean with weight 5.
        const double p = (s.first + 5 * mean) / (s.second + 5);
        predicted.push_back(p);
        truth.push_back(j.at("target").get<double>());
        right += std::lround(p) == std::lround(truth.back()) ? 1 : 0;
      }));
  return Json{{"popularity",
               {{"rmse", Number(Rmse(predicted, truth))},
                {"mae", Number(Mae(predicted, truth))},
                {"accuracy", static_cast<double>(right) / truth.size()},
                {"examples", truth.size()}}}};
}

// ---- Item popularity rankings. ----

// Training-target counts of each catalog item of a task's split.
absl::StatusOr<std::vector<double>> TargetCounts(const World& w,
                                                 const std::string& path) {
  std::vector<double> counts(w.items.size(), 0.0);
  RETURN_IF_ERROR(ForEachExample(path, [&](const Json& j) {
    auto it = w.by_id.find(j.at("target_item_id").get<std::string>());
    if (it != w.by_id.end()) counts[it->second] += 1;
  }));
  return counts;
}

// Rank of `target` when items are sorted by count, ties broken by catalog
// order (so ties give no credit for free).
int64_t PopularityRank(const std::vector<double>& counts,
                       const std::vector<int64_t>& candidates, int64_t target) {
  int64_t rank = 0;
  for (int64_t c : candidates) {
    if (counts[c] > counts[target] ||
        (counts[c] == counts[target] && c < target)) {
      ++rank;
    }
  }
  return rank;
}

const std::vector<int> kCutoffs = {1, 5, 10, 20};

Json RankingMetrics(const RankingAccumulator& acc) {
  Json out = {{"examples", acc.count()}};
  for (const RankingAtK& r : acc.Means()) {
    out[absl::StrCat("hr@", r.k)] = Number(r.hit_rate);
    out[absl::StrCat("ndcg@", r.k)] = Number(r.ndcg);
  }
  return out;
}

absl::StatusOr<Json> CatalogPopularity(const World& w, const BaselineOptions& o,
                                       const std::string& task) {
  ASSIGN_OR_RETURN(std::vector<double> counts,
                   TargetCounts(w, TaskFile(o, task, "train")));
  std::vector<int64_t> all(w.items.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  RankingAccumulator acc(kCutoffs);
  RETURN_IF_ERROR(
      ForEachExample(TaskFile(o, task, o.split), [&](const Json& j) {
        const int64_t target =
            w.by_id.at(j.at("target_item_id").get<std::string>());
        acc.Add(PopularityRank(counts, all, target));
      }));
  return Json{{"popularity", RankingMetrics(acc)}};
}

absl::StatusOr<Json> DirectPopularity(const World& w,
                                      const BaselineOptions& o) {
  // Candidates ranked by how often they were clicked next in training.
  ASSIGN_OR_RETURN(std::vector<double> counts,
                   TargetCounts(w, TaskFile(o, "next_click", "train")));
  RankingAccumulator acc(kCutoffs);
  RETURN_IF_ERROR(
      ForEachExample(TaskFile(o, "direct", o.split), [&](const Json& j) {
        std::vector<int64_t> candidates;
        for (const Json& id : j.at("candidate_item_ids")) {
          candidates.push_back(w.by_id.at(id.get<std::string>()));
        }
        const int64_t target =
            candidates.at(j.at("positive_index").get<int64_t>());
        acc.Add(PopularityRank(counts, candidates, target));
      }));
  return Json{{"popularity", RankingMetrics(acc)}};
}

// ---- Text. ----

absl::StatusOr<Json> MostFrequentText(const BaselineOptions& o,
                                      const std::string& task) {
  std::map<std::string, int64_t> counts;
  RETURN_IF_ERROR(ForEachExample(
      TaskFile(o, task, "train"),
      [&](const Json& j) { ++counts[j.at("target").get<std::string>()]; }));
  std::string best;
  int64_t top = -1;
  for (const auto& [text, n] : counts) {
    if (n > top) {
      best = text;
      top = n;
    }
  }
  std::vector<std::string> outputs, references;
  RETURN_IF_ERROR(
      ForEachExample(TaskFile(o, task, o.split), [&](const Json& j) {
        outputs.push_back(best);
        references.push_back(j.at("target").get<std::string>());
      }));
  const RougeScores rouge = Rouge(outputs, references);
  return Json{{"popularity",
               {{"output", best},
                {"bleu4", Number(Bleu4(outputs, references))},
                {"rouge1", Number(rouge.rouge1)},
                {"rouge2", Number(rouge.rouge2)},
                {"rouge_l", Number(rouge.rouge_l)},
                {"examples", references.size()}}}};
}

}  // namespace

absl::StatusOr<Json> RunBaselines(const BaselineOptions& o) {
  if (o.split != "valid" && o.split != "test") {
    return absl::InvalidArgumentError(
        absl::StrCat("split must be valid or test, got '", o.split, "'"));
  }
  ASSIGN_OR_RETURN(World w, ReadCatalog(o.world));
  Json out;
  ASSIGN_OR_RETURN(out["ctr"], CtrBaselines(w, o));
  ASSIGN_OR_RETURN(out["rating"], RatingBaseline(o));
  ASSIGN_OR_RETURN(out["next_click"], CatalogPopularity(w, o, "next_click"));
  ASSIGN_OR_RETURN(out["sequential"], CatalogPopularity(w, o, "sequential"));
  ASSIGN_OR_RETURN(out["direct"], DirectPopularity(w, o));
  for (const char* task : {"explanation", "p5_explanation", "review_summary"}) {
    ASSIGN_OR_RETURN(out[task], MostFrequentText(o, task));
  }
  return out;
}

}  // namespace optrec
