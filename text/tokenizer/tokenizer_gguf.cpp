// Loading a tokenizer from a GGUF's metadata (llama.cpp's tokenizer.ggml.* keys and
// tokenizer.chat_template) into the same TokenizerImpl that tokenizer.json fills, so encoding,
// decoding and chat rendering are one code path for both. Only byte-level BPE ("gpt2") is
// supported. tests/fixtures/tokenizer-deepseek-v3-gguf/README.md has where a GGUF cannot say what
// tokenizer.json says.
//
// What the keys mean is llama.cpp's (src/llama-vocab.cpp, convert_hf_to_gguf.py):
//   tokenizer.ggml.tokens      token strings by id, byte-level (GPT-2 bytes_to_unicode) like
//                              tokenizer.json's model.vocab; added tokens as their content
//   tokenizer.ggml.token_type  1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
//   tokenizer.ggml.merges      "left right", rank = index
//   tokenizer.ggml.pre         a name for the pre-tokenizer regexes (pre_tokenizers() below)
// Control and user-defined tokens are the added tokens (cut out of the text before
// pre-tokenizing); control ones are the special ones that skip_special_tokens drops. Unused
// tokens (the converter's "[PAD<id>]" up to the model's vocab_size) have no token: they decode
// to nothing and are never produced, as ids past tokenizer.json's last are.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>

#include "model/gguf.h"
#include "text/tokenizer/native_regex.h"
#include "text/tokenizer/tokenizer_impl.h"
#include "text/tokenizer/utf8.h"

namespace shoal {

void append_decoded(const std::string& token, std::string& out);  // tokenizer_json.cpp

namespace {

namespace fs = std::filesystem;

enum TokenType : int64_t { kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// One tokenizer.ggml.pre name: the Split (Isolated, not inverted) regexes run in order, then
// ByteLevel (with GPT-2's regex when gpt2_regex). The regexes are those of the models'
// tokenizer.json files, which are what llama.cpp's src/llama-vocab.cpp implements for each name
// (llama.cpp rewrites the (?i:...) groups of qwen2/llama3 by hand, as its own regex engine lacks
// them; Oniguruma takes them as written, with Unicode case folding, as Hugging Face does).
struct PreTokenizerSpec {
  std::vector<std::string_view> names;
  std::vector<std::string> splits;
  bool gpt2_regex = false;
  bool ignore_merges = false;  // llama.cpp sets it for llama3 (its tokenizer.json says so too)
  bool add_bos = false;        // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
};

const std::vector<PreTokenizerSpec>& pre_tokenizers() {
  static const std::vector<PreTokenizerSpec> specs = {
      // DeepSeek-V3 / R1: tokenizer.json's three Splits (the patterns native_regex.h matches).
      {{"deepseek-v3"}, {kNativePatterns[0], kNativePatterns[1], kNativePatterns[2]}},
      // DeepSeek LLM (7B/67B) and DeepSeek Coder: their tokenizer.json Splits. The long class
      // holds code points that Unicode normalization would change (U+1F7D, U+1FBE, U+2126,
      // U+212A, ...): keep its bytes as they are.
      {{"deepseek-llm"},
       {"[\r\n]",
        "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
        "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"}},
      {{"deepseek-coder"}, {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"}},
      // Qwen2 / R1-Distill-Qwen: one Split (native_regex.h matches it too).
      {{"qwen2", "deepseek-r1-qwen"}, {kNativePatterns[3]}},
      // Llama 3 / R1-Distill-Llama: one Split (native too); its BPE has ignore_merges.
      {{"llama-bpe", "llama3", "llama-v3"},
       {kNativePatterns[4]},
       false,
       true,
       true},
      // GPT-2: ByteLevel with its own regex (kGpt2Pattern), no Split.
      {{"gpt-2", "gpt2"}, {}, true},
      // llama.cpp's fallback for "default" (and for a missing name).
      {{"default"},
       {R"re([\p{P}\$\+<=>\^~\|]+)re", R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))re",
        R"re(\p{N}+)re", "[0-9][0-9][0-9]"}},
  };
  return specs;
}

const PreTokenizerSpec* find_pre_tokenizer(std::string_view name) {
  for (const PreTokenizerSpec& s : pre_tokenizers())
    for (std::string_view n : s.names)
      if (n == name) return &s;
  return nullptr;
}

std::string known_pre_names() {
  std::string out;
  for (const PreTokenizerSpec& s : pre_tokenizers())
    for (std::string_view n : s.names) out += (out.empty() ? "\"" : ", \"") + std::string(n) + "\"";
  return out;
}

// Errors are "<source>: <key>: <problem>".
struct Meta {
  const GgufHeader& h;
  std::string source;

  Status error(std::string_view key, const std::string& problem) const {
    return invalid_argument(source + ": " + std::string(key) + ": " + problem);
  }
  StatusOr<const GgufValue*> array(std::string_view key, GgufType elem, bool required) const {
    const GgufValue* v = h.find(key);
    if (v == nullptr) {
      if (required) return error(key, "missing");
      return static_cast<const GgufValue*>(nullptr);
    }
    if (v->type != GgufType::kArray || v->elem != elem)
      return error(key, "expected ARRAY[" + std::string(gguf_type_name(elem)) + "], got " + v->describe());
    return v;
  }
  StatusOr<std::string> string(std::string_view key, const std::string& fallback) const {
    const GgufValue* v = h.find(key);
    if (v == nullptr) return fallback;
    if (v->type != GgufType::kString) return error(key, "expected a STRING, got " + v->describe());
    return v->s;
  }
  StatusOr<bool> boolean(std::string_view key, bool fallback) const {
    const GgufValue* v = h.find(key);
    if (v == nullptr) return fallback;
    if (v->type != GgufType::kBool) return error(key, "expected a BOOL, got " + v->describe());
    return v->b;
  }
  // A token id: an integer in [0, n_tokens) naming a token that exists; -1 when absent.
  StatusOr<int32_t> token(std::string_view key, const std::vector<int64_t>& types, size_t n_tokens) const {
    const GgufValue* v = h.find(key);
    if (v == nullptr) return -1;
    if (!v->is_integer() || v->i < 0 || static_cast<uint64_t>(v->i) >= n_tokens)
      return error(key, "expected a token id in [0, " + std::to_string(n_tokens) + "), got " + v->describe());
    if (types[v->i] == kUnused) return error(key, "id " + std::to_string(v->i) + " is an unused token");
    return static_cast<int32_t>(v->i);
  }
};

Status load_pre_tokenizer(const Meta& m, TokenizerImpl& t, const PreTokenizerSpec*& spec) {
  SHOAL_ASSIGN_OR_RETURN(std::string name, m.string("tokenizer.ggml.pre", "default"));
  if (name.empty()) name = "default";  // llama.cpp's fallback for a missing name
  spec = find_pre_tokenizer(name);
  if (spec == nullptr) {
    return m.error("tokenizer.ggml.pre", "unknown pre-tokenizer \"" + name + "\" (known: " + known_pre_names() + ")");
  }
  for (const std::string& pattern : spec->splits) {
    auto compiled = Regex::compile(pattern);
    if (!compiled.ok()) return internal_error("pre-tokenizer \"" + name + "\": " + compiled.status().message());
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.regex = std::move(compiled).value();
    step.behavior = SplitBehavior::kIsolated;
    t.pre_tokenizer_.add_step(std::move(step));
  }
  PreTokenizerStep byte_level;
  byte_level.kind = PreTokenizerStep::Kind::kByteLevel;
  byte_level.add_prefix_space = false;
  if (spec->gpt2_regex) {
    auto compiled = Regex::compile(kGpt2Pattern);
    if (!compiled.ok()) return internal_error(compiled.status().message());
    byte_level.regex = std::move(compiled).value();
  }
  t.pre_tokenizer_.add_step(std::move(byte_level));
  t.bpe_.ignore_merges = spec->ignore_merges;
  return Status::ok_status();
}

Status load_merges(const Meta& m, TokenizerImpl& t) {
  SHOAL_ASSIGN_OR_RETURN(const GgufValue* merges, m.array("tokenizer.ggml.merges", GgufType::kString, true));
  auto id_of = [&](const std::string& token) -> int32_t {
    if (const auto it = t.bpe_.vocab.find(token); it != t.bpe_.vocab.end()) return it->second;
    if (const auto it = t.added_ids_.find(token); it != t.added_ids_.end()) return it->second;
    return -1;
  };
  t.bpe_.merges.reserve(merges->strings.size());
  for (size_t i = 0; i < merges->strings.size(); ++i) {
    const std::string& s = merges->strings[i];
    const std::string where = "tokenizer.ggml.merges[" + std::to_string(i) + "]";
    // llama.cpp splits at the first space after the first character.
    const size_t space = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) return m.error(where, "expected \"left right\", got \"" + s + "\"");
    const std::string left = s.substr(0, space), right = s.substr(space + 1);
    const int32_t left_id = id_of(left), right_id = id_of(right), merged_id = id_of(left + right);
    for (const auto& [part, id] : {std::pair{&left, left_id}, {&right, right_id}}) {
      if (id < 0) return m.error(where, "\"" + *part + "\" is not a token");
    }
    if (merged_id < 0) return m.error(where, "\"" + left + right + "\" is not a token");
    t.bpe_.merges.insert(left_id, right_id, {static_cast<int32_t>(i), merged_id});
  }
  return Status::ok_status();
}

Status load_metadata(const Meta& m, TokenizerImpl& t) {
  const GgufValue* model = m.h.find("tokenizer.ggml.model");
  if (model == nullptr) return m.error("tokenizer.ggml.model", "missing: the GGUF carries no tokenizer");
  if (model->type != GgufType::kString) return m.error("tokenizer.ggml.model", "expected a STRING, got " + model->describe());
  if (model->s != "gpt2") {
    std::string what = "\"" + model->s + "\"";
    if (model->s == "llama") what += " (SentencePiece)";
    return unimplemented(m.source + ": tokenizer.ggml.model: tokenizer " + what +
                         " is not supported (only \"gpt2\", byte-level BPE)");
  }
  SHOAL_ASSIGN_OR_RETURN(const GgufValue* tokens, m.array("tokenizer.ggml.tokens", GgufType::kString, true));
  SHOAL_ASSIGN_OR_RETURN(const GgufValue* type_array, m.array("tokenizer.ggml.token_type", GgufType::kI32, false));
  const size_t n = tokens->strings.size();
  if (n == 0 || n > static_cast<size_t>(INT32_MAX)) return m.error("tokenizer.ggml.tokens", "no tokens, or too many");
  std::vector<int64_t> types(n, kNormal);
  if (type_array != nullptr) {
    if (type_array->ints.size() < n) {
      return m.error("tokenizer.ggml.token_type", std::to_string(type_array->ints.size()) + " entries for " +
                                                      std::to_string(n) + " tokens");
    }
    types.assign(type_array->ints.begin(), type_array->ints.begin() + static_cast<std::ptrdiff_t>(n));
  }

  // The vocabulary and the added tokens, then the decoding table, by id.
  t.bpe_.vocab.reserve(n);
  t.decoded_offset_.assign(n + 1, 0);
  t.id_flags_.assign(n, 0);
  for (size_t id = 0; id < n; ++id) {
    const std::string& token = tokens->strings[id];
    const int64_t type = types[id];
    if (type < kUndefined || type > kByte) {
      return m.error("tokenizer.ggml.token_type[" + std::to_string(id) + "]", "unknown token type " + std::to_string(type));
    }
    if (!utf8::is_valid(token)) return m.error("tokenizer.ggml.tokens[" + std::to_string(id) + "]", "not valid UTF-8");
    t.decoded_offset_[id] = static_cast<uint32_t>(t.decoded_blob_.size());
    // Unused (and undefined) ids have no token, as llama.cpp renders no piece for them.
    if (type == kUnused || type == kUndefined || token.empty()) continue;
    const auto id32 = static_cast<int32_t>(id);
    if (type == kControl || type == kUserDefined) {
      // The first of two added tokens with one content is the one text matches.
      if (t.added_ids_.emplace(token, id32).second) {
        AddedToken a;
        a.id = id32;
        a.content = token;
        a.special = type == kControl;
        t.added_.push_back(std::move(a));
      }
    } else {
      t.bpe_.vocab.emplace(token, id32);  // the first of two equal strings is the one encoding gives
    }
    append_decoded(token, t.decoded_blob_);
    t.id_flags_[id] = TokenizerImpl::kHasToken | (type == kControl ? TokenizerImpl::kSpecial : 0);
  }
  t.decoded_offset_[n] = static_cast<uint32_t>(t.decoded_blob_.size());
  t.raw_matcher_.build(t.added_, false);
  t.normalized_matcher_.build(t.added_, true);  // none: every added token matches on the raw text

  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8::append(symbol, byte_to_char(static_cast<uint8_t>(b)));
    const auto it = t.bpe_.vocab.find(symbol);
    t.bpe_.byte_ids[b] = it == t.bpe_.vocab.end() ? -1 : it->second;
  }
  SHOAL_RETURN_IF_ERROR(load_merges(m, t));
  const PreTokenizerSpec* spec = nullptr;
  SHOAL_RETURN_IF_ERROR(load_pre_tokenizer(m, t, spec));

  SHOAL_ASSIGN_OR_RETURN(t.bos_id_, m.token("tokenizer.ggml.bos_token_id", types, n));
  SHOAL_ASSIGN_OR_RETURN(t.eos_id_, m.token("tokenizer.ggml.eos_token_id", types, n));
  // tokenizer.ggml.padding_token_id is not read: chat templates get the EOS string as pad_token
  // (chat_template.h), and llama.cpp itself ignores a pad id out of range.
  if (t.bos_id_ >= 0) t.bos_token_ = tokens->strings[t.bos_id_];
  if (t.eos_id_ >= 0) t.eos_token_ = tokens->strings[t.eos_id_];
  SHOAL_ASSIGN_OR_RETURN(t.add_bos_, m.boolean("tokenizer.ggml.add_bos_token", spec->add_bos));
  if (t.add_bos_ && t.bos_id_ < 0) t.add_bos_ = false;
  SHOAL_ASSIGN_OR_RETURN(t.chat_template_, m.string("tokenizer.chat_template", ""));

  // Ids decode accepts: the token list (the converter pads it to the model's vocab_size), or
  // the model's <arch>.vocab_size when that is larger.
  t.vocab_limit_ = static_cast<int64_t>(n);
  SHOAL_ASSIGN_OR_RETURN(std::string arch, m.string("general.architecture", ""));
  if (const GgufValue* v = arch.empty() ? nullptr : m.h.find(arch + ".vocab_size")) {
    if (v->is_integer() && v->i > t.vocab_limit_ && v->i <= INT32_MAX) t.vocab_limit_ = v->i;
  }
  return Status::ok_status();
}

bool has_gguf_magic(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace

// A GGUF model rather than tokenizer files: a *.gguf file (or any file that starts with the
// GGUF magic), or a folder with a *.gguf file and no tokenizer.json (which is preferred).
bool is_gguf_tokenizer_path(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "tokenizer.json", ec)) return false;
    for (const auto& e : fs::directory_iterator(path, ec))
      if (e.path().extension() == ".gguf") return true;
    return false;
  }
  if (!fs::is_regular_file(path, ec)) return false;
  return path.extension() == ".gguf" || has_gguf_magic(path);
}

StatusOr<std::unique_ptr<Tokenizer>> load_gguf_tokenizer(const fs::path& path) {
  SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<GgufModel> model, GgufModel::open(path));
  return Tokenizer::from_gguf(model->meta(), model->first_path().string());
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufHeader& meta, const std::string& source) {
  auto t = std::make_unique<TokenizerImpl>();
  SHOAL_RETURN_IF_ERROR(load_metadata(Meta{meta, source.empty() ? std::string("GGUF") : source}, *t));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace shoal
