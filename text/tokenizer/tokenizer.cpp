// Encoding and decoding (loading is in tokenizer_json.cpp).
//
// encode: as the reference, the added tokens with normalized: false are cut out of the raw
// text first; each stretch left is normalized (NFC, if the tokenizer has it) and the
// normalized: true ones are cut out of that; each stretch between them is pre-tokenized into
// pieces, and each piece is BPE-encoded. decode: each id's bytes, joined, then lossy UTF-8.
#include <span>
#include <string>

#include "text/tokenizer/normalizer.h"
#include "text/tokenizer/tokenizer_impl.h"
#include "text/tokenizer/utf8.h"

namespace shoal {
namespace {

// Working memory of one encode call: nothing is shared between calls or threads.
struct EncodeScratch {
  std::string buf;  // the text, then any stretches NFC or pieces the pre-tokenizer rewrote
  std::string normalized;
  std::vector<Segment> outer, inner;
  std::vector<Span> pieces;
  PreTokenizeScratch pre;
  BpeScratch bpe;
};

Status id_error(int32_t id, int64_t limit) {
  return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                          std::to_string(limit) + ")");
}

}  // namespace

std::vector<int32_t> TokenizerImpl::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  if (utf8::is_valid(text)) {
    encode_text(text, ids);
  } else {
    // The reference only takes valid strings; callers in Python or JS replace each maximal
    // invalid subpart with U+FFFD on the way in, so this encodes what they would have sent.
    encode_text(utf8_lossy(text), ids);
  }
  return ids;
}

void TokenizerImpl::encode_text(std::string_view text, std::vector<int32_t>& ids) const {
  EncodeScratch s;
  s.buf.assign(text);
  const bool byte_level = pre_tokenizer_.byte_level();
  raw_matcher_.split(s.buf, {0, static_cast<uint32_t>(s.buf.size())}, s.outer);
  for (const Segment& outer : s.outer) {
    if (outer.id >= 0) {
      ids.push_back(outer.id);
      continue;
    }
    Span stretch = outer.span;
    if (nfc_) {
      const std::string_view raw = std::string_view(s.buf).substr(stretch.begin, stretch.end - stretch.begin);
      if (!nfc_quick_check(raw)) {
        s.normalized.clear();
        nfc_append(raw, s.normalized);
        stretch.begin = static_cast<uint32_t>(s.buf.size());
        s.buf += s.normalized;
        stretch.end = static_cast<uint32_t>(s.buf.size());
      }
    }
    s.inner.clear();
    normalized_matcher_.split(s.buf, stretch, s.inner);
    for (const Segment& inner : s.inner) {
      if (inner.id >= 0) {
        ids.push_back(inner.id);
        continue;
      }
      pre_tokenizer_.run(s.buf, inner.span, s.pieces, s.pre);
      for (const Span& piece : s.pieces)
        encode_piece(std::string_view(s.buf).substr(piece.begin, piece.end - piece.begin), byte_level, ids, s.bpe);
    }
  }
}

// Words repeat: a piece seen before takes its ids from the cache.
void TokenizerImpl::encode_piece(std::string_view piece, bool byte_level, std::vector<int32_t>& ids,
                                 BpeScratch& scratch) const {
  if (!PieceCache::cacheable(piece)) {
    bpe_.encode(piece, byte_level, ids, scratch);
    return;
  }
  const uint64_t hash = cache_.hash(piece);
  std::span<const int32_t> cached;
  if (cache_.find(piece, hash, cached)) {
    ids.insert(ids.end(), cached.begin(), cached.end());
    return;
  }
  const size_t first = ids.size();
  bpe_.encode(piece, byte_level, ids, scratch);
  cache_.insert(piece, hash, std::span<const int32_t>(ids).subspan(first));
}

StatusOr<std::string> TokenizerImpl::token_bytes(int32_t id, bool skip_special_tokens) const {
  if (id < 0 || id >= vocab_limit_) return id_error(id, vocab_limit_);
  if (static_cast<size_t>(id) >= id_flags_.size()) return std::string();
  const uint8_t flags = id_flags_[id];
  if (!(flags & kHasToken) || (skip_special_tokens && (flags & kSpecial))) return std::string();
  return decoded_blob_.substr(decoded_offset_[id], decoded_offset_[id + 1] - decoded_offset_[id]);
}

StatusOr<std::string> TokenizerImpl::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_limit_) return id_error(id, vocab_limit_);
    if (static_cast<size_t>(id) >= id_flags_.size()) continue;
    const uint8_t flags = id_flags_[id];
    if (!(flags & kHasToken) || (skip_special_tokens && (flags & kSpecial))) continue;
    bytes.append(decoded_blob_, decoded_offset_[id], decoded_offset_[id + 1] - decoded_offset_[id]);
  }
  return utf8_lossy(bytes);
}

int32_t TokenizerImpl::token_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (const auto it = bpe_.vocab.find(key); it != bpe_.vocab.end()) return it->second;
  return -1;
}

}  // namespace shoal
