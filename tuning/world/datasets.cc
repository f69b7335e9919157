#include "tuning/world/datasets.h"

#include <cmath>
#include <fstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tuning/metrics/metrics.h"
#include "tuning/world/jsonl.h"
#include "tuning/world/lexicon.h"
#include "tuning/world/simulate.h"

namespace optrec {
namespace {

// Users (and items) whose corpus documents go to corpus/valid.jsonl, in
// percent.
constexpr uint64_t kCorpusValidPercent = 5;

int CorpusSplit(const ShopWorld& world, StreamKind kind, int64_t index) {
  const uint64_t hash = StreamSeed(world.config().seed, kind, index);
  return hash % 100 < kCorpusValidPercent ? 1 : 0;
}

std::string Fixed2(double value) { return absl::StrFormat("%.2f", value); }

// Renders one user's task examples while walking the timeline once.
class ExampleWriter {
 public:
  ExampleWriter(const ShopWorld& world, int64_t user_index,
                const UserTimeline& timeline, UserRecords* out)
      : world_(world),
        user_(world.user(user_index)),
        timeline_(timeline),
        out_(out),
        rng_(world.config().seed, StreamKind::kExamples, user_index),
        user_id_(ShopWorld::UserId(user_index)),
        profile_(world.ProfileText(user_)) {}

  void Run();

 private:
  // The "segments" object: profile, history, then `extra` (already JSON
  // key-value text, or empty).
  std::string Segments(size_t history_end, const std::string& extra) const;
  // A line's head: user_id, time, segments.
  JsonObject Head(int64_t time_s, size_t history_end,
                  const std::string& extra = "") const;
  std::string Candidate(int32_t item) const;
  void Emit(Task task, int64_t time_s, const JsonObject& line);
  void OnImpression(const Event& e);
  void OnClick(const Event& e);
  void OnPurchase(const Event& e);
  void OnSearch(const Event& e);
  void OnReview(const Event& e, const Review& review);
  void WriteDirect(const Event& click, size_t history_end);

  const ShopWorld& world_;
  const User& user_;
  const UserTimeline& timeline_;
  UserRecords* out_;
  Rng rng_;
  const std::string user_id_;
  const std::string profile_;
  std::vector<std::string> behaviours_;  // segments so far, oldest first
  // Item -> its latest click: time and history length just before it. A
  // purchase always follows a click on the same item, so purchase examples
  // are made at that click (their time, split and history): a history up
  // to the purchase would end by naming the answer ("Clicked: X" before
  // "next purchase: X").
  struct Click {
    int64_t time_s = 0;
    size_t history_end = 0;
  };
  std::unordered_map<int32_t, Click> last_click_;
};

void ExampleWriter::Run() {
  // Drawn first, so it does not depend on how many impressions come later.
  const bool direct_user =
      rng_.Uniform() < world_.config().direct_user_fraction;
  // The last click of each split: (event index, history length then).
  std::pair<int64_t, size_t> last_click[kNumSplits] = {
      {-1, 0}, {-1, 0}, {-1, 0}};
  size_t review_index = 0;
  for (size_t i = 0; i < timeline_.events.size(); ++i) {
    const Event& e = timeline_.events[i];
    switch (e.type) {
      case EventType::kImpression:
        OnImpression(e);
        break;
      case EventType::kClick:
        OnClick(e);
        last_click[static_cast<int>(SplitOf(world_, e.time_s))] = {
            static_cast<int64_t>(i), behaviours_.size()};
        break;
      case EventType::kPurchase:
        OnPurchase(e);
        break;
      case EventType::kSearch:
        OnSearch(e);
        break;
      case EventType::kReview:
        OnReview(e, timeline_.reviews[review_index++]);
        break;
    }
    if (e.type != EventType::kImpression) {
      behaviours_.push_back(world_.BehaviourText(e));
    }
  }
  if (!direct_user) return;
  for (const auto& [event, history_end] : last_click) {
    if (event >= 0) WriteDirect(timeline_.events[event], history_end);
  }
}

std::string ExampleWriter::Segments(size_t history_end,
                                    const std::string& extra) const {
  const size_t begin =
      history_end > kHistorySegments ? history_end - kHistorySegments : 0;
  std::vector<std::string> history(behaviours_.begin() + begin,
                                   behaviours_.begin() + history_end);
  JsonObject segments;
  segments.Str("profile", profile_).StrList("history", history);
  std::string text = segments.Build();
  if (!extra.empty()) {
    text.pop_back();  // the closing brace
    absl::StrAppend(&text, ",", extra, "}");
  }
  return text;
}

JsonObject ExampleWriter::Head(int64_t time_s, size_t history_end,
                               const std::string& extra) const {
  JsonObject line;
  line.Str("user_id", user_id_)
      .Int("time", time_s)
      .Raw("segments", Segments(history_end, extra));
  return line;
}

std::string ExampleWriter::Candidate(int32_t item) const {
  std::string text = "\"candidate\":";
  AppendJsonString(&text, world_.ItemText(world_.item(item)));
  return text;
}

void ExampleWriter::Emit(Task task, int64_t time_s, const JsonObject& line) {
  const int split = static_cast<int>(SplitOf(world_, time_s));
  line.AppendLine(&out_->tasks[static_cast<int>(task)][split]);
}

void ExampleWriter::OnImpression(const Event& e) {
  // Always drawn, so the sample of one impression does not shift others.
  if (rng_.Uniform() >= world_.config().ctr_sample_rate) return;
  const bool clicked = [&] {
    // The impression was clicked if a click on the same item follows in the
    // same session before the next page is shown.
    const auto& events = timeline_.events;
    size_t i = &e - events.data() + 1;
    while (i < events.size() && events[i].type == EventType::kImpression) ++i;
    for (; i < events.size() && events[i].type != EventType::kImpression &&
           events[i].session == e.session;
         ++i) {
      if (events[i].type == EventType::kClick && events[i].item == e.item) {
        return true;
      }
    }
    return false;
  }();
  JsonObject line = Head(e.time_s, behaviours_.size(), Candidate(e.item));
  line.Str("item_id", ShopWorld::ItemId(e.item))
      .Int("label", clicked ? 1 : 0)
      .Num("p_click", e.p_click);
  Emit(Task::kCtr, e.time_s, line);
}

void ExampleWriter::OnClick(const Event& e) {
  last_click_[e.item] = {e.time_s, behaviours_.size()};
  JsonObject line = Head(e.time_s, behaviours_.size());
  line.Str("target_item_id", ShopWorld::ItemId(e.item))
      .Str("target", world_.ItemText(world_.item(e.item)));
  Emit(Task::kNextClick, e.time_s, line);
}

void ExampleWriter::OnPurchase(const Event& e) {
  const Item& item = world_.item(e.item);
  const auto found = last_click_.find(e.item);
  const Click at = found != last_click_.end()
                       ? found->second
                       : Click{e.time_s, behaviours_.size()};
  JsonObject design = Head(at.time_s, at.history_end);
  design.Str("item_id", ShopWorld::ItemId(e.item))
      .Str("target", absl::StrCat("Category: ", world_.CategoryPath(item),
                                  ". Title: ", world_.ItemTitle(item)));
  Emit(Task::kProductDesign, at.time_s, design);

  JsonObject sequential = Head(at.time_s, at.history_end);
  sequential.Str("target_item_id", ShopWorld::ItemId(e.item))
      .Str("target", world_.ItemTitle(item));
  Emit(Task::kSequential, at.time_s, sequential);
}

void ExampleWriter::OnSearch(const Event& e) {
  JsonObject line = Head(e.time_s, behaviours_.size());
  line.Str("target", e.query);
  Emit(Task::kQueryGen, e.time_s, line);
}

void ExampleWriter::OnReview(const Event& e, const Review& review) {
  const size_t n = behaviours_.size();
  const std::string item_id = ShopWorld::ItemId(e.item);
  const std::string candidate = Candidate(e.item);

  JsonObject explanation = Head(e.time_s, n, candidate);
  explanation.Str("item_id", item_id).Str("target", review.explanation);
  Emit(Task::kExplanation, e.time_s, explanation);

  JsonObject rating = Head(e.time_s, n, candidate);
  rating.Str("item_id", item_id).Int("target", review.rating);
  Emit(Task::kRating, e.time_s, rating);

  const ReviewSentence& sentence = review.sentences.front();
  JsonObject p5 = Head(e.time_s, n, candidate);
  p5.Str("item_id", item_id)
      .Str("feature", sentence.aspect)
      .Str("target", sentence.text);
  Emit(Task::kP5Explanation, e.time_s, p5);

  JsonObject summary = Head(e.time_s, n, candidate);
  summary.Str("item_id", item_id)
      .Str("review", review.Text())
      .Str("target", review.summary);
  Emit(Task::kReviewSummary, e.time_s, summary);
}

void ExampleWriter::WriteDirect(const Event& click, size_t history_end) {
  // Negatives: items the user never saw, clicked, bought or reviewed over
  // the whole timeline, later events included, as in P5's protocol (a
  // negative is an item without any interaction of the user). This only
  // decides which items are negatives; no input text sees the future.
  std::unordered_set<int32_t> touched;
  for (const Event& e : timeline_.events) {
    if (e.item >= 0) touched.insert(e.item);
  }
  // A tiny catalog may not have enough untouched items: no example then.
  if (world_.num_items() - static_cast<int64_t>(touched.size()) <
      kDirectCandidates - 1) {
    return;
  }
  std::vector<int32_t> candidates;
  std::unordered_set<int32_t> chosen;
  while (static_cast<int>(candidates.size()) < kDirectCandidates - 1) {
    const auto item = static_cast<int32_t>(rng_.UniformInt(world_.num_items()));
    if (touched.count(item) || !chosen.insert(item).second) continue;
    candidates.push_back(item);
  }
  const auto positive_index =
      static_cast<int64_t>(rng_.UniformInt(kDirectCandidates));
  candidates.insert(candidates.begin() + positive_index, click.item);

  std::vector<std::string> texts, ids;
  std::vector<int> labels;
  for (int32_t item : candidates) {
    texts.push_back(world_.ItemText(world_.item(item)));
    ids.push_back(ShopWorld::ItemId(item));
    labels.push_back(item == click.item ? 1 : 0);
  }
  std::string extra = "\"candidates\":";
  {
    JsonObject wrapper;
    wrapper.StrList("x", texts);
    const std::string built = wrapper.Build();
    // {"x":[...]} -> [...]
    extra.append(built, 5, built.size() - 6);
  }
  JsonObject line = Head(click.time_s, history_end, extra);
  line.StrList("candidate_item_ids", ids)
      .Int("positive_index", positive_index)
      .Raw("labels", absl::StrCat("[", absl::StrJoin(labels, ","), "]"))
      .Str("target_item_id", ShopWorld::ItemId(click.item));
  Emit(Task::kDirect, click.time_s, line);
}

void RenderProfile(const ShopWorld& world, const User& user, UserRecords* out) {
  const std::string user_id = ShopWorld::UserId(user.index);
  JsonObject profile;
  profile.Str("user_id", user_id)
      .Str("age_band", AgeBands()[user.age_band])
      .Str("region", Regions()[user.region])
      .Int("tenure_months", user.tenure_months)
      .Str("profile", world.ProfileText(user));
  profile.AppendLine(&out->users);

  JsonObject interests;
  for (const auto& [leaf, weight] : user.interests) {
    interests.Num(world.LeafPath(leaf), weight);
  }
  JsonObject colours;
  for (int c = 0; c < kNumColours; ++c) {
    colours.Num(Colours()[c], user.colour_weights[c]);
  }
  JsonObject brands;
  for (size_t b = 0; b < world.brands().size(); ++b) {
    brands.Num(world.brands()[b], user.brand_affinity[b]);
  }
  JsonObject oracle;
  oracle.Str("user_id", user_id)
      .Raw("interests", interests.Build())
      .Num("background_interest", user.background_interest)
      .Raw("colour_weights", colours.Build())
      .Raw("brand_affinity", brands.Build())
      .Num("price_sensitivity", user.price_sensitivity)
      .Num("sessions_per_day", user.sessions_per_day)
      .Num("bias", user.bias);
  oracle.AppendLine(&out->oracle_users);
}

void RenderEvents(const ShopWorld& world, const User& user,
                  const UserTimeline& timeline, UserRecords* out) {
  const std::string user_id = ShopWorld::UserId(user.index);
  size_t review_index = 0;
  for (const Event& e : timeline.events) {
    if (e.type == EventType::kReview) {
      const Review& review = timeline.reviews[review_index++];
      std::vector<std::string> aspects;
      for (const ReviewSentence& s : review.sentences) {
        aspects.push_back(s.aspect);
      }
      JsonObject line;
      line.Str("user_id", user_id)
          .Str("item_id", ShopWorld::ItemId(review.item))
          .Int("time", review.time_s)
          .Int("rating", review.rating)
          .Str("summary", review.summary)
          .Str("text", review.Text())
          .Str("explanation", review.explanation)
          .StrList("aspects", aspects);
      line.AppendLine(&out->reviews);
      ++out->review_count;
      continue;
    }
    JsonObject line;
    line.Str("user_id", user_id)
        .Int("time", e.time_s)
        .Str("type", EventTypeName(e.type));
    if (e.type == EventType::kSearch) {
      line.Str("query", e.query);
      ++out->searches;
    } else {
      line.Str("item_id", ShopWorld::ItemId(e.item));
    }
    line.Str("session_id", absl::StrCat(user_id, "-s", e.session));
    if (e.type == EventType::kImpression) {
      line.Num("p_click", e.p_click);
      ++out->impressions;
    }
    if (e.type == EventType::kClick) ++out->clicks;
    if (e.type == EventType::kPurchase) ++out->purchases;
    line.AppendLine(&out->events);
  }
}

// Behaviour documents (one per session) and review documents, from the
// train period only.
void RenderCorpus(const ShopWorld& world, const User& user,
                  const UserTimeline& timeline, UserRecords* out) {
  std::string& corpus =
      out->corpus[CorpusSplit(world, StreamKind::kCorpusUser, user.index)];
  const std::string profile = world.ProfileText(user);
  std::vector<std::string> segments;
  std::vector<std::string> review_docs;
  int session = -1;
  auto flush = [&] {
    if (segments.empty()) return;
    JsonObject doc;
    doc.Str("text",
            absl::StrCat(profile, ". ", absl::StrJoin(segments, ". "), "."));
    doc.AppendLine(&corpus);
    segments.clear();
  };
  size_t review_index = 0;
  for (const Event& e : timeline.events) {
    if (e.time_s >= world.train_end_s()) break;
    if (e.type == EventType::kImpression) continue;
    if (e.session != session) {
      flush();
      session = e.session;
    }
    segments.push_back(world.BehaviourText(e));
    if (e.type == EventType::kReview) {
      const Review& review = timeline.reviews[review_index++];
      const Item& item = world.item(review.item);
      review_docs.push_back(absl::StrCat("Review of ", world.ItemTitle(item),
                                         ": ", review.rating, " stars. ",
                                         review.summary, ". ", review.Text()));
    }
  }
  flush();
  for (const std::string& text : review_docs) {
    JsonObject doc;
    doc.Str("text", text);
    doc.AppendLine(&corpus);
  }
}

}  // namespace

const char* SplitName(Split split) {
  switch (split) {
    case Split::kTrain:
      return "train";
    case Split::kValid:
      return "valid";
    case Split::kTest:
      return "test";
  }
  return "unknown";
}

Split SplitOf(const ShopWorld& world, int64_t time_s) {
  if (time_s < world.train_end_s()) return Split::kTrain;
  if (time_s < world.valid_end_s()) return Split::kValid;
  return Split::kTest;
}

const char* TaskName(Task task) {
  static const char* const kNames[kNumTasks] = {
      "ctr",        "next_click",     "explanation",
      "query_gen",  "product_design", "rating",
      "sequential", "p5_explanation", "review_summary",
      "direct"};
  return kNames[static_cast<int>(task)];
}

UserRecords RenderUser(const ShopWorld& world, int64_t user_index) {
  const User& user = world.user(user_index);
  const UserTimeline timeline = SimulateUser(world, user_index);
  UserRecords out;
  out.sessions = timeline.sessions;
  RenderProfile(world, user, &out);
  RenderEvents(world, user, timeline, &out);
  ExampleWriter(world, user_index, timeline, &out).Run();
  RenderCorpus(world, user, timeline, &out);
  return out;
}

void RenderItem(const ShopWorld& world, int64_t item_index,
                ItemRecords* records) {
  const Item& item = world.item(item_index);
  const LeafInfo& leaf = world.leaves()[item.leaf];
  const TopLex& top = Categories()[leaf.top];
  const SubLex& sub = top.subs[leaf.sub];
  const std::string item_id = ShopWorld::ItemId(item_index);
  JsonObject catalog;
  catalog.Str("item_id", item_id)
      .Str("title", world.ItemTitle(item))
      .StrList("category", {top.name, sub.name, sub.leaves[leaf.leaf].name})
      .Str("brand", world.BrandName(item))
      .Str("colour", world.ColourName(item))
      .Str("price_band", world.PriceBandName(item))
      .Raw("price", Fixed2(item.price))
      .Str("description", world.ItemDescription(item))
      .Str("text", world.ItemText(item));
  catalog.AppendLine(&records->catalog);

  JsonObject oracle;
  oracle.Str("item_id", item_id)
      .Num("quality", item.quality)
      .Num("log_popularity", item.log_popularity)
      .Num("popularity", std::exp(item.log_popularity));
  oracle.AppendLine(&records->oracle_items);

  JsonObject doc;
  doc.Str("text", world.CatalogDocument(item));
  doc.AppendLine(&records->corpus[CorpusSplit(world, StreamKind::kCorpusItem,
                                              item_index)]);
}

absl::StatusOr<double> OracleAuc(const std::string& ctr_split_path) {
  std::ifstream in(ctr_split_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(ctr_split_path, ": cannot open"));
  }
  std::vector<double> scores;
  std::vector<int> labels;
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.empty()) continue;
    const nlohmann::json value = nlohmann::json::parse(text, nullptr, false);
    if (value.is_discarded() || !value.is_object() ||
        !value.contains("p_click") || !value["p_click"].is_number() ||
        !value.contains("label") || !value["label"].is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          ctr_split_path, ":", line,
          ": not a ctr example (needs numeric \"p_click\" and \"label\")"));
    }
    scores.push_back(value["p_click"].get<double>());
    labels.push_back(value["label"].get<int>());
  }
  const double auc = Auc(scores, labels);
  if (std::isnan(auc)) {
    return absl::FailedPreconditionError(absl::StrCat(
        ctr_split_path, ": needs both clicked and unclicked examples"));
  }
  return auc;
}

}  // namespace optrec
