// The hand-written vocabulary of the shop world: the category tree (top
// category > subcategory > leaf product type), brands, colours, price bands,
// user age bands and regions, and the phrases that item descriptions and
// reviews are built from. Plain constant data; thread-safe to read.
#ifndef OPTREC_TUNING_WORLD_LEXICON_H_
#define OPTREC_TUNING_WORLD_LEXICON_H_

#include <vector>

namespace optrec {

// One aspect a reviewer can praise or criticise, e.g. fit or battery.
struct AspectLex {
  const char* word;  // the feature word, e.g. "fit"
  const char* good;  // a sentence without its final period, when liked
  const char* bad;   // a sentence without its final period, when disliked
};

// A leaf product type, e.g. "trail running shoes".
struct LeafLex {
  const char* name;   // lower case, as it appears in titles
  double base_price;  // a mid-range price in currency units
};

// A subcategory, e.g. Running, with what its leaves share.
struct SubLex {
  const char* name;  // title case, e.g. "Running"
  const char* use;   // what it is for, after "for": "running"
  std::vector<LeafLex> leaves;
  std::vector<const char*> adjectives;  // optional title words
  std::vector<const char*> materials;   // after "made with"
  std::vector<AspectLex> aspects;       // type-specific review aspects
};

// A top category, e.g. Sports & Outdoors.
struct TopLex {
  const char* name;
  std::vector<const char*> brands;  // invented names
  bool has_colour;       // false: items come in no colour (books, food)
  bool repeat_purchase;  // true: a recent purchase makes another likelier
  std::vector<SubLex> subs;
};

// A price band; an item's price is its leaf's base price times a factor
// drawn uniformly from [low, high).
struct PriceBandLex {
  const char* name;  // "budget", "mid-range", "premium", "luxury"
  double low;
  double high;
};

// The category tree, in a fixed order (ids are positions in it).
const std::vector<TopLex>& Categories();
// The colours items come in, in a fixed order.
const std::vector<const char*>& Colours();
// The four price bands, cheapest first.
const std::vector<PriceBandLex>& PriceBands();
// User age bands ("18-24" ... "65+"), youngest first.
const std::vector<const char*>& AgeBands();
// How much each age band leans towards each top category: [age][top], 1 =
// neutral. Same order as AgeBands() and Categories().
const std::vector<std::vector<double>>& AgeTopAffinity();
// User regions, each read after "from the".
const std::vector<const char*>& Regions();

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_LEXICON_H_
