// The one Tokenizer implementation: a byte-level BPE tokenizer.json. Loading
// (tokenizer_json.cpp) fills it; encoding and decoding (tokenizer.cpp) only read it, apart from
// the piece cache, which is made for concurrent use, so every const method is safe to call from
// many threads at once.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "text/tokenizer/added_tokens.h"
#include "text/tokenizer/bpe.h"
#include "text/tokenizer/piece_cache.h"
#include "text/tokenizer/pretokenizer.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal {

class TokenizerImpl final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override;
  StatusOr<std::string> decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  StatusOr<std::string> token_bytes(int32_t id, bool skip_special_tokens) const override;

  bool add_bos_default() const override { return add_bos_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  const std::string& bos_token() const override { return bos_token_; }
  const std::string& eos_token() const override { return eos_token_; }
  const std::string& chat_template() const override { return chat_template_; }
  int32_t token_id(std::string_view token) const override;

  int64_t vocab_limit() const override { return vocab_limit_; }
  void set_vocab_limit(int64_t limit) override { vocab_limit_ = limit; }

  // Filled by the loader.
  Bpe bpe_;
  bool nfc_ = false;  // the normalizer is NFC (else the identity)
  PreTokenizer pre_tokenizer_;
  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized: false
  AddedTokenMatcher normalized_matcher_;  // ... with normalized: true
  std::unordered_map<std::string, int32_t> added_ids_;

  // Decoding table: id -> its bytes after the ByteLevel decoder, for ids below table size.
  std::string decoded_blob_;
  std::vector<uint32_t> decoded_offset_;  // [n_ids + 1] into decoded_blob_
  std::vector<uint8_t> id_flags_;         // [n_ids] kHasToken | kSpecial
  static constexpr uint8_t kHasToken = 1, kSpecial = 2;

  bool add_bos_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1;
  // The special token tokenizer.json's post-processor puts before the text, or -1 / "".
  int32_t post_bos_id_ = -1;
  std::string post_bos_token_;
  std::string bos_token_, eos_token_, chat_template_;
  int64_t vocab_limit_ = 0;

 private:
  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_piece(std::string_view piece, bool byte_level, std::vector<int32_t>& ids, BpeScratch& scratch) const;

  mutable PieceCache cache_;  // shared by every call and thread
};

}  // namespace shoal
