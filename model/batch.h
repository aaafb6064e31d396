// A micro-batch: tokens of several sequences, each sequence's tokens contiguous and at
// consecutive positions. Prefill and decode are the same thing with different counts.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/seq_kv.h"

namespace shoal {

// How MLA attends. kAbsorb folds kv_b_proj into the query and the output (model.py's default,
// cheap for decode: the latent cache is read as is); kNaive expands the cached latents into
// per-head keys and values (cheaper for long prefills); kAuto picks per sequence by cost.
// The two round differently, so a token's bits depend on the path its sequence took.
enum class AttnImpl : int8_t { kAuto, kNaive, kAbsorb };

struct SeqRange {
  int64_t begin = 0;  // first token of this sequence in the batch
  int64_t count = 0;  // tokens of this sequence in the batch
  int32_t slot = 0;   // KV cache slot holding this sequence
  int32_t start_pos = 0;  // position of its first token here (tokens before it are cached)
  int32_t adapter = 0;    // its LoRA adapter id (model/lora.h); 0: the base model
  // Its MLA path (kAuto: by its token count here). The scheduler fixes it per request, so that
  // a token's bits do not depend on how its prompt was chunked, reused or recomputed.
  AttnImpl attn = AttnImpl::kAuto;
};

// Positions [0, positions) of KV slot `from` copied into slot `to`, in every layer, before the
// micro-batch that carries the copy runs there: n > 1 choices share their prompt's prefill.
struct SlotCopy {
  int32_t from = 0, to = 0;
  int32_t positions = 0;
};

// A paged KV cache's block table of `slot` becomes its first `keep` blocks followed by `blocks`
// (node/kv_cache.h), on every rank, before the micro-batch that carries the edit runs there.
struct TableEdit {
  int32_t slot = 0;
  int32_t keep = 0;
  std::vector<int32_t> blocks;
};

struct Batch {
  std::vector<int32_t> tokens;     // [n_tokens]
  std::vector<int32_t> positions;  // [n_tokens]
  std::vector<SeqRange> seqs;
  std::vector<TableEdit> tables;   // applied before the copies and the tokens
  std::vector<SlotCopy> copies;    // applied layer by layer before the tokens

  int64_t n_tokens() const { return int64_t(tokens.size()); }
  void add_sequence(int32_t slot, int32_t start_pos, const std::vector<int32_t>& ids, int32_t adapter = 0) {
    seqs.push_back({n_tokens(), int64_t(ids.size()), slot, start_pos, adapter});
    for (size_t k = 0; k < ids.size(); ++k) {
      tokens.push_back(ids[k]);
      positions.push_back(start_pos + int32_t(k));
    }
  }
  // The adapter id of every token row; empty when every sequence is the base model's.
  std::vector<int32_t> row_adapters() const {
    std::vector<int32_t> r;
    for (const SeqRange& s : seqs)
      if (s.adapter != 0) r.resize(tokens.size(), 0);
    if (r.empty()) return r;
    for (const SeqRange& s : seqs) std::fill_n(r.begin() + s.begin, s.count, s.adapter);
    return r;
  }
};

}  // namespace shoal
