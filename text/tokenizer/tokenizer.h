// A Hugging Face tokenizer (tokenizer.json), loaded generically: byte-level BPE with its merges,
// added tokens with their flags, the NFC normalizer, Split pre-tokenizers with their regexes
// (Oniguruma, as the reference uses), the ByteLevel pre-tokenizer and decoder, and a
// post-processor's BOS. Encodes text to exactly the ids of Hugging Face's tokenizers library
// and decodes ids back to text (lossy UTF-8, as it does). The const methods may be called from
// any number of threads at once. docs/tokenizer.md has what is supported and how each rule maps
// to the reference.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace shoal {

struct GgufHeader;  // model/gguf.h

class Tokenizer {
 public:
  // `path`: a folder holding tokenizer.json (and optionally tokenizer_config.json and the
  // model's config.json), or the tokenizer.json file itself. Malformed files are an error
  // naming the file and the field. A GGUF model also serves: a .gguf file, part 1 of a split
  // one, or a folder holding one and no tokenizer.json (which is preferred when both are there);
  // the tokenizer and chat template then come from its metadata (from_gguf).
  static StatusOr<std::unique_ptr<Tokenizer>> load(const std::filesystem::path& path);
  // From a GGUF's metadata: tokenizer.ggml.* (byte-level BPE, model "gpt2", only) and
  // tokenizer.chat_template. `source` names the file in errors. tokenizer_gguf.cpp has the keys.
  static StatusOr<std::unique_ptr<Tokenizer>> from_gguf(const GgufHeader& meta, const std::string& source);
  virtual ~Tokenizer() = default;

  // ids = (add_bos ? [bos] : []) + encode(text) (no BOS when the tokenizer has none). Text is
  // bytes: invalid UTF-8 is encoded the way the reference encodes it (each maximal invalid
  // subpart as U+FFFD, see docs/tokenizer.md), never an error.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos) const = 0;
  // Ids in [0, vocab_limit()) without a token decode to nothing; ids outside it are an error.
  virtual StatusOr<std::string> decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;
  // The raw bytes of one token (empty for ids without a token, or skipped special ones).
  virtual StatusOr<std::string> token_bytes(int32_t id, bool skip_special_tokens) const = 0;

  // tokenizer_config.json: add_bos_token, bos/eos token strings and ids (-1 / "" when absent),
  // chat_template ("" when absent). Without add_bos_token, tokenizer.json's post-processor
  // decides: a TemplateProcessing that puts a special token before the text (Llama 3) makes
  // add_bos_default() true and that token's id bos_id(); else add_bos_default() is false.
  virtual bool add_bos_default() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual const std::string& bos_token() const = 0;
  virtual const std::string& eos_token() const = 0;
  virtual const std::string& chat_template() const = 0;
  virtual int32_t token_id(std::string_view token) const = 0;  // an added or vocab token, -1 if none

  // Ids accepted by decode: [0, vocab_limit). The model's vocab_size (config.json in the same
  // folder) when known, else one past the tokenizer's largest id; set_vocab_limit overrides.
  virtual int64_t vocab_limit() const = 0;
  virtual void set_vocab_limit(int64_t limit) = 0;
};

// Streaming detokenizer: push ids one at a time; each push returns the text that became
// complete (whole UTF-8 characters only), so no U+FFFD is emitted that a later token would
// have completed. finish() returns what is left (with U+FFFD for a truncated character).
// The concatenation of all pushes and finish() equals decode(all ids).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, bool skip_special_tokens) : tok_(tok), skip_(skip_special_tokens) {}
  StatusOr<std::string> push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tok_;
  bool skip_;
  std::string pending_;  // bytes not yet emitted
};

// Lossy UTF-8 decoding: each maximal invalid subpart becomes one U+FFFD (Rust's
// String::from_utf8_lossy, WHATWG TextDecoder).
std::string utf8_lossy(std::string_view bytes);
// Length of the longest prefix of `bytes` that ends on a character boundary, treating a
// truncated but so-far-valid sequence at the end as incomplete.
size_t utf8_complete_prefix(std::string_view bytes);

}  // namespace shoal
