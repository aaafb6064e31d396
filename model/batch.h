// A micro-batch: tokens of several sequences, each sequence's tokens contiguous and at
// consecutive positions. Prefill and decode are the same thing with different counts.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace shoal {

struct SeqRange {
  int64_t begin = 0;  // first token of this sequence in the batch
  int64_t count = 0;  // tokens of this sequence in the batch
  int32_t slot = 0;   // KV cache slot holding this sequence
  int32_t start_pos = 0;  // position of its first token here (tokens before it are cached)
  int32_t adapter = 0;    // its LoRA adapter id (model/lora.h); 0: the base model
};

// Positions [0, positions) of KV slot `from` copied into slot `to`, in every layer, before the
// micro-batch that carries the copy runs there: n > 1 choices share their prompt's prefill.
struct SlotCopy {
  int32_t from = 0, to = 0;
  int32_t positions = 0;
};

struct Batch {
  std::vector<int32_t> tokens;     // [n_tokens]
  std::vector<int32_t> positions;  // [n_tokens]
  std::vector<SeqRange> seqs;
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

// The KV cache rows of one sequence in one layer: rows [0, capacity), row p for position p.
// MLA keeps the latent and the roped key; GQA keeps the roped keys in `kv` and the values in `pe`.
struct SeqKv {
  float* kv = nullptr;  // [capacity, kv_lora_rank]  normalised latent c_kv  (GQA: keys [capacity, n_kv_heads * head_dim])
  float* pe = nullptr;  // [capacity, qk_rope_head_dim]  roped k_pe          (GQA: values, same shape)
  int64_t capacity = 0;
};

}  // namespace shoal
