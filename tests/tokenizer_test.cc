// Tests of the tokenizers: the Hugging Face tokenizer.json pipeline against
// reference ids from the Rust library (shared data), a tiny Llama-2-style
// file built here with hand-derived ids, a SentencePiece model trained here,
// the regex translation, bad input, and concurrent use.
#include "core/tokenizer/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/tokenizer/regex_split.h"
#include "core/tokenizer/sentencepiece_backend.h"
#include "nlohmann/json.hpp"

namespace optrec {
namespace {

namespace fs = std::filesystem;
using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kSharedData = OPTREC_SOURCE_DIR "/../shared/data";

// A fresh directory under the gtest temporary folder, removed at the end.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::path(testing::TempDir()) /
            (std::string("optrec_tok_") + info->test_suite_name() + "_" +
             info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string File(const std::string& name) const {
    return (path_ / name).string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

// ---------------------------------------------------------------------------
// Reference data: GPT-2 byte-level BPE, with GPT-2's and Llama 3's
// pre-tokenizers.

void ExpectReproducesCases(const std::string& folder) {
  const std::string dir = kSharedData + "/tokenizers/" + folder;
  if (!fs::exists(dir + "/tokenizer.json")) {
    GTEST_SKIP() << "reference data folder " << dir << " is missing; skipping";
  }
  auto tokenizer = LoadTokenizerFile(dir + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::ifstream in(dir + "/cases.json");
  const json cases = json::parse(in, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(cases.is_array()) << dir << "/cases.json";
  ASSERT_GT(cases.size(), 0u);
  int checked = 0;
  for (const json& item : cases) {
    const std::string text = item["text"].get<std::string>();
    const std::vector<int32_t> expected =
        item["ids"].get<std::vector<int32_t>>();
    auto ids = (*tokenizer)->Encode(text, /*add_special=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, expected) << folder << ": text '" << text << "'";
    auto decoded = (*tokenizer)->Decode(expected, /*skip_special=*/false);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text) << folder;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(cases.size()));
}

TEST(ReferenceDataTest, Gpt2ReproducesEveryCase) {
  ExpectReproducesCases("gpt2");
}

TEST(ReferenceDataTest, Llama3SplitReproducesEveryCase) {
  ExpectReproducesCases("gpt2-llama3-split");
}

TEST(ReferenceDataTest, Gpt2SpecialsAndTokenText) {
  const std::string path = kSharedData + "/tokenizers/gpt2/tokenizer.json";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is missing; skipping";
  auto tokenizer = LoadTokenizerFile(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& t = **tokenizer;
  EXPECT_EQ(t.vocab_size(), 50257);
  EXPECT_TRUE(t.IsSpecial(50256));
  EXPECT_FALSE(t.IsSpecial(15496));
  // "Ġworld" reads " world" in the middle of a sequence.
  EXPECT_EQ(*t.TokenText(995), " world");
  // 12520 is a space and the first two bytes of the 4-byte llama emoji: a
  // raw fragment, not U+FFFD.
  EXPECT_EQ(*t.TokenText(12520), " \xF0\x9F");
  EXPECT_EQ(*t.Decode({15496, 50256}, /*skip_special=*/true), "Hello");
  EXPECT_EQ(*t.Decode({15496, 50256}, /*skip_special=*/false),
            "Hello<|endoftext|>");
}

// ---------------------------------------------------------------------------
// A tiny Llama-2-style tokenizer.json built here.
//
// Vocabulary: 0 <unk>, 1 <s>, 2 </s>, 3 <0xC3>, 4 <0xA9>, 5 ▁, 6 h, 7 i,
// 8 c, 9 a, 10 f, 11 ▁h, 12 ▁hi, 13 ca, 14 ▁ca, 15 ▁caf, 16 ▁c.
// Merges by rank: 0 "▁ h", 1 "▁h i", 2 "c a", 3 "▁ ca", 4 "▁ca f", 5 "▁ c".
//
// Hand derivation for "hi café": the normalizer (Prepend ▁, Replace " " by
// ▁) gives "▁hi▁café", one word. Its characters are ▁ h i ▁ c a f é; é is not
// in the vocabulary and its UTF-8 bytes C3 A9 have byte tokens, so the
// symbols are 5 6 7 5 8 9 10 3 4. Applicable merges: (▁,h) rank 0 at 0,
// (▁,c) rank 5 at 3, (c,a) rank 2 at 4. Lowest rank first: ▁h, then ▁hi
// (rank 1); then ca (rank 2), which enables ▁ca (rank 3), then ▁caf
// (rank 4); (▁,c) is stale by then. A leftmost-first merger would have made
// ▁c and ended differently. Ids: 12 15 3 4, and with the template <s> first:
// 1 12 15 3 4.
//
// Decoding 1 12 15 3 4: Replace gives "<s>" " hi" " caf" "<0xC3>" "<0xA9>";
// ByteFallback turns the two byte tokens into "é"; Fuse joins "<s> hi café";
// Strip removes one leading space only, and the text starts with '<', so it
// stays. Skipping specials gives " hi café", stripped to "hi café".

constexpr char kMeta[] = "\xE2\x96\x81";  // ▁

json TinyVocab() {
  const std::string m = kMeta;
  return json{{"<unk>", 0},   {"<s>", 1}, {"</s>", 2},    {"<0xC3>", 3},
              {"<0xA9>", 4},  {m, 5},     {"h", 6},       {"i", 7},
              {"c", 8},       {"a", 9},   {"f", 10},      {m + "h", 11},
              {m + "hi", 12}, {"ca", 13}, {m + "ca", 14}, {m + "caf", 15},
              {m + "c", 16}};
}

json TinyMerges(bool as_pairs) {
  const std::string m = kMeta;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {m, "h"},  {m + "h", "i"},  {"c", "a"},
      {m, "ca"}, {m + "ca", "f"}, {m, "c"}};
  json out = json::array();
  for (const auto& [a, b] : merges) {
    if (as_pairs) {
      out.push_back(json::array({a, b}));
    } else {
      out.push_back(a + " " + b);
    }
  }
  return out;
}

json TinyAddedTokens() {
  json added = json::array();
  int id = 0;
  for (const char* content : {"<unk>", "<s>", "</s>"}) {
    added.push_back({{"id", id++},
                     {"content", content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  return added;
}

// Llama 2 as converted by transformers: Prepend/Replace normalizer, no
// pre-tokenizer, Replace/ByteFallback/Fuse/Strip decoder, <s> template.
json LlamaTwoStyle(bool merges_as_pairs) {
  const std::string m = kMeta;
  json file;
  file["version"] = "1.0";
  file["added_tokens"] = TinyAddedTokens();
  file["normalizer"] = {{"type", "Sequence"},
                        {"normalizers",
                         {{{"type", "Prepend"}, {"prepend", m}},
                          {{"type", "Replace"},
                           {"pattern", {{"String", " "}}},
                           {"content", m}}}}};
  file["pre_tokenizer"] = nullptr;
  file["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single",
       {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair", json::array()},
      {"special_tokens",
       {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  file["decoder"] = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "Replace"}, {"pattern", {{"String", m}}}, {"content", " "}},
        {{"type", "ByteFallback"}},
        {{"type", "Fuse"}},
        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  file["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", "<unk>"},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", true},
                   {"byte_fallback", true},
                   {"vocab", TinyVocab()},
                   {"merges", TinyMerges(merges_as_pairs)}};
  return file;
}

// The newer layout: a Metaspace pre-tokenizer (prepend_scheme "first") and a
// ByteFallback + Metaspace decoder, no normalizer and no template.
json MetaspaceStyle() {
  json file = LlamaTwoStyle(/*merges_as_pairs=*/false);
  file["normalizer"] = nullptr;
  file["pre_tokenizer"] = {{"type", "Metaspace"},
                           {"replacement", kMeta},
                           {"prepend_scheme", "first"},
                           {"split", true}};
  file["post_processor"] = nullptr;
  file["decoder"] = {{"type", "Sequence"},
                     {"decoders",
                      {{{"type", "ByteFallback"}},
                       {{"type", "Metaspace"},
                        {"replacement", kMeta},
                        {"prepend_scheme", "first"}}}}};
  return file;
}

std::shared_ptr<const Tokenizer> LoadJson(const ScratchDir& dir,
                                          const json& file) {
  const std::string path = dir.File("tokenizer.json");
  WriteFile(path, file.dump());
  auto tokenizer = LoadTokenizerFile(path);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *tokenizer : nullptr;
}

TEST(LlamaStyleTest, EncodesHandDerivedIds) {
  ScratchDir dir;
  auto tokenizer = LoadJson(dir, LlamaTwoStyle(/*merges_as_pairs=*/false));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("hi café", /*add_special=*/false),
              ElementsAre(12, 15, 3, 4));
  EXPECT_THAT(*tokenizer->Encode("hi café", /*add_special=*/true),
              ElementsAre(1, 12, 15, 3, 4));
  // ü is C3 BC and there is no <0xBC>: unk; with fuse_unk two become one.
  EXPECT_THAT(*tokenizer->Encode("hüü", false), ElementsAre(11, 0));
  // A literal <s> is the special token; the rest is normalized on its own.
  EXPECT_THAT(*tokenizer->Encode("<s>hi", false), ElementsAre(1, 12));
  EXPECT_THAT(*tokenizer->Encode("", true), ElementsAre(1));
  EXPECT_EQ(tokenizer->special().bos_id, 1);
  EXPECT_EQ(tokenizer->special().unk_id, 0);
  EXPECT_EQ(tokenizer->special().eos_id, -1);
  EXPECT_EQ(tokenizer->vocab_size(), 17);
}

TEST(LlamaStyleTest, MergesWrittenAsPairsGiveTheSameIds) {
  ScratchDir dir;
  auto tokenizer = LoadJson(dir, LlamaTwoStyle(/*merges_as_pairs=*/true));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(*tokenizer->Encode("hi café", false), ElementsAre(12, 15, 3, 4));
}

TEST(LlamaStyleTest, DecodesThroughByteFallbackAndStrip) {
  ScratchDir dir;
  auto tokenizer = LoadJson(dir, LlamaTwoStyle(false));
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = {1, 12, 15, 3, 4};
  EXPECT_EQ(*tokenizer->Decode(ids, /*skip_special=*/false), "<s> hi café");
  EXPECT_EQ(*tokenizer->Decode(ids, /*skip_special=*/true), "hi café");
  // A lone C3 byte is not UTF-8: one U+FFFD per byte token.
  EXPECT_EQ(*tokenizer->Decode({12, 3}, true), "hi\xEF\xBF\xBD");
  // Token texts keep their leading space and raw bytes.
  EXPECT_EQ(*tokenizer->TokenText(12), " hi");
  EXPECT_EQ(*tokenizer->TokenText(3), "\xC3");
  EXPECT_EQ(*tokenizer->TokenText(1), "<s>");
  EXPECT_TRUE(tokenizer->IsSpecial(1));
  EXPECT_FALSE(tokenizer->IsSpecial(12));
}

TEST(LlamaStyleTest, DecodeStreamHoldsBackSplitCharacters) {
  ScratchDir dir;
  auto tokenizer = LoadJson(dir, LlamaTwoStyle(false));
  ASSERT_NE(tokenizer, nullptr);
  DecodeStream stream(tokenizer, /*skip_special=*/true);
  std::vector<std::string> pieces;
  for (const int32_t id : {1, 12, 15, 3, 4}) {
    auto piece = stream.Push(id);
    ASSERT_TRUE(piece.ok()) << piece.status();
    pieces.push_back(*piece);
  }
  EXPECT_THAT(pieces, ElementsAre("", "hi", " caf", "", "é"));
  EXPECT_EQ(*stream.Finish(), "");
  EXPECT_FALSE(stream.Push(99).ok());
}

TEST(LlamaStyleTest, MetaspacePrependsOnlyAtTheStart) {
  ScratchDir dir;
  auto tokenizer = LoadJson(dir, MetaspaceStyle());
  ASSERT_NE(tokenizer, nullptr);
  // "hi café" -> "▁hi▁café" -> pieces "▁hi", "▁café": 12 | 15 3 4.
  EXPECT_THAT(*tokenizer->Encode("hi café", false), ElementsAre(12, 15, 3, 4));
  // After <s> the text is not at the start: "hi" gets no ▁ and stays h i.
  EXPECT_THAT(*tokenizer->Encode("<s>hi", false), ElementsAre(1, 6, 7));
  // No template: add_special adds nothing.
  EXPECT_THAT(*tokenizer->Encode("hi", true), ElementsAre(12));
  EXPECT_EQ(*tokenizer->Decode({12, 15, 3, 4}, false), "hi café");
}

TEST(LlamaStyleTest, DirectoryConfigSuppliesEos) {
  ScratchDir dir;
  WriteFile(dir.File("tokenizer.json"), LlamaTwoStyle(false).dump());
  WriteFile(dir.File("tokenizer_config.json"),
            R"({"eos_token": {"content": "</s>"}, "pad_token": null})");
  WriteFile(dir.File("config.json"),
            R"({"bos_token_id": 2, "eos_token_id": [1], "pad_token_id": 0})");
  auto tokenizer = LoadTokenizerFromDir(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // bos from the template wins over config.json; eos from
  // tokenizer_config.json wins over config.json; pad only in config.json.
  EXPECT_EQ((*tokenizer)->special().bos_id, 1);
  EXPECT_EQ((*tokenizer)->special().eos_id, 2);
  EXPECT_EQ((*tokenizer)->special().pad_id, 0);
}

// ---------------------------------------------------------------------------
// SentencePiece, with a model trained here.

class SentencePieceTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string corpus;
    for (int i = 0; i < 20; ++i) {
      corpus +=
          "the quick brown fox jumps over the lazy dog\n"
          "a stitch in time saves nine\n"
          "hello world, hello tokenizer\n";
    }
    WriteFile(dir_.File("corpus.txt"), corpus);
    // 256 byte pieces + 3 specials + the learned pieces.
    const absl::Status trained = TrainSentencePieceModel(
        "--input=" + dir_.File("corpus.txt") +
        " --model_prefix=" + dir_.File("tokenizer") +
        " --vocab_size=300 --model_type=bpe --byte_fallback=true"
        " --character_coverage=1.0 --unk_id=0 --bos_id=1 --eos_id=2");
    ASSERT_TRUE(trained.ok()) << trained;
  }

  ScratchDir dir_;
};

TEST_F(SentencePieceTest, TrainedModelRoundTripsText) {
  auto tokenizer = LoadTokenizerFromDir(dir_.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& t = **tokenizer;
  EXPECT_EQ(t.vocab_size(), 300);
  EXPECT_EQ(t.special().bos_id, 1);
  EXPECT_EQ(t.special().eos_id, 2);
  EXPECT_EQ(t.special().unk_id, 0);
  for (const std::string text :
       {"hello world", "the lazy dog jumps", "naïve café ☕ 42"}) {
    auto ids = t.Encode(text, /*add_special=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*t.Decode(*ids, /*skip_special=*/false), text);
    auto with_bos = t.Encode(text, /*add_special=*/true);
    ASSERT_TRUE(with_bos.ok());
    ASSERT_FALSE(with_bos->empty());
    EXPECT_EQ(with_bos->front(), 1);
    EXPECT_EQ(*t.Decode(*with_bos, /*skip_special=*/true), text);
  }
  // Literal control tokens are matched; decoding writes them back.
  auto ids = t.Encode("hello</s>", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->back(), 2);
  EXPECT_TRUE(t.IsSpecial(2));
  EXPECT_FALSE(t.IsSpecial(ids->front()));
  EXPECT_EQ(*t.Decode(*ids, false), "hello</s>");
  EXPECT_EQ(*t.Decode(*ids, true), "hello");
  // ☕ (E2 98 95) is not in the corpus: byte pieces, each one raw byte, after
  // the word-initial ▁.
  auto coffee = t.Encode("☕", false);
  ASSERT_TRUE(coffee.ok());
  std::string bytes;
  for (const int32_t id : *coffee) {
    auto text = t.TokenText(id);
    ASSERT_TRUE(text.ok());
    bytes += *text;
  }
  EXPECT_EQ(bytes, " ☕");
}

TEST(SentencePieceLoadTest, GarbageModelFileIsInvalidArgument) {
  ScratchDir dir;
  WriteFile(dir.File("bad.model"), "this is not a protobuf");
  auto tokenizer = LoadTokenizerFile(dir.File("bad.model"));
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("bad.model"));
}

// ---------------------------------------------------------------------------
// Regex translation and splitting.

std::vector<std::string> Pieces(const SplitPattern& pattern,
                                const std::string& text) {
  std::vector<std::string> out;
  for (const auto& [begin, end] : pattern.FindAll(text)) {
    out.push_back(text.substr(begin, end - begin));
  }
  return out;
}

constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

TEST(SplitPatternTest, LookaheadRunGivesBackItsLastSpace) {
  auto pattern = SplitPattern::FromRegex(kGpt2Pattern);
  ASSERT_TRUE(pattern.ok()) << pattern.status();
  // Three spaces before a word: two stay a run, the third joins the word.
  EXPECT_THAT(Pieces(**pattern, "Hello   world"),
              ElementsAre("Hello", "  ", " world"));
  // A run at the end of the text is kept whole.
  EXPECT_THAT(Pieces(**pattern, "a  "), ElementsAre("a", "  "));
  // One space before a non-letter: the lookahead fails, \s+ takes it.
  EXPECT_THAT(Pieces(**pattern, "\n x"), ElementsAre("\n", " x"));
  // Unicode spaces count as \s (U+00A0 and U+2009 are White_Space).
  EXPECT_THAT(Pieces(**pattern, "a\u00a0b\u2009\u2009c"),
              ElementsAre("a", "\u00a0", "b", "\u2009", "\u2009", "c"));
}

TEST(SplitPatternTest, LeftmostFirstAlternation) {
  // Perl semantics: the first alternative that matches wins, not the
  // longest (which would pick "abc").
  auto pattern = SplitPattern::FromRegex("a|abc");
  ASSERT_TRUE(pattern.ok());
  EXPECT_THAT(Pieces(**pattern, "abc"), ElementsAre("a"));
}

TEST(SplitPatternTest, RejectsOtherLookaround) {
  for (const char* bad : {"a(?=b)", "(?<!x)y", "\\s+(?!\\S)x", "\\bword"}) {
    auto pattern = SplitPattern::FromRegex(bad);
    ASSERT_FALSE(pattern.ok()) << bad;
    EXPECT_EQ(pattern.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(pattern.status().message(), HasSubstr(bad));
  }
}

TEST(SplitPatternTest, BehaviorsMatchTheReferenceExamples) {
  const std::string text = "the-final--countdown";
  auto dash = SplitPattern::FromLiteral("-");
  ASSERT_TRUE(dash.ok());
  const auto matches = (*dash)->FindAll(text);
  const auto cut = [&](SplitBehavior behavior, bool invert) {
    std::vector<std::string> out;
    for (const auto& [b, e] :
         SplitByMatches(text.size(), matches, behavior, invert)) {
      out.push_back(text.substr(b, e - b));
    }
    return out;
  };
  EXPECT_THAT(cut(SplitBehavior::kRemoved, false),
              ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(cut(SplitBehavior::kIsolated, false),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(cut(SplitBehavior::kMergedWithPrevious, false),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(cut(SplitBehavior::kMergedWithNext, false),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(cut(SplitBehavior::kContiguous, false),
              ElementsAre("the", "-", "final", "--", "countdown"));
  EXPECT_THAT(cut(SplitBehavior::kRemoved, true), ElementsAre("-", "-", "-"));
}

// ---------------------------------------------------------------------------
// Bad input: each error has the right code and names the file and field.

absl::Status LoadStatus(const ScratchDir& dir, const json& file) {
  WriteFile(dir.File("tokenizer.json"), file.dump());
  return LoadTokenizerFile(dir.File("tokenizer.json")).status();
}

TEST(BadInputTest, DirectoryWithoutTokenizerIsNotFound) {
  ScratchDir dir;
  auto tokenizer = LoadTokenizerFromDir(dir.path());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr(dir.path()));
}

TEST(BadInputTest, MissingFileIsNotFound) {
  ScratchDir dir;
  auto tokenizer = LoadTokenizerFile(dir.File("absent.json"));
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("absent.json"));
}

TEST(BadInputTest, TruncatedJsonIsInvalidArgument) {
  ScratchDir dir;
  const std::string whole = LlamaTwoStyle(false).dump();
  WriteFile(dir.File("tokenizer.json"), whole.substr(0, whole.size() / 2));
  auto tokenizer = LoadTokenizerFile(dir.File("tokenizer.json"));
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("tokenizer.json"));
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("not valid JSON"));
}

TEST(BadInputTest, UnknownComponentTypesAreUnimplemented) {
  ScratchDir dir;
  struct Case {
    const char* member;
    json value;
    const char* field;
  };
  json unigram = LlamaTwoStyle(false)["model"];
  unigram["type"] = "Unigram";
  const Case cases[] = {
      {"model", unigram, "model.type"},
      {"pre_tokenizer", {{"type", "Shuffle"}}, "pre_tokenizer.type"},
      {"normalizer", {{"type", "Shout"}}, "normalizer.type"},
      {"decoder", {{"type", "CTC"}}, "decoder.type"},
      {"post_processor", {{"type", "Mystery"}}, "post_processor.type"},
  };
  for (const Case& c : cases) {
    json file = LlamaTwoStyle(false);
    file[c.member] = c.value;
    const absl::Status status = LoadStatus(dir, file);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
    EXPECT_THAT(status.message(), HasSubstr("tokenizer.json"));
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
}

TEST(BadInputTest, MergeNamingUnknownTokenIsInvalidArgument) {
  ScratchDir dir;
  json file = LlamaTwoStyle(false);
  file["model"]["merges"].push_back("q z");
  const absl::Status status = LoadStatus(dir, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json"));
  EXPECT_THAT(status.message(), HasSubstr("model.merges[6]"));
  EXPECT_THAT(status.message(), HasSubstr("'q'"));
}

TEST(BadInputTest, WrongMemberTypesNameTheField) {
  ScratchDir dir;
  json file = LlamaTwoStyle(false);
  file["model"]["vocab"] = json::array();
  absl::Status status = LoadStatus(dir, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.vocab"));

  file = LlamaTwoStyle(false);
  file["pre_tokenizer"] = {{"type", "Split"},
                           {"pattern", {{"Regex", "a(?=b)"}}},
                           {"behavior", "Isolated"}};
  status = LoadStatus(dir, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("pre_tokenizer.pattern.Regex"));
  EXPECT_THAT(status.message(), HasSubstr("a(?=b)"));

  file = LlamaTwoStyle(false);
  file["added_tokens"][1].erase("id");
  status = LoadStatus(dir, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("added_tokens[1].id"));
}

TEST(BadInputTest, UnicodeNormalizerIsHonestWithoutIcu) {
  ScratchDir dir;
  json file = LlamaTwoStyle(false);
  file["normalizer"] = {{"type", "NFC"}};
  WriteFile(dir.File("tokenizer.json"), file.dump());
  auto tokenizer = LoadTokenizerFile(dir.File("tokenizer.json"));
  if (tokenizer.ok()) {
    // Built with ICU: e + combining acute composes to é (C3 A9).
    EXPECT_THAT(*(*tokenizer)->Encode("e\xCC\x81", false), ElementsAre(3, 4));
  } else {
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(tokenizer.status().message(), HasSubstr("NFC"));
    EXPECT_THAT(tokenizer.status().message(), HasSubstr("normalizer"));
  }
}

TEST(BadInputTest, BadIdsAndBadTextAreInvalidArgument) {
  ScratchDir dir;
  auto tokenizer = LoadJson(dir, LlamaTwoStyle(false));
  ASSERT_NE(tokenizer, nullptr);
  auto decoded = tokenizer->Decode({12, 17}, false);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(decoded.status().message(), HasSubstr("17"));
  EXPECT_EQ(tokenizer->Decode({-1}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tokenizer->TokenText(1000).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto encoded = tokenizer->Encode("ok\xC3", false);
  EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(encoded.status().message(), HasSubstr("UTF-8"));
}

// ---------------------------------------------------------------------------
// Concurrency.

void ExpectConcurrentEncodingAgrees(const Tokenizer& tokenizer,
                                    const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) {
    auto ids = tokenizer.Encode(text, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    expected.push_back(*ids);
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          const size_t k = (i + t + round) % texts.size();
          auto ids = tokenizer.Encode(texts[k], true);
          if (!ids.ok() || *ids != expected[k]) ++mismatches;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(ConcurrencyTest, ThreadsEncodingTogetherAgree) {
  ScratchDir dir;
  auto tiny = LoadJson(dir, LlamaTwoStyle(false));
  ASSERT_NE(tiny, nullptr);
  ExpectConcurrentEncodingAgrees(
      *tiny, {"hi café", "hüü", "<s>hi", "hi hi hi", "café café", ""});

  const std::string gpt2 = kSharedData + "/tokenizers/gpt2/tokenizer.json";
  if (!fs::exists(gpt2)) return;
  auto tokenizer = LoadTokenizerFile(gpt2);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<std::string> texts;
  for (int i = 0; i < 40; ++i) {
    texts.push_back("Thread " + std::to_string(i) +
                    " encodes words like tokenization, numbers 12345 and "
                    "unusual ones: Führer, нещо, 🦙.");
  }
  ExpectConcurrentEncodingAgrees(**tokenizer, texts);
}

}  // namespace
}  // namespace optrec
