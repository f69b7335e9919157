// The behaviour simulator: one user's sessions over the world's days
// (searches, impression pages, clicks drawn from the oracle, purchases) and
// the reviews written after some purchases.
//
// A user's timeline depends only on the seed, that user and the catalog, so
// users can be simulated in any order and on any thread.
#ifndef OPTREC_TUNING_WORLD_SIMULATE_H_
#define OPTREC_TUNING_WORLD_SIMULATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tuning/world/world.h"

namespace optrec {

// One sentence of a review and the aspect it talks about.
struct ReviewSentence {
  std::string aspect;  // a feature word: "colour", "price", "fit", ...
  std::string text;    // one sentence ending with "."
};

struct Review {
  int32_t item = -1;
  int64_t time_s = 0;   // when it was written, >= 1 day after the purchase
  int rating = 0;       // 1-5
  std::string summary;  // a short title, no final period
  std::vector<ReviewSentence> sentences;  // 1-3
  // "I bought it because ...", one sentence ending with ".".
  std::string explanation;

  // The sentences joined by spaces.
  std::string Text() const;
};

// Everything one user did, in time order.
struct UserTimeline {
  // Strictly increasing times, all before the world's end. Reviews appear
  // as kReview events (with their rating) at the time they were written.
  std::vector<Event> events;
  // The review of each kReview event, in the same order.
  std::vector<Review> reviews;
  // Sessions started (numbers 0..sessions-1 appear in events).
  int sessions = 0;
};

// Simulates user `user_index` (must be in range) over the world's days.
// Deterministic; thread-safe (reads the world only).
UserTimeline SimulateUser(const ShopWorld& world, int64_t user_index);

}  // namespace optrec

#endif  // OPTREC_TUNING_WORLD_SIMULATE_H_
