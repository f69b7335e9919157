// Keys and values of past positions, for incremental decoding of a batch
// whose rows started at different times.
//
// Shape legend: B rows, K key/value heads, S cached columns, E head dim,
// T new columns in one step.
//
// Columns are shared by all rows; each (row, column) slot carries its own
// position and a validity flag, so rows of different lengths, rows that
// joined later (AppendRows) and the right padding of a batched step all live
// in one rectangular tensor, and attention masks by validity and position,
// never by column index.
//
// Not thread-safe: one owner (a decoder or one forward call) at a time.
// Row indices given to the accessors must be in [0, rows()).
#ifndef OPTREC_CORE_MODEL_KV_CACHE_H_
#define OPTREC_CORE_MODEL_KV_CACHE_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace optrec {

class KVCache {
 public:
  // An empty cache (S = 0) for `rows` rows of a model with `layers` layers,
  // `kv_heads` heads of width `head_dim`, stored as `options` (device and
  // dtype of the model's activations).
  KVCache(int64_t rows, int64_t layers, int64_t kv_heads, int64_t head_dim,
          torch::TensorOptions options);

  int64_t rows() const { return static_cast<int64_t>(next_position_.size()); }
  int64_t columns() const { return columns_; }
  int64_t layers() const { return static_cast<int64_t>(keys_.size()); }

  // The position the next token of `row` takes: one past its last valid
  // position, 0 for a row with none.
  int64_t next_position(int64_t row) const { return next_position_[row]; }

  // Valid slots of `row`.
  int64_t valid_count(int64_t row) const { return valid_count_[row]; }

  // Memory held by keys and values, in bytes (capacity, not just S).
  int64_t bytes() const;

  // Starts a step of T new columns: `positions` [B, T] int64 and `valid`
  // [B, T] bool describe them. Returns, for attention, the positions [B, S+T]
  // and validity [B, S+T] of all columns including the new ones. Every
  // layer's Store must follow before the next BeginStep.
  std::pair<torch::Tensor, torch::Tensor> BeginStep(
      const torch::Tensor& positions, const torch::Tensor& valid);

  // Writes layer `layer`'s new keys and values [B, K, T, E] into the columns
  // opened by BeginStep and returns all of that layer's keys and values
  // [B, K, S+T, E] (views into the cache).
  std::pair<torch::Tensor, torch::Tensor> Store(int64_t layer,
                                                const torch::Tensor& keys,
                                                const torch::Tensor& values);

  // Undoes the last step begun by BeginStep, whether its forward pass failed
  // or finished, so the cache is as it was before it. No-op when there is
  // none, or when SelectRows, AppendRows or Compact ran since.
  void AbortStep();

  // Keeps only the rows listed, in that order (rows that finished leave).
  // InvalidArgument naming the row when one is out of range; the cache is
  // then unchanged.
  absl::Status SelectRows(const std::vector<int64_t>& rows);

  // Adds the rows of `other` after this cache's rows (rows that start
  // later join). The shorter of the two is padded with invalid columns.
  // InvalidArgument when layer counts, heads, head widths or options differ.
  absl::Status AppendRows(const KVCache& other);

  // Drops columns that are invalid in every row (left after rows leave or
  // after padded steps), keeping the order of the rest.
  void Compact();

 private:
  void Reserve(int64_t columns);

  int64_t kv_heads_;
  int64_t head_dim_;
  torch::TensorOptions options_;
  int64_t columns_ = 0;                      // S, columns in use
  int64_t capacity_ = 0;                     // columns allocated
  int64_t pending_ = 0;                      // T of the step begun by BeginStep
  std::vector<int64_t> step_next_position_;  // before BeginStep, for abort
  std::vector<int64_t> step_valid_count_;    // before BeginStep, for abort
  std::vector<torch::Tensor> keys_;          // per layer [B, K, capacity, E]
  std::vector<torch::Tensor> values_;        // per layer [B, K, capacity, E]
  torch::Tensor positions_;             // [B, capacity] int64, CPU or device
  torch::Tensor valid_;                 // [B, capacity] bool
  std::vector<int64_t> next_position_;  // per row
  std::vector<int64_t> valid_count_;    // per row
};

}  // namespace optrec

#endif  // OPTREC_CORE_MODEL_KV_CACHE_H_
