#include "tuning/world/world.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tuning/world/lexicon.h"

namespace optrec {
namespace {

// The choice model's constants; docs/world.md states the formula.
constexpr double kIntercept = -1.9;
constexpr double kLeafWeight = 0.22;  // x log(leaf interest + kLeafFloor)
constexpr double kLeafFloor = 0.005;
constexpr double kSubWeight = 0.1;  // x log(sub interest + kSubFloor)
constexpr double kSubFloor = 0.01;
constexpr double kColourWeight = 0.5;       // x clamp(log(12 w_colour), +-1.5)
constexpr double kBrandWeight = 1.0;        // x brand affinity
constexpr double kPriceDislike = 1.4;       // x sensitivity x band / 3
constexpr double kPriceLike = 0.3;          // x (1 - sensitivity) x band / 3
constexpr double kQualityWeight = 1.2;      // x (quality - 0.5)
constexpr double kPopularityWeight = 0.35;  // x (log popularity - mean)
constexpr double kHistoryWindowS = 30 * kSecondsPerDay;
constexpr int kHistoryMaxEvents = 60;
constexpr double kClickLeafBoost = 0.35;  // decays over kClickDecayS
constexpr double kClickSubBoost = 0.12;
constexpr double kClickDecayS = 3 * kSecondsPerDay;
constexpr double kSearchLeafBoost = 0.8;  // decays over kSearchDecayS
constexpr double kSearchSubBoost = 0.3;
constexpr double kSearchDecayS = 2 * 3600;
constexpr double kRepeatBoost = 0.3;  // repeat-purchase categories
constexpr double kRepeatDecayS = 14 * kSecondsPerDay;
constexpr double kSatiation = -1.6;  // other categories
constexpr double kSatiationDecayS = 10 * kSecondsPerDay;
constexpr double kHistoryMin = -2.5;
constexpr double kHistoryMax = 2.0;

// Item attribute draws.
constexpr double kPopularityRate = 1.5;  // log popularity ~ Exp(1.5)
constexpr double kMeanLogPopularity = 1.0 / kPopularityRate;
constexpr double kAdjectiveRate = 0.6;
const double kBandWeights[kNumPriceBands] = {0.3, 0.4, 0.2, 0.1};

// User taste draws.
const double kAgeWeights[] = {0.14, 0.24, 0.22, 0.18, 0.13, 0.09};
constexpr double kBackgroundMass = 0.08;  // spread over every leaf
constexpr double kMeanSessionsPerDay = 0.08;

const SubLex& SubOf(const LeafInfo& leaf) {
  return Categories()[leaf.top].subs[leaf.sub];
}

const LeafLex& LeafOf(const LeafInfo& leaf) {
  return SubOf(leaf).leaves[leaf.leaf];
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

WorldConfig SmallWorldConfig(uint64_t seed) {
  WorldConfig config;
  config.seed = seed;
  return config;
}

WorldConfig LargeWorldConfig(uint64_t seed) {
  WorldConfig config;
  config.seed = seed;
  config.items = 1000000;
  config.users = 100000;
  config.ctr_sample_rate = 0.02;
  config.direct_user_fraction = 0.02;
  return config;
}

absl::Status ValidateWorldConfig(const WorldConfig& config) {
  if (config.items < 200 || config.items > 100000000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world config: items must be in [200, 1e8], got ", config.items));
  }
  if (config.users < 1 || config.users > 100000000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world config: users must be in [1, 1e8], got ", config.users));
  }
  if (config.days < 8 || config.days > 3650) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world config: days must be in [8, 3650], got ", config.days));
  }
  if (!(config.ctr_sample_rate > 0 && config.ctr_sample_rate <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("world config: ctr_sample_rate must be in (0, 1], got ",
                     config.ctr_sample_rate));
  }
  if (!(config.direct_user_fraction >= 0 && config.direct_user_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world config: direct_user_fraction must be in [0, 1], got ",
        config.direct_user_fraction));
  }
  return absl::OkStatus();
}

const char* EventTypeName(EventType type) {
  switch (type) {
    case EventType::kImpression:
      return "impression";
    case EventType::kClick:
      return "click";
    case EventType::kPurchase:
      return "purchase";
    case EventType::kSearch:
      return "search";
    case EventType::kReview:
      return "review";
  }
  return "unknown";
}

absl::StatusOr<ShopWorld> ShopWorld::Build(const WorldConfig& config) {
  if (absl::Status status = ValidateWorldConfig(config); !status.ok()) {
    return status;
  }
  ShopWorld world;
  world.config_ = config;
  world.BuildTree();
  world.BuildCatalog();
  world.BuildUsers();
  return world;
}

int64_t ShopWorld::train_end_s() const {
  return config_.days * kSecondsPerDay * 3 / 4;
}

int64_t ShopWorld::valid_end_s() const {
  return config_.days * kSecondsPerDay * 7 / 8;
}

int64_t ShopWorld::end_s() const { return config_.days * kSecondsPerDay; }

void ShopWorld::BuildTree() {
  const std::vector<TopLex>& tops = Categories();
  for (int t = 0; t < static_cast<int>(tops.size()); ++t) {
    top_first_brand_.push_back(static_cast<int>(brands_.size()));
    for (const char* brand : tops[t].brands) brands_.push_back(brand);
    for (int s = 0; s < static_cast<int>(tops[t].subs.size()); ++s) {
      const int n = static_cast<int>(tops[t].subs[s].leaves.size());
      for (int l = 0; l < n; ++l) leaves_.push_back({t, s, num_subs_, l});
      sub_leaf_count_.push_back(n);
      ++num_subs_;
    }
  }
}

void ShopWorld::BuildCatalog() {
  // Leaves get uneven shares of the catalog.
  Rng catalog_rng(config_.seed, StreamKind::kCatalog, 0);
  leaf_share_.resize(leaves_.size());
  double total = 0;
  for (double& share : leaf_share_) total += share = catalog_rng.Gamma(1.2);
  std::vector<double> leaf_cumulative(leaves_.size());
  double running = 0;
  for (size_t l = 0; l < leaves_.size(); ++l) {
    leaf_share_[l] /= total;
    leaf_cumulative[l] = running += leaf_share_[l];
  }

  items_.resize(config_.items);
  leaf_items_.assign(leaves_.size(), {});
  leaf_cumulative_.assign(leaves_.size(), {});
  popularity_cumulative_.resize(config_.items);
  double popularity_total = 0;
  for (int64_t i = 0; i < config_.items; ++i) {
    Rng rng(config_.seed, StreamKind::kItem, i);
    Item& item = items_[i];
    item.index = static_cast<uint32_t>(i);
    item.leaf = static_cast<uint16_t>(rng.FromCumulative(leaf_cumulative));
    const LeafInfo& leaf = leaves_[item.leaf];
    const TopLex& top = Categories()[leaf.top];
    const SubLex& sub = SubOf(leaf);
    item.brand = static_cast<uint8_t>(top_first_brand_[leaf.top] +
                                      rng.UniformInt(top.brands.size()));
    item.colour = top.has_colour
                      ? static_cast<int8_t>(rng.UniformInt(kNumColours))
                      : kNoColour;
    item.adjective =
        rng.Bernoulli(kAdjectiveRate)
            ? static_cast<int8_t>(rng.UniformInt(sub.adjectives.size()))
            : kNoAdjective;
    item.material = static_cast<uint8_t>(rng.UniformInt(sub.materials.size()));
    item.band = static_cast<uint8_t>(rng.Categorical(kBandWeights));
    const PriceBandLex& band = PriceBands()[item.band];
    const double price =
        LeafOf(leaf).base_price * rng.Uniform(band.low, band.high);
    item.price =
        static_cast<float>(std::max(0.99, std::round(price * 100) / 100));
    item.quality = static_cast<float>(
        std::clamp(rng.Normal(0.42 + 0.07 * item.band, 0.18), 0.01, 0.99));
    item.log_popularity =
        static_cast<float>(rng.Exponential(kMeanLogPopularity));
    item.description_template = static_cast<uint8_t>(rng.UniformInt(3));

    const double popularity = std::exp(item.log_popularity);
    leaf_items_[item.leaf].push_back(item.index);
    const double before = leaf_cumulative_[item.leaf].empty()
                              ? 0.0
                              : leaf_cumulative_[item.leaf].back();
    leaf_cumulative_[item.leaf].push_back(before + popularity);
    popularity_cumulative_[i] = popularity_total += popularity;
  }
}

User ShopWorld::MakeUser(int64_t index) const {
  Rng rng(config_.seed, StreamKind::kUser, index);
  User user;
  user.index = static_cast<uint32_t>(index);
  user.age_band = static_cast<uint8_t>(rng.Categorical(kAgeWeights));
  user.region = static_cast<uint8_t>(rng.UniformInt(Regions().size()));
  user.tenure_months = static_cast<uint16_t>(
      std::min(240.0, 1.0 + std::floor(rng.Exponential(18.0))));

  // Interests: 2-5 distinct leaves, drawn by catalog share and a lean of the
  // user's age band towards some top categories.
  const std::vector<double>& lean = AgeTopAffinity()[user.age_band];
  std::vector<double> pick(leaves_.size());
  for (size_t l = 0; l < leaves_.size(); ++l) {
    pick[l] = std::sqrt(leaf_share_[l]) * std::pow(lean[leaves_[l].top], 1.5);
  }
  const int count = 2 + std::min(3, rng.Poisson(0.9));
  const std::vector<double> weights =
      rng.Dirichlet(std::vector<double>(count, 1.0));
  for (int k = 0; k < count; ++k) {
    const int leaf = rng.Categorical(pick);
    pick[leaf] = 0;
    user.interests.emplace_back(
        static_cast<uint16_t>(leaf),
        static_cast<float>(weights[k] * (1.0 - kBackgroundMass)));
  }
  std::sort(user.interests.begin(), user.interests.end());
  user.background_interest =
      static_cast<float>(kBackgroundMass / leaves_.size());

  const std::vector<double> colours =
      rng.Dirichlet(std::vector<double>(kNumColours, 0.5));
  for (int c = 0; c < kNumColours; ++c) {
    user.colour_weights[c] = static_cast<float>(colours[c]);
  }
  user.brand_affinity.resize(brands_.size());
  for (float& affinity : user.brand_affinity) {
    affinity = static_cast<float>(rng.Normal(0.0, 0.5));
  }
  const double cheap = rng.Gamma(1.5);
  const double dear = rng.Gamma(1.5);
  user.price_sensitivity = static_cast<float>(cheap / (cheap + dear));
  user.sessions_per_day = static_cast<float>(
      std::exp(rng.Normal(std::log(kMeanSessionsPerDay), 0.6)));
  user.bias = static_cast<float>(rng.Normal(0.0, 0.35));
  return user;
}

void ShopWorld::BuildUsers() {
  users_.reserve(config_.users);
  for (int64_t u = 0; u < config_.users; ++u) users_.push_back(MakeUser(u));
}

std::string ShopWorld::ItemId(int64_t index) {
  return absl::StrFormat("i%07d", index);
}

std::string ShopWorld::UserId(int64_t index) {
  return absl::StrFormat("u%06d", index);
}

std::string ShopWorld::ItemTitle(const Item& item) const {
  const LeafInfo& leaf = leaves_[item.leaf];
  std::string title = absl::StrCat(brands_[item.brand], " ");
  if (item.adjective != kNoAdjective) {
    absl::StrAppend(&title, SubOf(leaf).adjectives[item.adjective], " ");
  }
  absl::StrAppend(&title, LeafOf(leaf).name);
  if (item.colour != kNoColour) {
    absl::StrAppend(&title, ", ", Colours()[item.colour]);
  }
  return title;
}

std::string ShopWorld::CategoryPath(const Item& item) const {
  return LeafPath(item.leaf);
}

std::string ShopWorld::LeafPath(int leaf) const {
  const LeafInfo& info = leaves_[leaf];
  return absl::StrCat(Categories()[info.top].name, " > ", SubOf(info).name,
                      " > ", LeafOf(info).name);
}

std::string ShopWorld::BrandName(const Item& item) const {
  return brands_[item.brand];
}

std::string ShopWorld::ColourName(const Item& item) const {
  return item.colour == kNoColour ? "" : Colours()[item.colour];
}

std::string ShopWorld::PriceBandName(const Item& item) const {
  return PriceBands()[item.band].name;
}

std::string ShopWorld::ItemText(const Item& item) const {
  return absl::StrCat(ItemTitle(item), " | ", CategoryPath(item), " | ",
                      PriceBandName(item));
}

std::string ShopWorld::ItemDescription(const Item& item) const {
  const LeafInfo& leaf = leaves_[item.leaf];
  const SubLex& sub = SubOf(leaf);
  const char* name = LeafOf(leaf).name;
  const char* material = sub.materials[item.material];
  const std::string adjective =
      item.adjective == kNoAdjective
          ? ""
          : absl::StrCat(sub.adjectives[item.adjective], " ");
  const bool coloured = item.colour != kNoColour;
  const char* colour = coloured ? Colours()[item.colour] : "";
  switch (item.description_template) {
    case 0:
      return absl::StrCat(
          "From ", brands_[item.brand], ": ", adjective, name, " made with ",
          material, ", ideal for ", sub.use, ".",
          coloured ? absl::StrCat(" Finished in ", colour, ".") : "");
    case 1:
      return absl::StrCat(
          brands_[item.brand], " designed it for ", sub.use, ", using ",
          material, ".",
          coloured ? absl::StrCat(" It comes in ", colour, ".") : "");
    default:
      return absl::StrCat("A ", PriceBands()[item.band].name, " pick for ",
                          sub.use, ": ", brands_[item.brand], " ", adjective,
                          name, coloured ? absl::StrCat(" in ", colour) : "",
                          ", made with ", material, ".");
  }
}

std::string ShopWorld::CatalogDocument(const Item& item) const {
  std::string doc =
      absl::StrCat(ItemTitle(item), ". Category: ", CategoryPath(item),
                   ". Brand: ", BrandName(item), ".");
  if (item.colour != kNoColour) {
    absl::StrAppend(&doc, " Colour: ", ColourName(item), ".");
  }
  absl::StrAppend(&doc, " Price: ", PriceBandName(item), ". ",
                  ItemDescription(item));
  return doc;
}

std::string ShopWorld::ProfileText(const User& user) const {
  return absl::StrCat("Shopper aged ", AgeBands()[user.age_band], " from the ",
                      Regions()[user.region], ", member for ",
                      user.tenure_months,
                      user.tenure_months == 1 ? " month" : " months");
}

std::string ShopWorld::BehaviourText(const Event& event) const {
  switch (event.type) {
    case EventType::kImpression:
      return "";
    case EventType::kClick:
      return absl::StrCat("Clicked: ", ItemTitle(items_[event.item]));
    case EventType::kPurchase:
      return absl::StrCat("Purchased: ", ItemTitle(items_[event.item]));
    case EventType::kSearch:
      return absl::StrCat("Searched: ", event.query);
    case EventType::kReview:
      return absl::StrCat("Reviewed: ", ItemTitle(items_[event.item]), ", ",
                          static_cast<int>(event.rating), " stars");
  }
  return "";
}

double ShopWorld::LeafInterest(const User& user, int leaf) const {
  double interest = user.background_interest;
  for (const auto& [l, weight] : user.interests) {
    if (l == leaf) interest += weight;
  }
  return interest;
}

double ShopWorld::SubInterest(const User& user, int sub_global) const {
  double interest = user.background_interest * sub_leaf_count_[sub_global];
  for (const auto& [l, weight] : user.interests) {
    if (leaves_[l].sub_global == sub_global) interest += weight;
  }
  return interest;
}

double ShopWorld::ClickUtility(const User& user,
                               absl::Span<const Event> history,
                               const Item& item, int64_t now_s) const {
  const LeafInfo& leaf = leaves_[item.leaf];
  double utility = kIntercept + user.bias;

  // Standing tastes.
  utility += kLeafWeight * std::log(LeafInterest(user, item.leaf) + kLeafFloor);
  utility +=
      kSubWeight * std::log(SubInterest(user, leaf.sub_global) + kSubFloor);
  if (item.colour != kNoColour) {
    const double colour =
        std::log(kNumColours * user.colour_weights[item.colour]);
    utility += kColourWeight * std::clamp(colour, -1.5, 1.5);
  }
  utility += kBrandWeight * user.brand_affinity[item.brand];
  const double band = item.band / 3.0;
  utility += -kPriceDislike * user.price_sensitivity * band +
             kPriceLike * (1.0 - user.price_sensitivity) * band;
  utility += kQualityWeight * (item.quality - 0.5);
  utility += kPopularityWeight * (item.log_popularity - kMeanLogPopularity);

  // Recent behaviour, newest first.
  const bool repeat = Categories()[leaf.top].repeat_purchase;
  double effect = 0;
  int seen = 0;
  for (size_t i = history.size(); i > 0 && seen < kHistoryMaxEvents; --i) {
    const Event& event = history[i - 1];
    if (event.type == EventType::kImpression) continue;
    const double age = static_cast<double>(now_s - event.time_s);
    if (age > kHistoryWindowS) break;
    ++seen;
    const int event_leaf =
        event.type == EventType::kSearch ? event.leaf : items_[event.item].leaf;
    if (event_leaf < 0) continue;
    const bool same_leaf = event_leaf == item.leaf;
    const bool same_sub = leaves_[event_leaf].sub_global == leaf.sub_global;
    if (event.type == EventType::kClick) {
      const double decay = std::exp(-age / kClickDecayS);
      if (same_leaf) {
        effect += kClickLeafBoost * decay;
      } else if (same_sub) {
        effect += kClickSubBoost * decay;
      }
    } else if (event.type == EventType::kSearch) {
      const double decay = std::exp(-age / kSearchDecayS);
      if (same_leaf) {
        effect += kSearchLeafBoost * decay;
      } else if (same_sub) {
        effect += kSearchSubBoost * decay;
      }
    } else if (event.type == EventType::kPurchase && same_leaf) {
      effect += repeat ? kRepeatBoost * std::exp(-age / kRepeatDecayS)
                       : kSatiation * std::exp(-age / kSatiationDecayS);
    }
  }
  return utility + std::clamp(effect, kHistoryMin, kHistoryMax);
}

double ShopWorld::ClickProbability(const User& user,
                                   absl::Span<const Event> history,
                                   const Item& item, int64_t now_s) const {
  const double p = Sigmoid(ClickUtility(user, history, item, now_s));
  return std::clamp(p, 1e-6, 1.0 - 1e-6);
}

int64_t ShopWorld::SampleItemInLeaf(int leaf, Rng& rng) const {
  const std::vector<double>& cumulative = leaf_cumulative_[leaf];
  if (cumulative.empty()) return -1;
  return leaf_items_[leaf][rng.FromCumulative(cumulative)];
}

int64_t ShopWorld::SamplePopularItem(Rng& rng) const {
  return rng.FromCumulative(popularity_cumulative_);
}

int ShopWorld::SampleInterestLeaf(const User& user, Rng& rng) const {
  double target = rng.Uniform();
  for (const auto& [leaf, weight] : user.interests) {
    if (target < weight) return leaf;
    target -= weight;
  }
  return static_cast<int>(rng.UniformInt(leaves_.size()));
}

}  // namespace optrec
