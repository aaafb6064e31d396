// The KV cache rows of one sequence in one layer, as the layers read and write them: row p for
// position p, in float32, bf16 or fp8 (e4m3, each row with its own scale), contiguous or in blocks (node/kv_cache.h, model/kv_layout.h).
// MLA keeps the latent in `kv` and the roped key in `pe`; GQA keeps the roped keys in `kv` and
// the values in `pe`.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/kernels.h"

namespace shoal {

struct SeqKv {
  void* kv = nullptr;  // row 0 (or block 0): [kv_width] per row  latent c_kv (GQA: keys)
  void* pe = nullptr;  //                     [pe_width] per row  roped k_pe (GQA: values)
  int64_t capacity = 0;  // rows [0, capacity) exist
  DType dtype = DType::kF32;
  // Paged: row p lies in block blocks[p / block_tokens], block b starting block_stride * b
  // elements past kv (and past pe). nullptr: contiguous rows.
  const int32_t* blocks = nullptr;
  int64_t block_tokens = 0, block_stride = 0;
  // fp8: two scales per row (kv's, pe's), row p's at scales[2p] (paged: block b's rows from
  // scales + b * scale_block_stride).
  float* scales = nullptr;
  int64_t scale_block_stride = 0;

  // Element offset of row p of a part whose rows are `width` elements.
  int64_t row_offset(int64_t p, int64_t width) const {
    return blocks ? int64_t(blocks[p / block_tokens]) * block_stride + (p % block_tokens) * width : p * width;
  }
  float* row_scales(int64_t p) const {
    return scales + (blocks ? int64_t(blocks[p / block_tokens]) * scale_block_stride + (p % block_tokens) * 2 : p * 2);
  }
  // Stores position p's rows (rounded to the cache dtype).
  void store(int64_t p, const float* kv_row, int64_t kv_width, const float* pe_row, int64_t pe_width) const;
  // Rows [0, end) of kv (or pe) as float32, contiguous: out [end, width].
  void load_kv(float* out, int64_t end, int64_t width) const;
  void load_pe(float* out, int64_t end, int64_t width) const;
  // The attention's key/value storage: dtype and paging (its k_a, k_b, v point into this cache).
  void describe(kernels::AttentionParams& p) const;
};

}  // namespace shoal
