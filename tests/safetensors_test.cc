// Tests of the safetensors reader and writer, the model-directory weight
// store, and (on the shared tiny Llama checkpoint) the plain-loop reference
// forward pass that the transformer tests compare against.
#include "core/checkpoint/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/checkpoint/weight_store.h"
#include "nlohmann/json.hpp"
#include "tests/testlib/reference_forward.h"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// A fresh directory under the gtest temporary folder, removed at the end.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = testing::TempDir() + "optrec_st_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed for " << pattern;
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add,
                    ignored);
    fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Names of the entries in the directory.
  std::vector<std::string> List() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

 private:
  std::string path_;
};

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Writes a safetensors file by hand: `header_size` (the JSON's own size when
// negative), the JSON text, then `data_bytes` bytes of value 1.
void WriteRaw(const std::string& path, const std::string& json,
              size_t data_bytes, int64_t header_size = -1) {
  const uint64_t size =
      header_size < 0 ? json.size() : static_cast<uint64_t>(header_size);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&size), sizeof(size));
  out << json << std::string(data_bytes, '\x01');
}

// Checks `status` has `code` and a message holding every one of `parts`.
void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(part));
  }
}

std::shared_ptr<const SafetensorsFile> OpenOrDie(const std::string& path) {
  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? *file : nullptr;
}

torch::Tensor ToTorchOrDie(const std::shared_ptr<const SafetensorsFile>& file,
                           const std::string& name, torch::ScalarType dtype) {
  const TensorView* view = file->Find(name);
  EXPECT_NE(view, nullptr) << name;
  if (view == nullptr) return torch::Tensor();
  absl::StatusOr<torch::Tensor> tensor = ToTorch(file, *view, dtype);
  EXPECT_TRUE(tensor.ok()) << tensor.status();
  return tensor.ok() ? *tensor : torch::Tensor();
}

// One tensor of every dtype, plus a scalar, an empty and a non-contiguous
// tensor, in unsorted order.
NamedTensors EveryDtype() {
  torch::manual_seed(7);
  return {
      {"f64", torch::randn({3, 4}, torch::kDouble)},
      {"f32", torch::randn({2, 3, 2})},
      {"f16", torch::randn({5}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"i64", torch::tensor(std::vector<int64_t>{-(int64_t{1} << 40), 0, 7})},
      {"i32", torch::arange(-3, 3, torch::kInt).reshape({2, 3})},
      {"i16", torch::tensor({-32768, 32767}, torch::kShort)},
      {"i8", torch::tensor({-128, 127, 0}, torch::kChar)},
      {"u8", torch::tensor({0, 255, 17}, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 4})},
      {"transposed", torch::randn({4, 3}).t()},
  };
}

TEST(SafetensorsTest, RoundTripsEveryDtype) {
  ScratchDir dir;
  const std::string path = dir.File("all.safetensors");
  const NamedTensors tensors = EveryDtype();
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"note", "x y"}};
  ASSERT_TRUE(WriteSafetensors(path, tensors, metadata).ok());

  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->metadata(), metadata);
  std::vector<std::string> expected_names;
  for (const auto& [name, tensor] : tensors) expected_names.push_back(name);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(file->names(), expected_names);
  EXPECT_EQ(file->Find("missing"), nullptr);

  for (const auto& [name, tensor] : tensors) {
    SCOPED_TRACE(name);
    const TensorView* view = file->Find(name);
    ASSERT_NE(view, nullptr);
    EXPECT_EQ(view->name, name);
    EXPECT_EQ(DTypeToTorch(view->dtype), tensor.scalar_type());
    EXPECT_EQ(view->shape, tensor.sizes().vec());
    EXPECT_EQ(view->numel(), tensor.numel());
    EXPECT_EQ(view->nbytes, view->numel() * DTypeSize(view->dtype));
    torch::Tensor back = ToTorchOrDie(file, name, tensor.scalar_type());
    ASSERT_TRUE(back.defined());
    EXPECT_TRUE(torch::equal(back, tensor));
  }
}

TEST(SafetensorsTest, WriterPadsHeaderAndLaysOutTensorsInNameOrder) {
  ScratchDir dir;
  const std::string path = dir.File("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, EveryDtype()).ok());

  const std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  const std::string header = bytes.substr(8, header_size);
  EXPECT_EQ(header.find_last_not_of(' ') + 1,
            header.find_last_of('}') + 1);  // Only spaces after the JSON.

  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  const uint8_t* data =
      reinterpret_cast<const uint8_t*>(file->Find("bf16")->data);
  size_t expected_offset = 0;
  for (const std::string& name : file->names()) {
    const TensorView* view = file->Find(name);
    EXPECT_EQ(static_cast<size_t>(view->data - data), expected_offset) << name;
    expected_offset += view->nbytes;
  }
  EXPECT_EQ(bytes.size(), 8 + header_size + expected_offset);
}

TEST(SafetensorsTest, StoresHalfAndBFloat16InIeeeLayout) {
  ScratchDir dir;
  const std::string path = dir.File("bits.safetensors");
  const torch::Tensor values = torch::tensor({1.0f, -2.0f});
  ASSERT_TRUE(WriteSafetensors(path, {{"b", values.to(torch::kBFloat16)},
                                      {"h", values.to(torch::kHalf)}})
                  .ok());
  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  // 1.0 and -2.0: half 0x3c00, 0xc000; bfloat16 0x3f80, 0xc000.
  const std::vector<uint8_t> half_bytes = {0x00, 0x3c, 0x00, 0xc0};
  const std::vector<uint8_t> bf16_bytes = {0x80, 0x3f, 0x00, 0xc0};
  const TensorView* h = file->Find("h");
  const TensorView* b = file->Find("b");
  EXPECT_EQ(std::vector<uint8_t>(h->data, h->data + h->nbytes), half_bytes);
  EXPECT_EQ(std::vector<uint8_t>(b->data, b->data + b->nbytes), bf16_bytes);
}

TEST(SafetensorsTest, ConvertsBetweenFloatTypesAccurately) {
  ScratchDir dir;
  const std::string path = dir.File("float.safetensors");
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({1000}) * 10;  // f32
  ASSERT_TRUE(WriteSafetensors(path, {{"h", x.to(torch::kHalf)},
                                      {"b", x.to(torch::kBFloat16)},
                                      {"f", x},
                                      {"d", x.to(torch::kDouble)}})
                  .ok());
  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);

  // Widening is exact; the error is only that of storing in 16 bits.
  const torch::Tensor h32 = ToTorchOrDie(file, "h", torch::kFloat);
  const torch::Tensor b32 = ToTorchOrDie(file, "b", torch::kFloat);
  EXPECT_TRUE(torch::equal(h32, x.to(torch::kHalf).to(torch::kFloat)));
  EXPECT_TRUE(torch::equal(b32, x.to(torch::kBFloat16).to(torch::kFloat)));
  EXPECT_TRUE(torch::allclose(h32, x, /*rtol=*/std::ldexp(1.0, -11),
                              /*atol=*/1e-6));
  EXPECT_TRUE(torch::allclose(b32, x, /*rtol=*/std::ldexp(1.0, -8),
                              /*atol=*/1e-6));
  EXPECT_FALSE(torch::equal(h32, x));  // Really was rounded.
  EXPECT_TRUE(torch::equal(ToTorchOrDie(file, "h", torch::kDouble),
                           x.to(torch::kHalf).to(torch::kDouble)));
  EXPECT_TRUE(torch::equal(ToTorchOrDie(file, "d", torch::kFloat), x));
  EXPECT_TRUE(torch::equal(ToTorchOrDie(file, "f", torch::kDouble),
                           x.to(torch::kDouble)));

  // Narrowing rounds to nearest, as torch does.
  EXPECT_TRUE(
      torch::equal(ToTorchOrDie(file, "f", torch::kHalf), x.to(torch::kHalf)));
  EXPECT_TRUE(torch::equal(ToTorchOrDie(file, "f", torch::kBFloat16),
                           x.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(ToTorchOrDie(file, "b", torch::kHalf),
                           x.to(torch::kBFloat16).to(torch::kHalf)));
}

TEST(SafetensorsTest, RejectsConversionsOutsideFloatTypes) {
  ScratchDir dir;
  const std::string path = dir.File("ints.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"ids", torch::arange(4, torch::kInt)},
                                      {"w", torch::ones({2})}})
                  .ok());
  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  ExpectError(ToTorch(file, *file->Find("ids"), torch::kFloat).status(),
              absl::StatusCode::kInvalidArgument, {path, "ids", "I32", "F32"});
  ExpectError(ToTorch(file, *file->Find("w"), torch::kLong).status(),
              absl::StatusCode::kInvalidArgument, {path, "w"});
  ExpectError(ToTorch(file, *file->Find("w"), torch::kComplexFloat).status(),
              absl::StatusCode::kInvalidArgument, {path, "w"});
}

TEST(SafetensorsTest, MatchingAlignedTensorAliasesMappingAndKeepsFileAlive) {
  ScratchDir dir;
  const std::string path = dir.File("alias.safetensors");
  torch::manual_seed(5);
  const torch::Tensor w = torch::randn({16, 8});
  ASSERT_TRUE(WriteSafetensors(path, {{"w", w}}).ok());
  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  const TensorView* view = file->Find("w");
  ASSERT_NE(view, nullptr);

  torch::Tensor alias = ToTorchOrDie(file, "w", torch::kFloat);
  ASSERT_TRUE(alias.defined());
  EXPECT_EQ(alias.data_ptr(), static_cast<const void*>(view->data));
  EXPECT_GE(file.use_count(), 2);  // The tensor holds the file.

  // A converted tensor is a copy and holds nothing.
  torch::Tensor copy = ToTorchOrDie(file, "w", torch::kDouble);
  EXPECT_NE(copy.data_ptr(), static_cast<const void*>(view->data));

  // The mapping outlives the caller's handle while the tensor lives.
  std::weak_ptr<const SafetensorsFile> weak = file;
  file.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_TRUE(torch::equal(alias, w));

  // A stray write copies the page; the file on disk is unchanged.
  alias.mul_(2);
  EXPECT_TRUE(torch::equal(alias, w * 2));
  auto reopened = OpenOrDie(path);
  ASSERT_NE(reopened, nullptr);
  EXPECT_TRUE(torch::equal(ToTorchOrDie(reopened, "w", torch::kFloat), w));

  alias = torch::Tensor();
  EXPECT_TRUE(weak.expired());
}

TEST(SafetensorsTest, UnalignedTensorIsCopied) {
  ScratchDir dir;
  const std::string path = dir.File("unaligned.safetensors");
  // "a" (1 byte) comes first in name order, so "b" starts at offset 1.
  const torch::Tensor b = torch::tensor({1.5f, -2.25f, 3.0f});
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"b", b}, {"a", torch::tensor({9}, torch::kByte)}})
                  .ok());
  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  const TensorView* view = file->Find("b");
  ASSERT_NE(view, nullptr);
  ASSERT_NE(reinterpret_cast<uintptr_t>(view->data) % 4, 0u);
  torch::Tensor back = ToTorchOrDie(file, "b", torch::kFloat);
  ASSERT_TRUE(back.defined());
  EXPECT_NE(back.data_ptr(), static_cast<const void*>(view->data));
  EXPECT_TRUE(torch::equal(back, b));
}

TEST(SafetensorsTest, RejectedWriteLeavesExistingFileUnchanged) {
  ScratchDir dir;
  const std::string path = dir.File("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", torch::ones({3})}}).ok());
  const std::string before = ReadBytes(path);

  const torch::Tensor complex = torch::ones({2}, torch::kComplexFloat);
  ExpectError(
      WriteSafetensors(path, {{"w", torch::zeros({3})}, {"bad", complex}}),
      absl::StatusCode::kInvalidArgument, {path, "bad"});
  ExpectError(WriteSafetensors(
                  path, {{"w", torch::zeros({3})}, {"w", torch::zeros({3})}}),
              absl::StatusCode::kInvalidArgument, {path, "w"});
  ExpectError(WriteSafetensors(path, {{"__metadata__", torch::zeros({1})}}),
              absl::StatusCode::kInvalidArgument, {path, "__metadata__"});
  ExpectError(WriteSafetensors(path, {{"u", torch::Tensor()}}),
              absl::StatusCode::kInvalidArgument, {path, "u"});
  ExpectError(WriteSafetensors(path, {{"w", torch::zeros({1})}},
                               {{"note", "not utf-8 \xff"}}),
              absl::StatusCode::kInvalidArgument, {path, "UTF-8"});

  EXPECT_EQ(ReadBytes(path), before);
  EXPECT_THAT(dir.List(), UnorderedElementsAre("model.safetensors"));
}

TEST(SafetensorsTest, FailedWriteCreatesNoFileAndLeavesNoTemporary) {
  ScratchDir dir;
  // The directory does not exist: the temporary file cannot be made.
  const std::string nowhere = dir.File("no/such/dir/model.safetensors");
  absl::Status status = WriteSafetensors(nowhere, {{"w", torch::ones({3})}});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr(nowhere));
  EXPECT_FALSE(fs::exists(nowhere));

  // `path` is a directory: the data is written, then the rename fails and the
  // temporary file must be removed.
  const std::string taken = dir.File("taken");
  ASSERT_TRUE(fs::create_directory(taken));
  status = WriteSafetensors(taken, {{"w", torch::ones({1024})}});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr(taken));
  EXPECT_TRUE(fs::is_directory(taken));
  EXPECT_THAT(dir.List(), UnorderedElementsAre("taken"));
}

TEST(SafetensorsTest, WriteIntoReadOnlyDirectoryFailsWithoutFile) {
  if (geteuid() == 0) {
    GTEST_SKIP() << "running as root, which may write into read-only "
                    "directories; FailedWriteCreatesNoFileAndLeavesNoTemporary "
                    "covers the failure paths";
  }
  ScratchDir dir;
  const std::string locked = dir.File("locked");
  ASSERT_TRUE(fs::create_directory(locked));
  fs::permissions(locked, fs::perms::owner_read | fs::perms::owner_exec);
  const std::string path = locked + "/model.safetensors";
  EXPECT_FALSE(WriteSafetensors(path, {{"w", torch::ones({3})}}).ok());
  EXPECT_FALSE(fs::exists(path));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  ScratchDir dir;
  const std::string path = dir.File("absent.safetensors");
  ExpectError(SafetensorsFile::Open(path).status(), absl::StatusCode::kNotFound,
              {path});
}

TEST(SafetensorsTest, FileShorterThanSizePrefixIsDataLoss) {
  ScratchDir dir;
  const std::string path = dir.File("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abcde";
  ExpectError(SafetensorsFile::Open(path).status(), absl::StatusCode::kDataLoss,
              {path});
}

TEST(SafetensorsTest, BoolByteOtherThanZeroOrOneIsDataLoss) {
  ScratchDir dir;
  const std::string path = dir.File("bool.safetensors");
  const std::string json =
      R"({"flags":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})";
  WriteRaw(path, json, 0);
  std::ofstream(path, std::ios::binary | std::ios::app) << '\x01' << '\x07';
  auto file = OpenOrDie(path);
  ASSERT_NE(file, nullptr);
  ExpectError(ToTorch(file, *file->Find("flags"), torch::kBool).status(),
              absl::StatusCode::kDataLoss, {path, "flags"});
}

// A hand-made file that Open must reject.
struct BadFileCase {
  std::string test_name;
  std::string json;
  size_t data_bytes;
  int64_t header_size;  // -1: the JSON's size.
  absl::StatusCode code;
  std::vector<std::string> named;  // Besides the path.
};

class BadFileTest : public testing::TestWithParam<BadFileCase> {};

TEST_P(BadFileTest, IsRejectedWithCodeNamingPathAndTensor) {
  const BadFileCase& c = GetParam();
  ScratchDir dir;
  const std::string path = dir.File("bad.safetensors");
  WriteRaw(path, c.json, c.data_bytes, c.header_size);
  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  std::vector<std::string> parts = c.named;
  parts.push_back(path);
  ExpectError(file.status(), c.code, parts);
}

std::string Entry(const std::string& name, const std::string& dtype,
                  const std::string& shape, const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

INSTANTIATE_TEST_SUITE_P(
    SafetensorsTest, BadFileTest,
    testing::Values(
        BadFileCase{"HeaderSizeLargerThanFile",
                    "{" + Entry("w", "F32", "[1]", "[0,4]") + "}",
                    4,
                    1000,
                    absl::StatusCode::kDataLoss,
                    {"1000"}},
        BadFileCase{"InvalidJson",
                    R"({"w": {"dtype": )",
                    0,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"JSON"}},
        BadFileCase{"HeaderNotAnObject",
                    "[1, 2]",
                    0,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"object"}},
        BadFileCase{"UnknownDtype",
                    "{" + Entry("w", "F8", "[2]", "[0,2]") + "}",
                    2,
                    -1,
                    absl::StatusCode::kInvalidArgument,
                    {"'w'", "F8"}},
        BadFileCase{"ShapeDisagreesWithOffsets",
                    "{" + Entry("w", "F32", "[3]", "[0,8]") + "}",
                    8,
                    -1,
                    absl::StatusCode::kInvalidArgument,
                    {"'w'", "[3]"}},
        BadFileCase{"NegativeDimension",
                    "{" + Entry("w", "F32", "[-1]", "[0,0]") + "}",
                    0,
                    -1,
                    absl::StatusCode::kInvalidArgument,
                    {"'w'"}},
        BadFileCase{
            "ShapeOverflows",
            "{" + Entry("w", "F32", "[4294967296,4294967296]", "[0,0]") + "}",
            0,
            -1,
            absl::StatusCode::kInvalidArgument,
            {"'w'"}},
        BadFileCase{"OffsetsBeyondData",
                    "{" + Entry("w", "F32", "[4]", "[0,16]") + "}",
                    8,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"'w'", "16"}},
        BadFileCase{"OffsetsBackwards",
                    "{" + Entry("w", "F32", "[0]", "[8,0]") + "}",
                    8,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"'w'"}},
        BadFileCase{"OverlappingTensors",
                    "{" + Entry("a", "F32", "[2]", "[0,8]") + "," +
                        Entry("b", "F32", "[2]", "[4,12]") + "}",
                    12,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"'a'", "'b'"}},
        BadFileCase{"EntryMissingOffsets",
                    R"({"w":{"dtype":"F32","shape":[1]}})",
                    4,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"'w'", "data_offsets"}},
        BadFileCase{"MetadataValueNotString",
                    R"({"__metadata__":{"step":3}})",
                    0,
                    -1,
                    absl::StatusCode::kDataLoss,
                    {"step"}}),
    [](const testing::TestParamInfo<BadFileCase>& info) {
      return info.param.test_name;
    });

// ---------------------------------------------------------------------------
// WeightStore.

// Small weights of several dtypes, as a checkpoint might hold them.
NamedTensors StoreWeights() {
  torch::manual_seed(11);
  return {
      {"model.a.weight", torch::randn({4, 3})},
      {"model.b.bias", torch::randn({3}).to(torch::kHalf)},
      {"model.c.ids", torch::arange(5, torch::kLong)},
      {"model.d.weight", torch::randn({2, 2, 2}).to(torch::kBFloat16)},
      {"model.e.weight", torch::randn({6})},
  };
}

// Writes `tensors` as model.safetensors in `dir`.
void WriteUnsharded(const std::string& dir, const NamedTensors& tensors) {
  ASSERT_TRUE(
      WriteSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}})
          .ok());
}

// Writes `tensors` over two shards, alternating, plus the index.
void WriteSharded(const std::string& dir, const NamedTensors& tensors) {
  const std::string shard_names[2] = {"model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors"};
  NamedTensors shards[2];
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    shards[i % 2].push_back(tensors[i]);
    weight_map[tensors[i].first] = shard_names[i % 2];
  }
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE(WriteSafetensors(dir + "/" + shard_names[s], shards[s]).ok());
  }
  nlohmann::json index = {{"metadata", {{"total_size", 123}}},
                          {"weight_map", weight_map}};
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2);
}

std::shared_ptr<const WeightStore> OpenStoreOrDie(const std::string& dir) {
  absl::StatusOr<std::shared_ptr<const WeightStore>> store =
      WeightStore::OpenDir(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *store : nullptr;
}

TEST(WeightStoreTest, GetChecksShapeAndConverts) {
  ScratchDir dir;
  const NamedTensors tensors = StoreWeights();
  WriteUnsharded(dir.path(), tensors);
  auto store = OpenStoreOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->names(), (std::vector<std::string>{
                                "model.a.weight", "model.b.bias", "model.c.ids",
                                "model.d.weight", "model.e.weight"}));
  ASSERT_NE(store->Find("model.a.weight"), nullptr);
  EXPECT_EQ(store->Find("nope"), nullptr);

  absl::StatusOr<torch::Tensor> a =
      store->Get("model.a.weight", {4, 3}, torch::kFloat);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(torch::equal(*a, tensors[0].second));
  absl::StatusOr<torch::Tensor> b =
      store->Get("model.b.bias", {3}, torch::kFloat);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(torch::equal(*b, tensors[1].second.to(torch::kFloat)));

  ExpectError(store->Get("model.a.weight", {3, 4}, torch::kFloat).status(),
              absl::StatusCode::kInvalidArgument,
              {dir.path(), "model.a.weight", "[4, 3]", "[3, 4]"});
  ExpectError(store->Get("model.z.weight", {1}, torch::kFloat).status(),
              absl::StatusCode::kNotFound, {dir.path(), "model.z.weight"});
  ExpectError(store->Get("model.c.ids", {5}, torch::kFloat).status(),
              absl::StatusCode::kInvalidArgument, {"model.c.ids"});
}

TEST(WeightStoreTest, ShardedAndUnshardedCopiesAgreeAndShareFingerprint) {
  ScratchDir one;
  ScratchDir two;
  const NamedTensors tensors = StoreWeights();
  WriteUnsharded(one.path(), tensors);
  WriteSharded(two.path(), tensors);
  auto single = OpenStoreOrDie(one.path());
  auto sharded = OpenStoreOrDie(two.path());
  ASSERT_NE(single, nullptr);
  ASSERT_NE(sharded, nullptr);

  EXPECT_EQ(single->names(), sharded->names());
  for (const auto& [name, tensor] : tensors) {
    absl::StatusOr<torch::Tensor> got =
        sharded->Get(name, tensor.sizes().vec(), tensor.scalar_type());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(torch::equal(*got, tensor)) << name;
  }

  const std::string fingerprint = single->Fingerprint("config");
  EXPECT_EQ(fingerprint.size(), 32u);
  EXPECT_EQ(fingerprint.find_first_not_of("0123456789abcdef"),
            std::string::npos);
  EXPECT_EQ(sharded->Fingerprint("config"), fingerprint);
  EXPECT_EQ(single->Fingerprint("config"), fingerprint);  // Stable.
  EXPECT_NE(single->Fingerprint("config2"), fingerprint);
}

TEST(WeightStoreTest, FingerprintChangesWhenOneValueChanges) {
  ScratchDir one;
  ScratchDir two;
  NamedTensors tensors = StoreWeights();
  WriteUnsharded(one.path(), tensors);
  tensors[4].second = tensors[4].second.clone();
  tensors[4].second[2] += 1e-3;
  WriteSharded(two.path(), tensors);
  auto a = OpenStoreOrDie(one.path());
  auto b = OpenStoreOrDie(two.path());
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a->Fingerprint("config"), b->Fingerprint("config"));
}

TEST(WeightStoreTest, EmptyDirectoryIsNotFound) {
  ScratchDir dir;
  ExpectError(WeightStore::OpenDir(dir.path()).status(),
              absl::StatusCode::kNotFound, {dir.path()});
}

TEST(WeightStoreTest, MissingShardIsDataLoss) {
  ScratchDir dir;
  WriteSharded(dir.path(), StoreWeights());
  fs::remove(dir.File("model-00002-of-00002.safetensors"));
  ExpectError(WeightStore::OpenDir(dir.path()).status(),
              absl::StatusCode::kDataLoss,
              {dir.path(), "model-00002-of-00002.safetensors"});
}

TEST(WeightStoreTest, TensorAbsentFromItsShardIsDataLoss) {
  ScratchDir dir;
  WriteSharded(dir.path(), StoreWeights());
  nlohmann::json index = nlohmann::json::parse(
      ReadBytes(dir.File("model.safetensors.index.json")));
  index["weight_map"]["model.ghost.weight"] =
      "model-00001-of-00002.safetensors";
  std::ofstream(dir.File("model.safetensors.index.json")) << index.dump();
  ExpectError(WeightStore::OpenDir(dir.path()).status(),
              absl::StatusCode::kDataLoss, {dir.path(), "model.ghost.weight"});
}

TEST(WeightStoreTest, BadIndexIsDataLoss) {
  ScratchDir dir;
  const std::string index = dir.File("model.safetensors.index.json");
  std::ofstream(index) << "{\"weight_map\": ";
  ExpectError(WeightStore::OpenDir(dir.path()).status(),
              absl::StatusCode::kDataLoss, {index});

  std::ofstream(index) << R"({"weight_map": {"w": "../elsewhere.bin"}})";
  ExpectError(WeightStore::OpenDir(dir.path()).status(),
              absl::StatusCode::kDataLoss, {index, "'w'"});
}

// ---------------------------------------------------------------------------
// The shared tiny Llama checkpoint, read from outside the repository.

const char kLlamaDir[] =
    OPTREC_SOURCE_DIR "/../shared/data/models/llama-gqa-tiny";

#define SKIP_WITHOUT_LLAMA()                                           \
  if (!fs::exists(std::string(kLlamaDir) + "/model.safetensors")) {    \
    GTEST_SKIP() << "shared checkpoint " << kLlamaDir << " is absent"; \
  }

nlohmann::json ReadJson(const std::string& path) {
  return nlohmann::json::parse(ReadBytes(path), nullptr, false);
}

ReferenceConfig LlamaConfigFromFile(const std::string& path) {
  const nlohmann::json config = ReadJson(path);
  ReferenceConfig c;
  c.family = "llama";
  c.hidden = config.value("hidden_size", 0);
  c.layers = config.value("num_hidden_layers", 0);
  c.heads = config.value("num_attention_heads", 0);
  c.kv_heads = config.value("num_key_value_heads", c.heads);
  c.head_dim = config.value("head_dim", c.heads ? c.hidden / c.heads : 0);
  c.ffn = config.value("intermediate_size", 0);
  c.vocab = config.value("vocab_size", 0);
  c.eps = config.value("rms_norm_eps", 1e-6);
  c.rope_theta = config.value("rope_theta", 10000.0);
  c.tied = config.value("tie_word_embeddings", false);
  return c;
}

TEST(SharedLlamaTest, OpensCheckpoint) {
  SKIP_WITHOUT_LLAMA();
  auto store = OpenStoreOrDie(kLlamaDir);
  ASSERT_NE(store, nullptr);
  // Embeddings, final norm, and 9 tensors in each of 5 layers; tied head.
  EXPECT_EQ(store->names().size(), 2u + 5 * 9);
  const TensorView* embed = store->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(embed->dtype, DType::kF32);
  EXPECT_EQ(store->Find("lm_head.weight"), nullptr);
  absl::StatusOr<torch::Tensor> k = store->Get(
      "model.layers.0.self_attn.k_proj.weight", {32, 64}, torch::kFloat);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_TRUE(torch::isfinite(*k).all().item<bool>());
}

TEST(SharedLlamaTest, ReferenceForwardMatchesPublishedLogits) {
  SKIP_WITHOUT_LLAMA();
  const ReferenceConfig config =
      LlamaConfigFromFile(std::string(kLlamaDir) + "/config.json");
  EXPECT_EQ(config.layers, 5);
  EXPECT_EQ(config.hidden, 64);
  EXPECT_EQ(config.heads, 8);
  EXPECT_EQ(config.kv_heads, 4);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.ffn, 172);
  EXPECT_EQ(config.vocab, 512);
  EXPECT_EQ(config.eps, 1e-5);
  EXPECT_EQ(config.rope_theta, 10000.0);
  EXPECT_TRUE(config.tied);

  auto store = OpenStoreOrDie(kLlamaDir);
  ASSERT_NE(store, nullptr);
  const ReferenceWeights weights = ReadAllWeights(*store);
  const nlohmann::json reference =
      ReadJson(std::string(kLlamaDir) + "/reference.json");
  const auto ids = reference.at("prompt_ids").get<std::vector<int>>();
  const auto expected =
      reference.at("logits_float64").get<std::vector<std::vector<double>>>();

  const std::vector<std::vector<double>> logits =
      ReferenceForward(config, weights, ids);
  ASSERT_EQ(logits.size(), ids.size());
  ASSERT_EQ(expected.size(), ids.size());
  double max_error = 0.0;
  for (size_t t = 0; t < ids.size(); ++t) {
    ASSERT_EQ(logits[t].size(), expected[t].size());
    for (size_t v = 0; v < logits[t].size(); ++v) {
      max_error = std::max(max_error, std::abs(logits[t][v] - expected[t][v]));
    }
  }
  EXPECT_LE(max_error, 1e-9);
}

TEST(SharedLlamaTest, ReferenceForwardReproducesGreedyDecoding) {
  SKIP_WITHOUT_LLAMA();
  const ReferenceConfig config =
      LlamaConfigFromFile(std::string(kLlamaDir) + "/config.json");
  auto store = OpenStoreOrDie(kLlamaDir);
  ASSERT_NE(store, nullptr);
  const nlohmann::json reference =
      ReadJson(std::string(kLlamaDir) + "/reference.json");
  const auto greedy = reference.at("greedy_from_bos").get<std::vector<int>>();
  ASSERT_FALSE(greedy.empty());

  // One causal pass over BOS and all but the last generated token predicts
  // every generated token at once.
  std::vector<int> ids = {reference.at("bos_id").get<int>()};
  ids.insert(ids.end(), greedy.begin(), greedy.end() - 1);
  const auto logits = ReferenceForward(config, ReadAllWeights(*store), ids);
  ASSERT_EQ(logits.size(), greedy.size());
  for (size_t t = 0; t < greedy.size(); ++t) {
    const auto best = std::max_element(logits[t].begin(), logits[t].end());
    EXPECT_EQ(best - logits[t].begin(), greedy[t]) << "position " << t;
  }
}

TEST(SharedLlamaTest, SoftPromptRowsActLikeTheirTokens) {
  SKIP_WITHOUT_LLAMA();
  const ReferenceConfig config =
      LlamaConfigFromFile(std::string(kLlamaDir) + "/config.json");
  auto store = OpenStoreOrDie(kLlamaDir);
  ASSERT_NE(store, nullptr);
  const ReferenceWeights weights = ReadAllWeights(*store);

  // Feeding the embeddings of the first tokens as prefix rows must give the
  // same logits as feeding the tokens.
  const std::vector<int> ids = {1, 461, 401, 378};
  const auto& [shape, embed] = weights.at("model.embed_tokens.weight");
  std::vector<std::vector<double>> prefix;
  for (int id : {ids[0], ids[1]}) {
    prefix.emplace_back(embed.begin() + id * shape[1],
                        embed.begin() + (id + 1) * shape[1]);
  }
  const auto by_ids = ReferenceForward(config, weights, ids);
  const auto by_prefix =
      ReferenceForward(config, weights, {ids[2], ids[3]}, prefix);
  ASSERT_EQ(by_prefix.size(), by_ids.size());
  for (size_t t = 0; t < by_ids.size(); ++t) {
    for (size_t v = 0; v < by_ids[t].size(); ++v) {
      EXPECT_DOUBLE_EQ(by_prefix[t][v], by_ids[t][v]);
    }
  }
}

}  // namespace
}  // namespace optrec
