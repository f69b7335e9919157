#include "core/model/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace optrec {

KVCache::KVCache(int64_t rows, int64_t layers, int64_t kv_heads,
                 int64_t head_dim, torch::TensorOptions options)
    : kv_heads_(kv_heads),
      head_dim_(head_dim),
      options_(options),
      keys_(layers),
      values_(layers),
      next_position_(rows, 0),
      valid_count_(rows, 0) {
  for (int64_t l = 0; l < layers; ++l) {
    keys_[l] = torch::empty({rows, kv_heads, 0, head_dim}, options_);
    values_[l] = torch::empty({rows, kv_heads, 0, head_dim}, options_);
  }
  auto device = options_.device();
  positions_ =
      torch::zeros({rows, 0}, torch::dtype(torch::kInt64).device(device));
  valid_ = torch::zeros({rows, 0}, torch::dtype(torch::kBool).device(device));
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (size_t l = 0; l < keys_.size(); ++l) {
    total += keys_[l].numel() * keys_[l].element_size();
    total += values_[l].numel() * values_[l].element_size();
  }
  return total;
}

void KVCache::Reserve(int64_t columns) {
  if (columns <= capacity_) return;
  // Grow geometrically so that a decode loop of n steps copies O(n) columns.
  int64_t capacity = std::max<int64_t>(columns, capacity_ * 2);
  capacity = std::max<int64_t>(capacity, 16);
  const int64_t b = rows();
  auto grow = [&](const torch::Tensor& old, torch::Tensor fresh) {
    fresh.narrow(2, 0, columns_).copy_(old.narrow(2, 0, columns_));
    return fresh;
  };
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l] = grow(
        keys_[l], torch::empty({b, kv_heads_, capacity, head_dim_}, options_));
    values_[l] =
        grow(values_[l],
             torch::empty({b, kv_heads_, capacity, head_dim_}, options_));
  }
  torch::Tensor positions = torch::zeros({b, capacity}, positions_.options());
  torch::Tensor valid = torch::zeros({b, capacity}, valid_.options());
  positions.narrow(1, 0, columns_).copy_(positions_.narrow(1, 0, columns_));
  valid.narrow(1, 0, columns_).copy_(valid_.narrow(1, 0, columns_));
  positions_ = positions;
  valid_ = valid;
  capacity_ = capacity;
}

std::pair<torch::Tensor, torch::Tensor> KVCache::BeginStep(
    const torch::Tensor& positions, const torch::Tensor& valid) {
  const int64_t t = positions.size(1);
  Reserve(columns_ + t);
  positions_.narrow(1, columns_, t).copy_(positions);
  valid_.narrow(1, columns_, t).copy_(valid);
  // Row bookkeeping on the host: next position and valid count.
  torch::Tensor pos_cpu = positions.to(torch::kCPU);
  torch::Tensor valid_cpu = valid.to(torch::kCPU);
  auto pos_a = pos_cpu.accessor<int64_t, 2>();
  auto valid_a = valid_cpu.accessor<bool, 2>();
  step_next_position_ = next_position_;
  step_valid_count_ = valid_count_;
  for (int64_t r = 0; r < rows(); ++r) {
    for (int64_t c = 0; c < t; ++c) {
      if (!valid_a[r][c]) continue;
      next_position_[r] = std::max(next_position_[r], pos_a[r][c] + 1);
      ++valid_count_[r];
    }
  }
  pending_ = t;
  columns_ += t;
  return {positions_.narrow(1, 0, columns_), valid_.narrow(1, 0, columns_)};
}

std::pair<torch::Tensor, torch::Tensor> KVCache::Store(
    int64_t layer, const torch::Tensor& keys, const torch::Tensor& values) {
  const int64_t start = columns_ - pending_;
  keys_[layer].narrow(2, start, pending_).copy_(keys);
  values_[layer].narrow(2, start, pending_).copy_(values);
  return {keys_[layer].narrow(2, 0, columns_),
          values_[layer].narrow(2, 0, columns_)};
}

void KVCache::AbortStep() {
  if (pending_ == 0) return;
  columns_ -= pending_;
  pending_ = 0;
  next_position_ = step_next_position_;
  valid_count_ = step_valid_count_;
}

absl::Status KVCache::SelectRows(const std::vector<int64_t>& rows) {
  for (int64_t r : rows) {
    if (r < 0 || r >= this->rows()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KVCache::SelectRows: row ", r, " outside [0, ", this->rows(), ")"));
    }
  }
  auto device = positions_.device();
  torch::Tensor index =
      torch::tensor(rows, torch::dtype(torch::kInt64)).to(device);
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l] = keys_[l].index_select(0, index);
    values_[l] = values_[l].index_select(0, index);
  }
  positions_ = positions_.index_select(0, index);
  valid_ = valid_.index_select(0, index);
  std::vector<int64_t> next, count;
  for (int64_t r : rows) {
    next.push_back(next_position_[r]);
    count.push_back(valid_count_[r]);
  }
  next_position_ = std::move(next);
  valid_count_ = std::move(count);
  pending_ = 0;
  return absl::OkStatus();
}

absl::Status KVCache::AppendRows(const KVCache& other) {
  if (other.layers() != layers() || other.kv_heads_ != kv_heads_ ||
      other.head_dim_ != head_dim_ ||
      other.options_.dtype() != options_.dtype() ||
      other.options_.device() != options_.device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KVCache::AppendRows: caches differ: layers ", layers(), " vs ",
        other.layers(), ", kv heads ", kv_heads_, " vs ", other.kv_heads_,
        ", head width ", head_dim_, " vs ", other.head_dim_, ", dtype ",
        std::string(options_.dtype().name()), " vs ",
        std::string(other.options_.dtype().name()), ", device ",
        options_.device().str(), " vs ", other.options_.device().str()));
  }
  const int64_t columns = std::max(columns_, other.columns_);
  auto pad = [columns](const torch::Tensor& t, int64_t used, int64_t dim) {
    torch::Tensor view = t.narrow(dim, 0, used);
    if (used == columns) return view;
    std::vector<int64_t> shape = view.sizes().vec();
    shape[dim] = columns - used;
    return torch::cat({view, torch::zeros(shape, view.options())}, dim);
  };
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l] = torch::cat(
        {pad(keys_[l], columns_, 2), pad(other.keys_[l], other.columns_, 2)});
    values_[l] = torch::cat({pad(values_[l], columns_, 2),
                             pad(other.values_[l], other.columns_, 2)});
  }
  positions_ = torch::cat(
      {pad(positions_, columns_, 1), pad(other.positions_, other.columns_, 1)});
  valid_ = torch::cat(
      {pad(valid_, columns_, 1), pad(other.valid_, other.columns_, 1)});
  next_position_.insert(next_position_.end(), other.next_position_.begin(),
                        other.next_position_.end());
  valid_count_.insert(valid_count_.end(), other.valid_count_.begin(),
                      other.valid_count_.end());
  columns_ = capacity_ = columns;
  pending_ = 0;
  return absl::OkStatus();
}

void KVCache::Compact() {
  if (columns_ == 0) return;
  torch::Tensor used = valid_.narrow(1, 0, columns_).any(0);  // [S]
  torch::Tensor keep = used.nonzero().squeeze(1);             // [S']
  if (keep.size(0) == columns_) return;
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l] = keys_[l].narrow(2, 0, columns_).index_select(2, keep);
    values_[l] = values_[l].narrow(2, 0, columns_).index_select(2, keep);
  }
  positions_ = positions_.narrow(1, 0, columns_).index_select(1, keep);
  valid_ = valid_.narrow(1, 0, columns_).index_select(1, keep);
  columns_ = capacity_ = keep.size(0);
  pending_ = 0;
}

}  // namespace optrec
