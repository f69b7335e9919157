#include "tuning/tasks/render.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/status_macros.h"

namespace optrec {
namespace {

const FieldValue* Lookup(const std::string& ref, const FieldMap& fields,
                         const FieldMap* item) {
  if (ref.rfind("item.", 0) == 0) {
    if (item == nullptr) return nullptr;
    auto it = item->find(ref.substr(5));
    return it == item->end() ? nullptr : &it->second;
  }
  auto it = fields.find(ref);
  return it == fields.end() ? nullptr : &it->second;
}

// The name inside a part that is exactly "{name}", or "".
std::string WholeReference(const std::string& part) {
  if (part.size() > 2 && part.front() == '{' && part.back() == '}' &&
      part.find('{', 1) == std::string::npos) {
    return part.substr(1, part.size() - 2);
  }
  return "";
}

// The list field a part that is exactly "{name}" refers to, or null.
const FieldValue* WholeList(const std::string& part, const FieldMap& fields,
                            const FieldMap* item) {
  const std::string whole = WholeReference(part);
  const FieldValue* v = whole.empty() ? nullptr : Lookup(whole, fields, item);
  return v != nullptr && v->is_list ? v : nullptr;
}

// The elements a template keeps of a list: its newest `keep_list` (all when
// negative), oldest first.
std::vector<std::string> KeptElements(const FieldValue& list,
                                      int64_t keep_list) {
  const int64_t n = static_cast<int64_t>(list.list.size());
  const int64_t begin = keep_list < 0 ? 0 : std::max<int64_t>(0, n - keep_list);
  return std::vector<std::string>(list.list.begin() + begin, list.list.end());
}

}  // namespace

absl::StatusOr<std::string> FillText(const std::string& text,
                                     const FieldMap& fields,
                                     const FieldMap* item,
                                     const std::string& separator,
                                     int64_t keep_list) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find('{', pos);
    const size_t close =
        open == std::string::npos ? open : text.find('}', open + 1);
    if (close == std::string::npos) {
      out.append(text, pos, std::string::npos);
      break;
    }
    out.append(text, pos, open - pos);
    const std::string ref = text.substr(open + 1, close - open - 1);
    const FieldValue* v = Lookup(ref, fields, item);
    if (v == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("the template uses {", ref, "}, which is missing"));
    }
    if (v->is_list) {
      const int64_t n = static_cast<int64_t>(v->list.size());
      const int64_t first =
          keep_list < 0 ? 0 : std::max<int64_t>(0, n - keep_list);
      out += absl::StrJoin(v->list.begin() + first, v->list.end(), separator);
    } else {
      out += v->text;
    }
    pos = close + 1;
  }
  return out;
}

namespace {

// Appends `text` to the pieces, merging it into a text piece before it.
void AppendText(const std::string& text, std::vector<RenderedPiece>* out) {
  if (text.empty()) return;
  if (!out->empty() && !out->back().special) {
    out->back().text += text;
  } else {
    out->push_back({false, text});
  }
}

// One template part: literal text with {field} references, split at the
// <|name|> markers of the template itself (field values never make
// markers).
absl::Status AppendPart(const std::string& part, const FieldMap& fields,
                        const FieldMap* item, const TaskTemplate& t,
                        int64_t keep_list, std::vector<RenderedPiece>* out) {
  size_t pos = 0;
  while (pos < part.size()) {
    const size_t open = part.find("<|", pos);
    const size_t close =
        open == std::string::npos ? open : part.find("|>", open + 2);
    const std::string literal = part.substr(
        pos, close == std::string::npos ? std::string::npos : open - pos);
    ASSIGN_OR_RETURN(std::string filled,
                     FillText(literal, fields, item, t.separator, keep_list));
    AppendText(filled, out);
    if (close == std::string::npos) break;
    out->push_back({true, part.substr(open + 2, close - open - 2)});
    pos = close + 2;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<RenderedPiece>> RenderPieces(const TaskTemplate& t,
                                                        const FieldMap& fields,
                                                        const FieldMap* item,
                                                        int64_t keep_list) {
  std::vector<RenderedPiece> out;
  bool first = true;
  auto separate = [&] {
    if (!first) AppendText(t.separator, &out);
    first = false;
  };
  for (const std::string& part : t.input) {
    if (const FieldValue* v = WholeList(part, fields, item)) {
      for (const std::string& element : KeptElements(*v, keep_list)) {
        separate();
        AppendText(element, &out);
      }
      continue;
    }
    std::vector<RenderedPiece> pieces;
    RETURN_IF_ERROR(AppendPart(part, fields, item, t, keep_list, &pieces));
    if (pieces.empty()) continue;  // a part that rendered empty is left out
    separate();
    for (RenderedPiece& p : pieces) {
      if (p.special) {
        out.push_back(std::move(p));
      } else {
        AppendText(p.text, &out);
      }
    }
  }
  return out;
}

absl::StatusOr<std::string> RenderTemplate(const TaskTemplate& t,
                                           const FieldMap& fields,
                                           const FieldMap* item,
                                           int64_t keep_list) {
  ASSIGN_OR_RETURN(std::vector<RenderedPiece> pieces,
                   RenderPieces(t, fields, item, keep_list));
  std::string text;
  for (const RenderedPiece& p : pieces) {
    absl::StrAppend(&text,
                    p.special ? absl::StrCat("<|", p.text, "|>") : p.text);
  }
  return text;
}

InputEncoder::InputEncoder(const TaskSpec& spec, const Tokenizer& tokenizer,
                           const Catalog* catalog)
    : spec_(spec),
      tokenizer_(tokenizer),
      catalog_(catalog),
      special_names_(SpecialTokenNames(spec)) {
  const SpecialTokens& s = tokenizer.special();
  placeholder_id_ = s.unk_id >= 0 ? s.unk_id : (s.pad_id >= 0 ? s.pad_id : 0);
}

absl::StatusOr<std::vector<int32_t>> InputEncoder::EncodeText(
    const std::string& text) const {
  return tokenizer_.Encode(text, /*add_special=*/false);
}

absl::StatusOr<EncodedInput> InputEncoder::Encode(
    const std::vector<RenderedPiece>& pieces) const {
  EncodedInput out;
  if (tokenizer_.special().bos_id >= 0) {
    out.ids.push_back(tokenizer_.special().bos_id);
  }
  for (const RenderedPiece& p : pieces) {
    if (p.special) {
      auto known =
          std::find(special_names_.begin(), special_names_.end(), p.text);
      if (known == special_names_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "task ", spec_.task, " has no special token <|", p.text, "|>"));
      }
      out.special_at.push_back(static_cast<int64_t>(out.ids.size()));
      out.special_index.push_back(
          static_cast<int>(known - special_names_.begin()));
      out.ids.push_back(placeholder_id_);
      continue;
    }
    if (p.text.find_first_not_of(' ') == std::string::npos) continue;
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeText(p.text));
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> EncodeSegmentText(
    const Tokenizer& tokenizer, const std::string& text) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   tokenizer.Encode(text, /*add_special=*/false));
  const int32_t bos = tokenizer.special().bos_id;
  if (bos >= 0) ids.insert(ids.begin(), bos);
  return ids;
}

absl::StatusOr<EncodedInput> InputEncoder::EncodeSegmented(
    const TaskTemplate& t, const FieldMap& fields, const FieldMap* item,
    int64_t keep_list) const {
  EncodedInput out;
  auto add = [&](const std::string& text, int part) -> absl::Status {
    if (text.find_first_not_of(' ') == std::string::npos) return {};
    ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                     EncodeSegmentText(tokenizer_, text));
    out.segments.push_back(std::move(ids));
    out.segment_part.push_back(part);
    return absl::OkStatus();
  };
  for (size_t p = 0; p < t.input.size(); ++p) {
    const std::string& part = t.input[p];
    const int index = static_cast<int>(p);
    if (const FieldValue* v = WholeList(part, fields, item)) {
      for (const std::string& element : KeptElements(*v, keep_list)) {
        RETURN_IF_ERROR(add(element, index));
      }
      continue;
    }
    std::vector<RenderedPiece> pieces;
    RETURN_IF_ERROR(AppendPart(part, fields, item, t, keep_list, &pieces));
    std::string text;
    for (const RenderedPiece& piece : pieces) {
      if (piece.special) {
        return absl::InvalidArgumentError(
            absl::StrCat("task ", spec_.task, ": special token <|", piece.text,
                         "|> in a late-interaction template"));
      }
      text += piece.text;
    }
    RETURN_IF_ERROR(add(text, index));
  }
  if (out.segments.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", spec_.task, ": template ", t.name, " rendered no segment"));
  }
  return out;
}

absl::StatusOr<EncodedInput> InputEncoder::FitSegments(
    const TaskTemplate& t, const FieldMap& fields, const FieldMap* item,
    int64_t longest_list) const {
  int64_t keep = std::min<int64_t>(spec_.max_history, longest_list);
  while (true) {
    ASSIGN_OR_RETURN(EncodedInput in, EncodeSegmented(t, fields, item, keep));
    int64_t n = 0;
    for (const auto& seg : in.segments) n += static_cast<int64_t>(seg.size());
    if (n <= spec_.max_tokens) return in;
    if (keep > 0) {
      --keep;
      continue;
    }
    // Still too long without lists: cut tokens after BOS from the front of
    // the first segments, dropping a segment left with nothing.
    const int64_t head = tokenizer_.special().bos_id >= 0 ? 1 : 0;
    int64_t cut = n - spec_.max_tokens;
    size_t s = 0;
    while (cut > 0 && s + 1 < in.segments.size()) {
      std::vector<int32_t>& seg = in.segments[s];
      const int64_t body = static_cast<int64_t>(seg.size()) - head;
      if (body <= cut) {  // the whole segment goes, BOS and all
        cut -= static_cast<int64_t>(seg.size());
        in.segments.erase(in.segments.begin() + s);
        in.segment_part.erase(in.segment_part.begin() + s);
        continue;
      }
      const int64_t drop = std::min(cut, body);
      seg.erase(seg.begin() + head, seg.begin() + head + drop);
      cut -= drop;
      ++s;
    }
    if (cut > 0) {  // one segment left, longer than the budget by itself
      std::vector<int32_t>& seg = in.segments.back();
      const int64_t body = static_cast<int64_t>(seg.size()) - head;
      seg.erase(seg.begin() + head, seg.begin() + head + std::min(cut, body));
    }
    return in;
  }
}

absl::StatusOr<EncodedInput> InputEncoder::EncodeFitted(
    const TaskTemplate& t, const FieldMap& fields, const FieldMap* item) const {
  int64_t longest = 0;
  for (const auto& [name, v] : fields) {
    if (v.is_list) longest = std::max<int64_t>(longest, v.list.size());
  }
  if (spec_.lower_layers > 0 && &t != &spec_.zero_shot.input &&
      &t != &spec_.item_template) {
    return FitSegments(t, fields, item, longest);
  }
  int64_t keep = std::min<int64_t>(spec_.max_history, longest);
  while (true) {
    ASSIGN_OR_RETURN(std::vector<RenderedPiece> pieces,
                     RenderPieces(t, fields, item, keep));
    ASSIGN_OR_RETURN(EncodedInput in, Encode(pieces));
    const int64_t n = static_cast<int64_t>(in.ids.size());
    if (n <= spec_.max_tokens) return in;
    if (keep > 0) {
      --keep;
      continue;
    }
    // Still too long without lists: cut from the front, after BOS.
    const int64_t head = tokenizer_.special().bos_id >= 0 ? 1 : 0;
    const int64_t cut = n - spec_.max_tokens;
    in.ids.erase(in.ids.begin() + head, in.ids.begin() + head + cut);
    EncodedInput fitted;
    fitted.ids = std::move(in.ids);
    for (size_t i = 0; i < in.special_at.size(); ++i) {
      if (in.special_at[i] >= head + cut) {
        fitted.special_at.push_back(in.special_at[i] - cut);
        fitted.special_index.push_back(in.special_index[i]);
      } else if (in.special_at[i] < head) {
        fitted.special_at.push_back(in.special_at[i]);
        fitted.special_index.push_back(in.special_index[i]);
      }
    }
    return fitted;
  }
}

absl::StatusOr<EncodedInput> InputEncoder::EncodeExample(
    const Example& e, size_t template_index) const {
  if (template_index >= spec_.templates.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", spec_.task, " has no template ", template_index));
  }
  return EncodeWith(spec_.templates[template_index], e);
}

absl::StatusOr<EncodedInput> InputEncoder::EncodeWith(const TaskTemplate& t,
                                                      const Example& e) const {
  const FieldMap* item =
      catalog_ != nullptr && e.item >= 0 ? &catalog_->fields(e.item) : nullptr;
  absl::StatusOr<EncodedInput> in = EncodeFitted(t, e.fields, item);
  if (!in.ok()) {
    return absl::Status(
        in.status().code(),
        absl::StrCat("example at line ", e.line, ": ", in.status().message()));
  }
  return in;
}

absl::StatusOr<EncodedInput> InputEncoder::EncodeItem(int64_t item) const {
  if (catalog_ == nullptr || item < 0 || item >= catalog_->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", spec_.task, ": no catalog item ", item));
  }
  return EncodeFitted(spec_.item_template, catalog_->fields(item), nullptr);
}

}  // namespace optrec
