// Streaming detokenization. Bytes are held back only while they are a valid but unfinished
// character; everything before that point decodes the same whatever bytes come next (see
// utf8_complete_prefix), so the pushes add up to decode() of all the ids.
#include "text/tokenizer/tokenizer.h"

namespace shoal {

StatusOr<std::string> StreamDecoder::push(int32_t id) {
  SHOAL_ASSIGN_OR_RETURN(std::string bytes, tok_.token_bytes(id, skip_));
  pending_ += bytes;
  const size_t ready = utf8_complete_prefix(pending_);
  std::string out = utf8_lossy(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace shoal
