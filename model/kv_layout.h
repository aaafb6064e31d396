// How the KV cache is laid out (docs/serving.md, "The KV pool"), shared by the runtime
// (node/kv_cache.h) and the planner (cluster/fit.h) so that both count the same bytes.
//
// Each rank keeps, for the layers whose attention it hosts, one pool of blocks of kKvBlockTokens
// positions. A block holds, per layer, kKvBlockTokens rows of MLA's latent (kv_lora_rank) then as
// many of its roped key (qk_rope_head_dim), or GQA's keys then values, in the cache dtype. In
// fp8 (e4m3) each row has its own scale (its largest magnitude / 448), two float32 per position
// (the latent's and the roped key's) after the block's codes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/dtype.h"
#include "model/config.h"

namespace shoal {

inline constexpr int64_t kKvBlockTokens = 64;

// The cache dtypes: kF32, kBF16 (values rounded to nearest even as they are stored) or kF8E4M3
// (per-row scales).
inline int64_t kv_value_bytes(DType d) { return d == DType::kBF16 ? 2 : d == DType::kF8E4M3 ? 1 : 4; }
inline int64_t kv_scale_bytes(DType d) { return d == DType::kF8E4M3 ? 2 * 4 : 0; }  // per position and layer
inline const char* kv_dtype_name(DType d) { return d == DType::kBF16 ? "bf16" : d == DType::kF8E4M3 ? "fp8" : "f32"; }
inline std::optional<DType> parse_kv_dtype(const std::string& s) {
  if (s == "f32") return DType::kF32;
  if (s == "bf16") return DType::kBF16;
  if (s == "fp8") return DType::kF8E4M3;
  return std::nullopt;
}

// Bytes of one position of `layers` layers, and of one block of them.
inline int64_t kv_token_bytes(const ModelConfig& c, int64_t layers, DType d) {
  return layers * (c.kv_cache_width() * kv_value_bytes(d) + kv_scale_bytes(d));
}
inline int64_t kv_block_bytes(const ModelConfig& c, int64_t layers, DType d) {
  return kKvBlockTokens * kv_token_bytes(c, layers, d);
}
// Blocks that hold `positions` positions of one sequence.
inline int64_t kv_blocks_for(int64_t positions) { return (positions + kKvBlockTokens - 1) / kKvBlockTokens; }

}  // namespace shoal
