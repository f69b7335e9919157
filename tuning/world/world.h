// The shop world: a seeded catalog of items and a population of users with
// hidden tastes, the text renderers that turn them into English segments,
// and the choice model (the oracle) that gives the probability of a click.
//
// Everything is a pure function of WorldConfig: Build() with the same config
// gives the same world on every machine (see rng.h). A built ShopWorld is
// immutable and safe to share between threads.
//
// Text conventions (other code parses them; do not change them lightly):
//   profile:    "Shopper aged 25-34 from the North, member for 14 months"
//   behaviour:  "Clicked: <title>", "Purchased: <title>", "Searched: <query>",
//               "Reviewed: <title>, <rating> stars"
//   item:       "<title> | <Top> > <Sub> > <leaf> | <price band>"
//   title:      "<Brand> [<adjective> ]<leaf>[, <colour>]"
#ifndef OPTREC_TUNING_WORLD_WORLD_H_
#define OPTREC_TUNING_WORLD_WORLD_H_

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tuning/world/rng.h"

namespace optrec {

inline constexpr int64_t kSecondsPerDay = 86400;
// Behaviour segments in an example's history: the last this many.
inline constexpr int kHistorySegments = 20;
inline constexpr int kNumColours = 12;
inline constexpr int kNumPriceBands = 4;
inline constexpr int kNoColour = -1;
inline constexpr int kNoAdjective = -1;

// Options of one world. Every field changes the generated data.
struct WorldConfig {
  // Root of every random stream.
  uint64_t seed = 1;
  // Catalog size; at least 200 (direct examples need 99 negatives).
  int64_t items = 3000;
  // Number of users; at least 1.
  int64_t users = 2000;
  // Simulated days; at least 8. Train is days [0, 0.75 d), validation
  // [0.75 d, 0.875 d), test [0.875 d, d).
  int days = 120;
  // Fraction of impressions that become ctr examples, in (0, 1]; 1 = one
  // example per impression. Drawn from each user's own example stream.
  double ctr_sample_rate = 0.25;
  // Fraction of users, in [0, 1], that get direct (100-candidate) examples:
  // at most one per split, for their last click in it.
  double direct_user_fraction = 0.5;
};

// The defaults above: about 3000 items, 2000 users, 120 days.
WorldConfig SmallWorldConfig(uint64_t seed);
// 1,000,000 items and 100,000 users over 120 days, with sparser sampling
// of the ctr and direct tasks (the output is still about 7 GB).
WorldConfig LargeWorldConfig(uint64_t seed);
// InvalidArgument naming the first bad field and its value.
absl::Status ValidateWorldConfig(const WorldConfig& config);

// What happened; impressions are not behaviour (they render no segment).
enum class EventType : uint8_t {
  kImpression,
  kClick,
  kPurchase,
  kSearch,
  kReview
};
// "impression", "click", "purchase", "search", "review".
const char* EventTypeName(EventType type);

// One event of a user's timeline. Times are seconds since the start of the
// world and strictly increase along a user's timeline.
struct Event {
  int64_t time_s = 0;
  EventType type = EventType::kImpression;
  int32_t item = -1;    // item index; -1 for searches
  int32_t leaf = -1;    // searches: the leaf the query is about
  int32_t session = 0;  // the user's session number, from 0
  int8_t rating = 0;    // 1-5 for reviews, else 0
  float p_click = 0;    // the oracle's click probability, impressions only
  std::string query;    // searches only
};

// An item. Text is rendered on demand by ShopWorld.
struct Item {
  uint32_t index = 0;               // position in the catalog; id "i%07d"
  uint16_t leaf = 0;                // index into ShopWorld::leaves()
  uint8_t brand = 0;                // index into ShopWorld::brands()
  int8_t colour = kNoColour;        // index into Colours(), or kNoColour
  int8_t adjective = kNoAdjective;  // index into the sub's adjectives
  uint8_t material = 0;             // index into the sub's materials
  uint8_t band = 0;                 // index into PriceBands()
  uint8_t description_template = 0;
  float price = 0;           // currency units, two decimals
  float quality = 0;         // hidden, in [0, 1]
  float log_popularity = 0;  // hidden, >= 0; Pareto-tailed
};

// A user: a visible profile and hidden tastes.
struct User {
  uint32_t index = 0;    // id "u%06d"
  uint8_t age_band = 0;  // index into AgeBands()
  uint8_t region = 0;    // index into Regions()
  uint16_t tenure_months = 0;
  // The 2-5 leaves holding most interest, with their weights (summing to
  // 1 - background_interest * number of leaves).
  std::vector<std::pair<uint16_t, float>> interests;
  // Interest every leaf gets on top of `interests`.
  float background_interest = 0;
  std::array<float, kNumColours> colour_weights{};  // sum to 1
  std::vector<float> brand_affinity;  // per brand, about N(0, 0.5)
  float price_sensitivity = 0;        // in [0, 1]; 1 = wants cheap
  float sessions_per_day = 0;         // activity rate
  float bias = 0;                     // per-user click propensity
};

// A leaf of the category tree, flattened.
struct LeafInfo {
  int top = 0;         // index into Categories()
  int sub = 0;         // index into Categories()[top].subs
  int sub_global = 0;  // subcategory index over the whole tree
  int leaf = 0;        // index into that sub's leaves
};

class ShopWorld {
 public:
  // Builds the catalog and the users of `config`. InvalidArgument when the
  // config is bad (ValidateWorldConfig). Deterministic.
  static absl::StatusOr<ShopWorld> Build(const WorldConfig& config);

  const WorldConfig& config() const { return config_; }
  int64_t num_items() const { return static_cast<int64_t>(items_.size()); }
  int64_t num_users() const { return static_cast<int64_t>(users_.size()); }
  // `index` must be in range.
  const Item& item(int64_t index) const { return items_[index]; }
  const User& user(int64_t index) const { return users_[index]; }
  const std::vector<LeafInfo>& leaves() const { return leaves_; }
  int num_subcategories() const { return num_subs_; }
  // Index of the first brand of top category `top` in brands(); its brands
  // are the next Categories()[top].brands.size() entries.
  int first_brand(int top) const { return top_first_brand_[top]; }
  // Brand names, all top categories' in order.
  const std::vector<const char*>& brands() const { return brands_; }
  // The split boundaries in seconds: train is [0, train_end_s), validation
  // [train_end_s, valid_end_s), test [valid_end_s, end_s).
  int64_t train_end_s() const;
  int64_t valid_end_s() const;
  int64_t end_s() const;

  // ---- Text. ----
  static std::string ItemId(int64_t index);  // "i0000123"
  static std::string UserId(int64_t index);  // "u000045"
  std::string ItemTitle(const Item& item) const;
  std::string CategoryPath(const Item& item) const;  // "Top > Sub > leaf"
  // The path of leaf `leaf` (an index into leaves()).
  std::string LeafPath(int leaf) const;
  std::string BrandName(const Item& item) const;
  // The colour name, or "" for items without one.
  std::string ColourName(const Item& item) const;
  std::string PriceBandName(const Item& item) const;
  // The candidate segment "<title> | <path> | <price band>".
  std::string ItemText(const Item& item) const;
  // One or two sentences built from the item's attributes.
  std::string ItemDescription(const Item& item) const;
  // "<title>. Category: <path>. Brand: X. Colour: c. Price: band. <desc>"
  // (the colour sentence is left out for items without a colour).
  std::string CatalogDocument(const Item& item) const;
  std::string ProfileText(const User& user) const;
  // The behaviour segment of a click, purchase, search or review; "" for
  // an impression.
  std::string BehaviourText(const Event& event) const;

  // ---- The oracle. ----
  // The user's hidden interest in a leaf, in (0, 1].
  double LeafInterest(const User& user, int leaf) const;
  // Summed interest over a subcategory's leaves.
  double SubInterest(const User& user, int sub_global) const;
  // The click utility (a logit) of showing `item` to `user` at `now_s`,
  // given the user's earlier events `history` (oldest first; impressions
  // are ignored, events at or after now_s must not be passed). The formula
  // and constants are in docs/world.md.
  double ClickUtility(const User& user, absl::Span<const Event> history,
                      const Item& item, int64_t now_s) const;
  // sigmoid(ClickUtility), strictly inside (0, 1).
  double ClickProbability(const User& user, absl::Span<const Event> history,
                          const Item& item, int64_t now_s) const;

  // ---- Candidate generation for the simulator (not the oracle). ----
  // An item of `leaf`, drawn by popularity; -1 if the leaf has no items.
  int64_t SampleItemInLeaf(int leaf, Rng& rng) const;
  // An item drawn by popularity over the whole catalog.
  int64_t SamplePopularItem(Rng& rng) const;
  // A leaf drawn from the user's interests.
  int SampleInterestLeaf(const User& user, Rng& rng) const;

 private:
  ShopWorld() = default;
  void BuildTree();
  void BuildCatalog();
  void BuildUsers();
  User MakeUser(int64_t index) const;

  WorldConfig config_;
  std::vector<LeafInfo> leaves_;
  int num_subs_ = 0;
  std::vector<const char*> brands_;
  std::vector<int> top_first_brand_;  // per top: index of its first brand
  std::vector<int> sub_leaf_count_;   // per subcategory: number of leaves
  std::vector<double> leaf_share_;    // catalog share of each leaf
  std::vector<Item> items_;
  std::vector<std::vector<uint32_t>> leaf_items_;     // items per leaf
  std::vector<std::vector<double>> leaf_cumulative_;  // their popularity
  std::vector<double> popularity_cumulative_;         // over all items
  std::vector<User> users_;
};

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_WORLD_H_
