#include "tuning/world/simulate.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tuning/world/lexicon.h"

namespace optrec {
namespace {

// Session shape.
constexpr double kSearchRate = 0.45;      // sessions that start with a search
constexpr double kSecondPageRate = 0.45;  // sessions with a 2nd page
constexpr double kThirdPageRate = 0.35;   // ... and of those, a 3rd
constexpr int kPageSize = 8;
constexpr int64_t kMinSessionGapS = 600;
// Where a page's items come from, after a search: the searched leaf, an
// interest leaf, the popular items, anything.
constexpr double kSearchedShare = 0.5;
constexpr double kSearchInterestShare = 0.2;
constexpr double kSearchPopularShare = 0.2;
// ... and without a search.
constexpr double kInterestShare = 0.35;
constexpr double kPopularShare = 0.4;
// Purchases and reviews.
constexpr double kReviewRate = 0.5;  // purchases that get a review
constexpr int64_t kReviewDelayS = kSecondsPerDay;

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

const LeafInfo& LeafOfItem(const ShopWorld& world, const Item& item) {
  return world.leaves()[item.leaf];
}

const SubLex& SubOfItem(const ShopWorld& world, const Item& item) {
  const LeafInfo& leaf = LeafOfItem(world, item);
  return Categories()[leaf.top].subs[leaf.sub];
}

const char* LeafName(const ShopWorld& world, int leaf) {
  const LeafInfo& info = world.leaves()[leaf];
  return Categories()[info.top].subs[info.sub].leaves[info.leaf].name;
}

// What a search asked for beyond its leaf.
struct Query {
  int leaf = -1;
  std::string text;
  int colour = kNoColour;  // or a colour the results should have
  int band = -1;           // or a price band
  int brand = -1;          // or a brand
};

// How a reviewer judges an item's visible attributes.
struct Judgement {
  double colour_ratio = 1;  // 12 x the user's weight on the item's colour
  double brand_affinity = 0;
  bool price_liked = false;
  bool price_disliked = false;
};

Judgement Judge(const User& user, const Item& item) {
  Judgement j;
  if (item.colour != kNoColour) {
    j.colour_ratio = kNumColours * user.colour_weights[item.colour];
  }
  j.brand_affinity = user.brand_affinity[item.brand];
  j.price_liked =
      item.band <= 1 && (user.price_sensitivity > 0.5 || item.quality > 0.65);
  j.price_disliked =
      item.band >= 2 && (user.price_sensitivity > 0.45 || item.quality < 0.4);
  return j;
}

class Simulator {
 public:
  Simulator(const ShopWorld& world, int64_t user_index)
      : world_(world),
        user_(world.user(user_index)),
        rng_(world.config().seed, StreamKind::kSessions, user_index) {}

  UserTimeline Run();

 private:
  void RunSession(int session);
  void WritePendingReviews(int session);
  Query MakeQuery();
  std::vector<int64_t> PageItems(const Query* query);
  int64_t PickItem(const Query* query);
  void ShowPage(int session, const Query* query);
  void Purchase(int session, int64_t item);
  Review DraftReview(const Item& item);
  std::string Summary(const Item& item, int rating, const Judgement& j);
  std::string Explanation(const Item& item, const Judgement& j);
  // Appends an event at the current time and advances the clock by 1 s.
  void Emit(Event event);
  void Wait(int64_t min_s, int64_t max_s) {
    now_s_ += min_s + static_cast<int64_t>(rng_.UniformInt(max_s - min_s + 1));
  }

  const ShopWorld& world_;
  const User& user_;
  Rng rng_;
  UserTimeline timeline_;
  std::vector<Event> behaviours_;  // the non-impression events so far
  std::vector<std::pair<int64_t, Review>> pending_;  // (purchase time, draft)
  int64_t now_s_ = 0;
};

UserTimeline Simulator::Run() {
  const double mean_gap_s = kSecondsPerDay / user_.sessions_per_day;
  int64_t next_start = static_cast<int64_t>(rng_.Exponential(mean_gap_s));
  int64_t last_end = -kMinSessionGapS;
  while (true) {
    const int64_t start = std::max(next_start, last_end + kMinSessionGapS);
    if (start >= world_.end_s()) break;
    now_s_ = start;
    RunSession(timeline_.sessions++);
    last_end = now_s_;
    next_start = start + static_cast<int64_t>(rng_.Exponential(mean_gap_s));
  }

  // A late session may run past the end; its tail is cut.
  int reviews_kept = 0;
  size_t kept = 0;
  while (kept < timeline_.events.size() &&
         timeline_.events[kept].time_s < world_.end_s()) {
    if (timeline_.events[kept].type == EventType::kReview) ++reviews_kept;
    ++kept;
  }
  timeline_.events.resize(kept);
  timeline_.reviews.resize(reviews_kept);
  return std::move(timeline_);
}

void Simulator::Emit(Event event) {
  event.time_s = now_s_++;
  if (event.type != EventType::kImpression) behaviours_.push_back(event);
  timeline_.events.push_back(std::move(event));
}

void Simulator::RunSession(int session) {
  WritePendingReviews(session);
  Query query;
  const bool searched = rng_.Bernoulli(kSearchRate);
  if (searched) {
    query = MakeQuery();
    Event event;
    event.type = EventType::kSearch;
    event.session = session;
    event.leaf = query.leaf;
    event.query = query.text;
    Emit(std::move(event));
    Wait(3, 20);
  }
  int pages = 1;
  if (rng_.Bernoulli(kSecondPageRate)) {
    pages += rng_.Bernoulli(kThirdPageRate) ? 2 : 1;
  }
  for (int page = 0; page < pages; ++page) {
    ShowPage(session, searched ? &query : nullptr);
    Wait(10, 60);
  }
}

void Simulator::WritePendingReviews(int session) {
  size_t written = 0;
  for (auto& [purchase_s, review] : pending_) {
    if (purchase_s + kReviewDelayS > now_s_) break;
    review.time_s = now_s_;
    Event event;
    event.type = EventType::kReview;
    event.session = session;
    event.item = review.item;
    event.rating = static_cast<int8_t>(review.rating);
    Emit(std::move(event));
    timeline_.reviews.push_back(std::move(review));
    Wait(20, 90);
    ++written;
  }
  pending_.erase(pending_.begin(), pending_.begin() + written);
}

Query Simulator::MakeQuery() {
  Query query;
  query.leaf = world_.SampleInterestLeaf(user_, rng_);
  const LeafInfo& leaf = world_.leaves()[query.leaf];
  const TopLex& top = Categories()[leaf.top];
  const SubLex& sub = top.subs[leaf.sub];
  const std::string name = LeafName(world_, query.leaf);
  const double form = rng_.Uniform();
  if (form < 0.35) {
    query.text = name;
  } else if (form < 0.6 && top.has_colour) {
    query.colour = rng_.Categorical(std::vector<double>(
        user_.colour_weights.begin(), user_.colour_weights.end()));
    query.text = absl::StrCat(Colours()[query.colour], " ", name);
  } else if (form < 0.75) {
    const double ps = user_.price_sensitivity;
    query.band = ps > 0.6 ? 0 : ps > 0.4 ? 1 : ps > 0.2 ? 2 : 3;
    query.text = absl::StrCat(PriceBands()[query.band].name, " ", name);
  } else if (form < 0.9) {
    const int first = world_.first_brand(leaf.top);
    int best = first;
    for (int b = first; b < first + static_cast<int>(top.brands.size()); ++b) {
      if (user_.brand_affinity[b] > user_.brand_affinity[best]) best = b;
    }
    query.brand = best;
    query.text = absl::StrCat(world_.brands()[best], " ", name);
  } else {
    query.text = absl::StrCat(
        sub.adjectives[rng_.UniformInt(sub.adjectives.size())], " ", name);
  }
  return query;
}

int64_t Simulator::PickItem(const Query* query) {
  const double source = rng_.Uniform();
  if (query != nullptr && source < kSearchedShare) {
    // Search results: the searched leaf, matching the query when a few
    // tries find such an item.
    int64_t item = -1;
    for (int attempt = 0; attempt < 4; ++attempt) {
      item = world_.SampleItemInLeaf(query->leaf, rng_);
      if (item < 0) break;
      const Item& it = world_.item(item);
      if ((query->colour == kNoColour || it.colour == query->colour) &&
          (query->band < 0 || it.band == query->band) &&
          (query->brand < 0 || it.brand == query->brand)) {
        break;
      }
    }
    if (item >= 0) return item;
  }
  const double interest_share =
      query != nullptr ? kSearchedShare + kSearchInterestShare : kInterestShare;
  const double popular_share =
      interest_share + (query != nullptr ? kSearchPopularShare : kPopularShare);
  if (source < interest_share) {
    const int64_t item =
        world_.SampleItemInLeaf(world_.SampleInterestLeaf(user_, rng_), rng_);
    if (item >= 0) return item;
  }
  if (source < popular_share) return world_.SamplePopularItem(rng_);
  return static_cast<int64_t>(rng_.UniformInt(world_.num_items()));
}

std::vector<int64_t> Simulator::PageItems(const Query* query) {
  // Distinct items; a repeat is redrawn (a page stays short only if 64 draws
  // cannot fill it, which a catalog of 200+ items makes vanishingly rare).
  std::vector<int64_t> page;
  for (int draw = 0; draw < 64 && static_cast<int>(page.size()) < kPageSize;
       ++draw) {
    const int64_t item = PickItem(query);
    if (std::find(page.begin(), page.end(), item) == page.end()) {
      page.push_back(item);
    }
  }
  return page;
}

void Simulator::ShowPage(int session, const Query* query) {
  const std::vector<int64_t> page = PageItems(query);
  const int64_t shown_s = now_s_;
  std::vector<double> p_click(page.size());
  for (size_t k = 0; k < page.size(); ++k) {
    p_click[k] = world_.ClickProbability(user_, behaviours_,
                                         world_.item(page[k]), shown_s);
    Event event;
    event.type = EventType::kImpression;
    event.session = session;
    event.item = static_cast<int32_t>(page[k]);
    event.p_click = static_cast<float>(p_click[k]);
    Emit(std::move(event));
  }
  for (size_t k = 0; k < page.size(); ++k) {
    if (!rng_.Bernoulli(p_click[k])) continue;
    Wait(5, 40);
    Event click;
    click.type = EventType::kClick;
    click.session = session;
    click.item = static_cast<int32_t>(page[k]);
    Emit(std::move(click));
    const Item& item = world_.item(page[k]);
    const double buy = Sigmoid(-0.9 + 2.0 * (item.quality - 0.5) -
                               1.5 * user_.price_sensitivity * item.band / 3.0 +
                               0.5 * user_.brand_affinity[item.brand]);
    if (rng_.Bernoulli(buy)) Purchase(session, page[k]);
  }
}

void Simulator::Purchase(int session, int64_t item) {
  Wait(30, 240);
  Event event;
  event.type = EventType::kPurchase;
  event.session = session;
  event.item = static_cast<int32_t>(item);
  const int64_t purchase_s = now_s_;
  Emit(std::move(event));
  if (rng_.Bernoulli(kReviewRate)) {
    pending_.emplace_back(purchase_s, DraftReview(world_.item(item)));
  }
}

Review Simulator::DraftReview(const Item& item) {
  const Judgement j = Judge(user_, item);
  Review review;
  review.item = static_cast<int32_t>(item.index);
  const double score = 3.2 + 2.2 * (item.quality - 0.5) +
                       0.35 * std::clamp(std::log(j.colour_ratio), -1.5, 1.5) +
                       0.5 * j.brand_affinity + (j.price_liked ? 0.4 : 0.0) -
                       (j.price_disliked ? 0.6 : 0.0) + rng_.Normal(0.0, 0.6);
  review.rating = static_cast<int>(std::clamp(std::round(score), 1.0, 5.0));

  // Aspects the reviewer could mention, with their sentiment.
  struct Candidate {
    ReviewSentence sentence;
    bool good;
  };
  std::vector<Candidate> candidates;
  const std::string colour = world_.ColourName(item);
  const std::string brand = world_.BrandName(item);
  if (j.colour_ratio > 1.8) {
    candidates.push_back(
        {{"colour", absl::StrCat("I love the ", colour, " colour.")}, true});
  } else if (j.colour_ratio < 0.4) {
    candidates.push_back(
        {{"colour", absl::StrCat("I am not keen on the ", colour, " colour.")},
         false});
  }
  if (j.price_liked) {
    candidates.push_back(
        {{"price", "The price is fair for what you get."}, true});
  } else if (j.price_disliked) {
    candidates.push_back(
        {{"price", "It is too pricey for what it is."}, false});
  }
  if (item.quality > 0.7) {
    candidates.push_back({{"quality", "It feels really well made."}, true});
  } else if (item.quality < 0.35) {
    candidates.push_back({{"quality", "It feels cheaply made."}, false});
  }
  if (j.brand_affinity > 0.5) {
    candidates.push_back(
        {{"brand", absl::StrCat(brand, " never lets me down.")}, true});
  } else if (j.brand_affinity < -0.5) {
    candidates.push_back(
        {{"brand", absl::StrCat(brand, " is not my favourite brand.")}, false});
  }
  for (const AspectLex& aspect : SubOfItem(world_, item).aspects) {
    const bool good = item.quality + rng_.Normal(0.0, 0.2) > 0.5;
    candidates.push_back(
        {{aspect.word, absl::StrCat(good ? aspect.good : aspect.bad, ".")},
         good});
  }

  // Keep the aspects that agree with the rating (both kinds at 3 stars).
  std::vector<ReviewSentence> agreeing;
  for (const Candidate& c : candidates) {
    if (review.rating == 3 || c.good == (review.rating > 3)) {
      agreeing.push_back(c.sentence);
    }
  }
  if (agreeing.empty()) {
    for (const Candidate& c : candidates) agreeing.push_back(c.sentence);
  }
  rng_.Shuffle(agreeing);
  const size_t count =
      std::min<size_t>(agreeing.size(), 1 + rng_.UniformInt(3));
  agreeing.resize(count);
  review.sentences = std::move(agreeing);
  review.summary = Summary(item, review.rating, j);
  review.explanation = Explanation(item, j);
  return review;
}

std::string Simulator::Summary(const Item& item, int rating,
                               const Judgement& j) {
  const std::string use = SubOfItem(world_, item).use;
  const std::string leaf = LeafName(world_, item.leaf);
  if (j.price_liked && rating >= 4 && rng_.Bernoulli(0.5)) {
    return absl::StrCat("Great value for ", use);
  }
  if (j.price_disliked && rating <= 3 && rng_.Bernoulli(0.5)) {
    return "Too pricey for what it is";
  }
  const std::vector<std::string> options[5] = {
      {"Would not buy again", absl::StrCat("Poor ", leaf), "Waste of money"},
      {absl::StrCat("Disappointing ", leaf),
       absl::StrCat("Not great for ", use), "Expected more"},
      {"Decent but not perfect", absl::StrCat("Okay for ", use),
       "Does the job"},
      {absl::StrCat("Solid choice for ", use), absl::StrCat("Very good ", leaf),
       absl::StrCat("Happy with this ", leaf)},
      {absl::StrCat("Love it for ", use), absl::StrCat("Perfect for ", use),
       absl::StrCat("Excellent ", leaf)}};
  const std::vector<std::string>& pool = options[rating - 1];
  return pool[rng_.UniformInt(pool.size())];
}

std::string Simulator::Explanation(const Item& item, const Judgement& j) {
  std::vector<std::string> reasons = {
      absl::StrCat("I wanted something for ", SubOfItem(world_, item).use)};
  std::vector<std::string> extras;
  if (j.colour_ratio > 1.8) {
    extras.push_back(absl::StrCat("I love anything ", world_.ColourName(item)));
  }
  if (j.brand_affinity > 0.4) {
    extras.push_back(absl::StrCat("I trust ", world_.BrandName(item)));
  }
  if (j.price_liked) {
    extras.push_back("the price was fair");
  } else if (item.band >= 2 && user_.price_sensitivity < 0.35) {
    extras.push_back("I wanted something premium");
  }
  if (item.quality > 0.7) extras.push_back("it looked well made");
  rng_.Shuffle(extras);
  if (extras.size() > 2) extras.resize(2);
  reasons.insert(reasons.end(), extras.begin(), extras.end());
  std::string text = "I bought it because ";
  for (size_t r = 0; r < reasons.size(); ++r) {
    if (r > 0) absl::StrAppend(&text, r + 1 == reasons.size() ? " and " : ", ");
    absl::StrAppend(&text, reasons[r]);
  }
  return absl::StrCat(text, ".");
}

}  // namespace

std::string Review::Text() const {
  std::vector<std::string> parts;
  for (const ReviewSentence& s : sentences) parts.push_back(s.text);
  return absl::StrJoin(parts, " ");
}

UserTimeline SimulateUser(const ShopWorld& world, int64_t user_index) {
  return Simulator(world, user_index).Run();
}

}  // namespace optrec
