// Loading tokenizer.json (and tokenizer_config.json, config.json beside it) into a
// TokenizerImpl. Everything a file can get wrong is a Status "<file>: <field>: <problem>";
// valid settings this tokenizer does not implement are kUnimplemented, naming the setting.
#include <filesystem>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "text/tokenizer/json_fields.h"
#include "text/tokenizer/tokenizer_impl.h"
#include "text/tokenizer/utf8.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

Status load_vocab(const JsonFile& f, const json& model, Bpe& bpe) {
  SHOAL_ASSIGN_OR_RETURN(const json* vocab, f.object(model, "model", "vocab", true));
  std::vector<const std::string*> by_id;
  bpe.vocab.reserve(vocab->size());
  for (const auto& [token, value] : vocab->items()) {
    const std::string where = "model.vocab[" + json(token).dump() + "]";
    SHOAL_RETURN_IF_ERROR(f.check_id(where, value));
    const auto id = value.get<int32_t>();
    if (static_cast<size_t>(id) >= by_id.size()) by_id.resize(id + 1, nullptr);
    if (by_id[id] != nullptr) {
      return f.error(where, "id " + std::to_string(id) + " is also given to " + json(*by_id[id]).dump());
    }
    by_id[id] = &bpe.vocab.emplace(token, id).first->first;
  }
  return Status::ok_status();
}

StatusOr<int32_t> vocab_id(const JsonFile& f, const Bpe& bpe, const std::string& where, const std::string& token) {
  const auto it = bpe.vocab.find(token);
  if (it == bpe.vocab.end()) return f.error(where, json(token).dump() + " is not in model.vocab");
  return it->second;
}

Status load_merges(const JsonFile& f, const json& model, Bpe& bpe) {
  SHOAL_ASSIGN_OR_RETURN(const json* merges, f.array(model, "model", "merges", true));
  bpe.merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    const std::string where = "model.merges[" + std::to_string(i) + "]";
    std::string left, right;
    if (m.is_string()) {  // "left right", exactly one space
      const auto& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return f.error(where, "expected \"left right\" with one space, got " + m.dump());
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return f.error(where, "expected \"left right\" or [left, right], got " + m.dump());
    }
    SHOAL_ASSIGN_OR_RETURN(const int32_t left_id, vocab_id(f, bpe, where, left));
    SHOAL_ASSIGN_OR_RETURN(const int32_t right_id, vocab_id(f, bpe, where, right));
    SHOAL_ASSIGN_OR_RETURN(const int32_t merged_id, vocab_id(f, bpe, where, left + right));
    bpe.merges.insert(left_id, right_id, {static_cast<int32_t>(i), merged_id});
  }
  return Status::ok_status();
}

Status load_model(const JsonFile& f, Bpe& bpe) {
  SHOAL_ASSIGN_OR_RETURN(const json* model, f.object(f.root, "", "model", true));
  SHOAL_ASSIGN_OR_RETURN(std::string type, f.string(*model, "model", "type", "BPE"));
  if (type != "BPE") return f.unsupported("model.type", "model type " + json(type).dump() + " (only BPE)");
  SHOAL_RETURN_IF_ERROR(load_vocab(f, *model, bpe));
  SHOAL_RETURN_IF_ERROR(load_merges(f, *model, bpe));
  if (const json* dropout = f.find(*model, "dropout")) {
    if (!dropout->is_number()) return f.error("model.dropout", "expected a number or null, got " + dropout->dump());
    if (dropout->get<double>() != 0.0) return f.unsupported("model.dropout", "BPE dropout " + dropout->dump());
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    SHOAL_ASSIGN_OR_RETURN(std::string affix, f.string(*model, "model", key, ""));
    if (!affix.empty()) return f.unsupported(std::string("model.") + key, json(affix).dump());
  }
  SHOAL_ASSIGN_OR_RETURN(std::string unk, f.string(*model, "model", "unk_token", ""));
  if (!unk.empty()) {
    SHOAL_ASSIGN_OR_RETURN(bpe.unk_id, vocab_id(f, bpe, "model.unk_token", unk));
  }
  SHOAL_ASSIGN_OR_RETURN(bpe.fuse_unk, f.boolean(*model, "model", "fuse_unk", false));
  SHOAL_ASSIGN_OR_RETURN(bpe.byte_fallback, f.boolean(*model, "model", "byte_fallback", false));
  SHOAL_ASSIGN_OR_RETURN(bpe.ignore_merges, f.boolean(*model, "model", "ignore_merges", false));
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8::append(symbol, byte_to_char(static_cast<uint8_t>(b)));
    const auto it = bpe.vocab.find(symbol);
    bpe.byte_ids[b] = it == bpe.vocab.end() ? -1 : it->second;
  }
  return Status::ok_status();
}

// The reference does not take an added token's id from the file: it gives the token the id
// of the same string in model.vocab if there is one, else the next id from the vocabulary's
// size up, in file order. A file whose ids disagree with that (duplicates included) would
// encode differently here and there, so it is refused.
int32_t reference_id(const Bpe& bpe, const std::string& content, int64_t& next_id) {
  const auto it = bpe.vocab.find(content);
  if (it != bpe.vocab.end()) return it->second;
  return static_cast<int32_t>(next_id++);
}

Status load_added_tokens(const JsonFile& f, TokenizerImpl& t) {
  SHOAL_ASSIGN_OR_RETURN(const json* list, f.array(f.root, "", "added_tokens", false));
  if (list == nullptr) return Status::ok_status();
  auto next_id = static_cast<int64_t>(t.bpe_.vocab.size());
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    const json& item = (*list)[i];
    if (!item.is_object()) return f.error(where, "expected an object, got " + item.dump());
    AddedToken token;
    SHOAL_ASSIGN_OR_RETURN(token.id, f.id(item, where, "id"));
    SHOAL_ASSIGN_OR_RETURN(token.content, f.string(item, where, "content", ""));
    if (token.content.empty()) return f.error(where + ".content", "missing or empty");
    SHOAL_ASSIGN_OR_RETURN(token.special, f.boolean(item, where, "special", false));
    SHOAL_ASSIGN_OR_RETURN(token.lstrip, f.boolean(item, where, "lstrip", false));
    SHOAL_ASSIGN_OR_RETURN(token.rstrip, f.boolean(item, where, "rstrip", false));
    SHOAL_ASSIGN_OR_RETURN(token.single_word, f.boolean(item, where, "single_word", false));
    SHOAL_ASSIGN_OR_RETURN(token.normalized, f.boolean(item, where, "normalized", !token.special));
    if (t.added_ids_.count(token.content)) {
      return f.error(where + ".content", json(token.content).dump() + " is used twice");
    }
    const int32_t expected = reference_id(t.bpe_, token.content, next_id);
    if (token.id != expected) {
      return f.error(where + ".id", "id " + std::to_string(token.id) + " for " + json(token.content).dump() +
                                        ", but the reference gives it id " + std::to_string(expected) +
                                        " (the id of the same string in model.vocab, else the next free id "
                                        "counting from the vocabulary's size, in file order)");
    }
    t.added_ids_.emplace(token.content, token.id);
    t.added_.push_back(std::move(token));
  }
  t.raw_matcher_.build(t.added_, false);
  t.normalized_matcher_.build(t.added_, true);
  return Status::ok_status();
}

// The identity (null, or a Sequence of nothing) and NFC are supported, in any Sequence: NFC
// is idempotent, so one or several of them give the same text.
Status load_normalizer(const JsonFile& f, const json* n, const std::string& where, bool& nfc) {
  if (n == nullptr) return Status::ok_status();
  if (!n->is_object()) return f.error(where, "expected an object or null, got " + n->dump());
  SHOAL_ASSIGN_OR_RETURN(std::string type, f.string(*n, where, "type", ""));
  if (type == "NFC") {
    nfc = true;
    return Status::ok_status();
  }
  if (type != "Sequence") return f.unsupported(where, "unsupported normalizer " + json(type).dump());
  SHOAL_ASSIGN_OR_RETURN(const json* list, f.array(*n, where, "normalizers", true));
  for (size_t i = 0; i < list->size(); ++i) {
    SHOAL_RETURN_IF_ERROR(load_normalizer(f, &(*list)[i], where + ".normalizers[" + std::to_string(i) + "]", nfc));
  }
  return Status::ok_status();
}

StatusOr<SplitBehavior> parse_behavior(const JsonFile& f, const json& step, const std::string& where) {
  SHOAL_ASSIGN_OR_RETURN(std::string name, f.string(step, where, "behavior", ""));
  static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous},
  };
  for (const auto& [key, behavior] : kBehaviors) {
    if (name == key) return behavior;
  }
  return f.error(where + ".behavior", "unknown behavior " + json(name).dump());
}

StatusOr<PreTokenizerStep> parse_split(const JsonFile& f, const json& step, const std::string& where) {
  PreTokenizerStep out;
  out.kind = PreTokenizerStep::Kind::kSplit;
  SHOAL_ASSIGN_OR_RETURN(const json* pattern, f.object(step, where, "pattern", true));
  const json* regex = f.find(*pattern, "Regex");
  const json* literal = f.find(*pattern, "String");
  const json* which = regex != nullptr ? regex : literal;
  const std::string field = where + ".pattern." + (regex != nullptr ? "Regex" : "String");
  if (which == nullptr || (regex != nullptr && literal != nullptr) || !which->is_string()) {
    return f.error(where + ".pattern", "expected {\"Regex\": string} or {\"String\": string}, got " + pattern->dump());
  }
  const auto& text = which->get_ref<const std::string&>();
  if (!utf8::is_valid(text)) return f.error(field, "not valid UTF-8");
  auto compiled = regex != nullptr ? Regex::compile(text) : Regex::compile_literal(text);
  if (!compiled.ok()) return f.error(field, compiled.status().message());
  out.regex = std::move(compiled).value();
  SHOAL_ASSIGN_OR_RETURN(out.behavior, parse_behavior(f, step, where));
  SHOAL_ASSIGN_OR_RETURN(out.invert, f.boolean(step, where, "invert", false));
  return out;
}

StatusOr<PreTokenizerStep> parse_byte_level(const JsonFile& f, const json& step, const std::string& where) {
  PreTokenizerStep out;
  out.kind = PreTokenizerStep::Kind::kByteLevel;
  SHOAL_ASSIGN_OR_RETURN(out.add_prefix_space, f.boolean(step, where, "add_prefix_space", true));
  SHOAL_ASSIGN_OR_RETURN(bool use_regex, f.boolean(step, where, "use_regex", true));
  if (use_regex) {
    auto compiled = Regex::compile(kGpt2Pattern);
    if (!compiled.ok()) return internal_error(compiled.status().message());
    out.regex = std::move(compiled).value();
  }
  return out;
}

Status add_pre_tokenizer(const JsonFile& f, const json& step, const std::string& where, PreTokenizer& pre) {
  if (!step.is_object()) return f.error(where, "expected an object, got " + step.dump());
  if (pre.byte_level()) return f.unsupported(where, "a pre-tokenizer step after ByteLevel");
  SHOAL_ASSIGN_OR_RETURN(std::string type, f.string(step, where, "type", ""));
  if (type == "Sequence") {
    SHOAL_ASSIGN_OR_RETURN(const json* list, f.array(step, where, "pretokenizers", true));
    for (size_t i = 0; i < list->size(); ++i) {
      SHOAL_RETURN_IF_ERROR(add_pre_tokenizer(f, (*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]", pre));
    }
    return Status::ok_status();
  }
  StatusOr<PreTokenizerStep> parsed = internal_error("unreachable");
  if (type == "Split") {
    parsed = parse_split(f, step, where);
  } else if (type == "ByteLevel") {
    parsed = parse_byte_level(f, step, where);
  } else {
    return f.unsupported(where, "unsupported pre-tokenizer " + json(type).dump());
  }
  if (!parsed.ok()) return parsed.status();
  pre.add_step(std::move(parsed).value());
  return Status::ok_status();
}

// {"SpecialToken": {"id": name}} gives name; {"Sequence": {"id": "A"}} gives "$A"; else "".
std::string template_piece(const json& item) {
  for (const auto& [kind, prefix] : {std::pair{"SpecialToken", ""}, std::pair{"Sequence", "$"}}) {
    const auto it = item.is_object() ? item.find(kind) : item.end();
    if (it != item.end() && it->is_object() && it->contains("id") && (*it)["id"].is_string()) {
      return prefix + (*it)["id"].get<std::string>();
    }
  }
  return "";
}

// What the post-processor adds around one text. Only a TemplateProcessing whose single-text
// template is [$A] or [<special token>, $A] adds ids (Llama 3's <|begin_of_text|>): that token
// becomes the BOS add_bos_default() puts first unless tokenizer_config.json says otherwise.
// ByteLevel changes offsets only, and the pair template is for pairs of texts, never encoded
// here; anything else would add ids encode does not, so it is refused.
Status load_post_processor(const JsonFile& f, const json* p, const std::string& where, TokenizerImpl& t) {
  if (p == nullptr) return Status::ok_status();
  if (!p->is_object()) return f.error(where, "expected an object or null, got " + p->dump());
  SHOAL_ASSIGN_OR_RETURN(std::string type, f.string(*p, where, "type", ""));
  if (type == "ByteLevel") return Status::ok_status();
  if (type == "Sequence") {
    SHOAL_ASSIGN_OR_RETURN(const json* list, f.array(*p, where, "processors", true));
    for (size_t i = 0; i < list->size(); ++i) {
      SHOAL_RETURN_IF_ERROR(load_post_processor(f, &(*list)[i], where + ".processors[" + std::to_string(i) + "]", t));
    }
    return Status::ok_status();
  }
  if (type != "TemplateProcessing") return f.unsupported(where, "unsupported post-processor " + json(type).dump());
  SHOAL_ASSIGN_OR_RETURN(const json* single, f.array(*p, where, "single", true));
  std::vector<std::string> pieces;
  for (const json& item : *single) pieces.push_back(template_piece(item));
  const bool bare = pieces == std::vector<std::string>{"$A"};
  const bool bos = pieces.size() == 2 && pieces[1] == "$A" && !pieces[0].empty() && pieces[0][0] != '$';
  if (!bare && !bos) {
    return f.unsupported(where + ".single", "a template other than [$A] or [<special token>, $A]: " + single->dump());
  }
  if (bare) return Status::ok_status();
  if (t.post_bos_id_ >= 0) return f.unsupported(where, "a second post-processor that adds a token");
  SHOAL_ASSIGN_OR_RETURN(const json* tokens, f.object(*p, where, "special_tokens", true));
  const std::string entry = where + ".special_tokens[" + json(pieces[0]).dump() + "]";
  const json* token = f.find(*tokens, pieces[0].c_str());
  if (token == nullptr) return f.error(entry, "missing");
  SHOAL_ASSIGN_OR_RETURN(const json* ids, f.array(*token, entry, "ids", true));
  if (ids->size() != 1) {
    return f.unsupported(entry + ".ids", "a special token of " + std::to_string(ids->size()) + " ids");
  }
  SHOAL_RETURN_IF_ERROR(f.check_id(entry + ".ids[0]", (*ids)[0]));
  // The id must be the named token's: encode puts it first and decode must take it back, and
  // bos_token() names it. (An id that is no token would reach the model as one.)
  const int32_t named = t.token_id(pieces[0]);
  if (named < 0) return f.error(entry, json(pieces[0]).dump() + " is not a token of model.vocab or added_tokens");
  if ((*ids)[0].get<int32_t>() != named) {
    return f.error(entry + ".ids[0]", "id " + (*ids)[0].dump() + " for " + json(pieces[0]).dump() +
                                          ", which is token " + std::to_string(named));
  }
  t.post_bos_id_ = (*ids)[0].get<int32_t>();
  t.post_bos_token_ = pieces[0];
  return Status::ok_status();
}

Status check_decoder(const JsonFile& f) {
  const json* d = f.find(f.root, "decoder");
  if (d == nullptr) return f.unsupported("decoder", "a tokenizer without a decoder (only ByteLevel)");
  if (!d->is_object()) return f.error("decoder", "expected an object, got " + d->dump());
  SHOAL_ASSIGN_OR_RETURN(std::string type, f.string(*d, "decoder", "type", ""));
  if (type != "ByteLevel") return f.unsupported("decoder", "unsupported decoder " + json(type).dump() + " (only ByteLevel)");
  return Status::ok_status();
}

}  // namespace

// The ByteLevel decoder on one token: its characters' bytes when all are in the byte table,
// else the token's own UTF-8 (added tokens such as <｜User｜>). Also used by tokenizer_gguf.cpp.
void append_decoded(const std::string& token, std::string& out) {
  const size_t start = out.size();
  for (size_t i = 0; i < token.size();) {
    const int b = byte_from_char(utf8::next(token, i));
    if (b < 0) {
      out.resize(start);
      out += token;
      return;
    }
    out += static_cast<char>(b);
  }
}

namespace {

void build_decode_table(TokenizerImpl& t) {
  std::vector<const std::string*> token_of;
  auto put = [&](int32_t id, const std::string* token) {
    if (static_cast<size_t>(id) >= token_of.size()) token_of.resize(id + 1, nullptr);
    token_of[id] = token;
  };
  for (const auto& [token, id] : t.bpe_.vocab) put(id, &token);
  std::unordered_set<std::string> special;
  for (const AddedToken& a : t.added_) {
    put(a.id, &a.content);  // an added token's content wins over the vocabulary's
    if (a.special) special.insert(a.content);
  }
  t.decoded_offset_.assign(token_of.size() + 1, 0);
  t.id_flags_.assign(token_of.size(), 0);
  for (size_t id = 0; id < token_of.size(); ++id) {
    t.decoded_offset_[id] = static_cast<uint32_t>(t.decoded_blob_.size());
    if (token_of[id] == nullptr) continue;
    append_decoded(*token_of[id], t.decoded_blob_);
    t.id_flags_[id] = TokenizerImpl::kHasToken | (special.count(*token_of[id]) ? TokenizerImpl::kSpecial : 0);
  }
  t.decoded_offset_.back() = static_cast<uint32_t>(t.decoded_blob_.size());
  t.vocab_limit_ = static_cast<int64_t>(token_of.size());
}

Status load_tokenizer_json(const fs::path& file, TokenizerImpl& t) {
  SHOAL_ASSIGN_OR_RETURN(JsonFile f, JsonFile::read(file));
  if (!f.root.is_object()) return f.error("(top level)", "expected an object, got " + std::string(f.root.type_name()));
  SHOAL_RETURN_IF_ERROR(load_model(f, t.bpe_));
  SHOAL_RETURN_IF_ERROR(load_added_tokens(f, t));
  SHOAL_RETURN_IF_ERROR(load_normalizer(f, f.find(f.root, "normalizer"), "normalizer", t.nfc_));
  if (const json* pre = f.find(f.root, "pre_tokenizer")) {
    SHOAL_RETURN_IF_ERROR(add_pre_tokenizer(f, *pre, "pre_tokenizer", t.pre_tokenizer_));
  }
  SHOAL_RETURN_IF_ERROR(load_post_processor(f, f.find(f.root, "post_processor"), "post_processor", t));
  SHOAL_RETURN_IF_ERROR(check_decoder(f));
  build_decode_table(t);
  return Status::ok_status();
}

}  // namespace

Status load_tokenizer_config(const fs::path& file, TokenizerImpl& t);  // tokenizer_config.cpp
Status load_model_config(const fs::path& file, TokenizerImpl& t);

bool is_gguf_tokenizer_path(const fs::path& path);  // tokenizer_gguf.cpp
StatusOr<std::unique_ptr<Tokenizer>> load_gguf_tokenizer(const fs::path& path);

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::load(const fs::path& path) {
  if (is_gguf_tokenizer_path(path)) return load_gguf_tokenizer(path);
  std::error_code ec;
  const bool is_dir = fs::is_directory(path, ec);
  const fs::path file = is_dir ? path / "tokenizer.json" : path;
  const fs::path dir = is_dir ? path : path.parent_path();
  auto t = std::make_unique<TokenizerImpl>();
  SHOAL_RETURN_IF_ERROR(load_tokenizer_json(file, *t));
  SHOAL_RETURN_IF_ERROR(load_tokenizer_config(dir, *t));
  SHOAL_RETURN_IF_ERROR(load_model_config(dir / "config.json", *t));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace shoal
