// All the weights of one Hugging Face model directory, whether stored in one
// safetensors file or sharded over several.
#ifndef OPTREC_CORE_CHECKPOINT_WEIGHT_STORE_H_
#define OPTREC_CORE_CHECKPOINT_WEIGHT_STORE_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/checkpoint/safetensors.h"

namespace optrec {

// The tensors of a model directory. Immutable after OpenDir: every method is
// const and safe to call from many threads at once. Views and aliasing
// tensors stay valid while this object, or any tensor from Get, is alive.
class WeightStore {
 public:
  // Opens the weights in `dir`: "model.safetensors" when present, otherwise
  // "model.safetensors.index.json" ({"metadata": ..., "weight_map":
  // {tensor: shard file name}}) and every shard it names, all opened now.
  // With an index, the store holds exactly the tensors of "weight_map";
  // other tensors a shard may hold are ignored.
  //
  // Errors name the directory and the file or tensor at fault:
  //   NotFound: neither file exists in `dir`.
  //   DataLoss: the index is not valid JSON, lacks an object "weight_map"
  //     of strings, names a shard that is missing or not a plain file name in
  //     `dir`, or maps a tensor to a shard that does not hold it.
  //   Any error of SafetensorsFile::Open for the weight files.
  static absl::StatusOr<std::shared_ptr<const WeightStore>> OpenDir(
      const std::string& dir);

  // The directory given to OpenDir.
  const std::string& dir() const { return dir_; }

  // Names of all tensors across all shards, sorted (byte-wise).
  std::vector<std::string> names() const;

  // The tensor called `name`, or nullptr when there is none. The pointer
  // lives as long as this object.
  const TensorView* Find(std::string_view name) const;

  // The tensor called `name` as a CPU tensor of `dtype` (see ToTorch for when
  // it aliases the file and which conversions exist).
  // NotFound naming the directory and tensor when absent; InvalidArgument
  // naming the directory, the tensor, the expected and the actual shape when
  // its shape is not `expected_shape`; ToTorch's errors otherwise.
  absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                    absl::Span<const int64_t> expected_shape,
                                    torch::ScalarType dtype) const;

  // A stable content hash: XXH3-128 as 32 lowercase hex digits, over `extra`
  // (callers pass their canonical config text) and then every tensor in
  // sorted name order: its name, dtype name, shape and raw bytes, each field
  // length-prefixed so that no two different inputs run together. The same
  // weights give the same value however they are sharded or laid out in
  // their files. Reads every byte of every tensor, so it costs one pass over
  // the weights.
  std::string Fingerprint(std::string_view extra) const;

 private:
  struct Entry {
    const TensorView* view;                       // Owned by `file`.
    std::shared_ptr<const SafetensorsFile> file;  // The shard holding it.
  };

  explicit WeightStore(std::string dir) : dir_(std::move(dir)) {}

  std::string dir_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace optrec

#endif  // OPTREC_CORE_CHECKPOINT_WEIGHT_STORE_H_
