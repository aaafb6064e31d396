#include "model/seq_kv.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace shoal {
namespace {

// One row into the cache's dtype; fp8 also writes its scale (the row's largest magnitude / 448).
void store_row(void* base, DType d, int64_t at, const float* row, int64_t width, float* scale) {
  if (d == DType::kBF16) {
    uint16_t* out = static_cast<uint16_t*>(base) + at;
    for (int64_t i = 0; i < width; ++i) out[i] = float_to_bf16(row[i]);
  } else if (d == DType::kF8E4M3) {
    float amax = 0;
    for (int64_t i = 0; i < width; ++i) amax = std::max(amax, std::fabs(row[i]));
    *scale = amax > 0 ? amax / 448.0f : 1.0f;
    uint8_t* out = static_cast<uint8_t*>(base) + at;
    for (int64_t i = 0; i < width; ++i) out[i] = float_to_fp8_e4m3(row[i] / *scale);
  } else {
    std::copy_n(row, width, static_cast<float*>(base) + at);
  }
}

void load_rows(float* out, const SeqKv& kv, const void* base, int64_t end, int64_t width, int part) {
  SHOAL_CHECK_LE(end, kv.capacity);
  for (int64_t p = 0; p < end; ++p) {
    const int64_t at = kv.row_offset(p, width);
    if (kv.dtype == DType::kBF16) {
      const uint16_t* in = static_cast<const uint16_t*>(base) + at;
      for (int64_t i = 0; i < width; ++i) out[p * width + i] = bf16_to_float(in[i]);
    } else if (kv.dtype == DType::kF8E4M3) {
      const uint8_t* in = static_cast<const uint8_t*>(base) + at;
      const float s = kv.row_scales(p)[part];
      for (int64_t i = 0; i < width; ++i) out[p * width + i] = fp8_e4m3_to_float(in[i]) * s;
    } else {
      std::copy_n(static_cast<const float*>(base) + at, width, out + p * width);
    }
  }
}

}  // namespace

void SeqKv::store(int64_t p, const float* kv_row, int64_t kv_width, const float* pe_row, int64_t pe_width) const {
  SHOAL_CHECK(p >= 0 && p < capacity);
  float* s = dtype == DType::kF8E4M3 ? row_scales(p) : nullptr;
  store_row(kv, dtype, row_offset(p, kv_width), kv_row, kv_width, s);
  store_row(pe, dtype, row_offset(p, pe_width), pe_row, pe_width, s ? s + 1 : nullptr);
}

void SeqKv::load_kv(float* out, int64_t end, int64_t width) const { load_rows(out, *this, kv, end, width, 0); }
void SeqKv::load_pe(float* out, int64_t end, int64_t width) const { load_rows(out, *this, pe, end, width, 1); }

void SeqKv::describe(kernels::AttentionParams& p) const {
  p.kv_dtype = dtype;
  p.kv_blocks = blocks;
  p.kv_block_tokens = block_tokens;
  p.kv_block_stride = block_stride;
  p.kv_scales = scales;
  p.kv_scale_block_stride = scale_block_stride;
}


}  // namespace shoal
