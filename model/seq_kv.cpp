#include "model/seq_kv.h"

#include <algorithm>

#include "common/check.h"

namespace shoal {
namespace {

void store_row(void* base, DType d, int64_t at, const float* row, int64_t width) {
  if (d == DType::kBF16) {
    uint16_t* out = static_cast<uint16_t*>(base) + at;
    for (int64_t i = 0; i < width; ++i) out[i] = float_to_bf16(row[i]);
  } else {
    std::copy_n(row, width, static_cast<float*>(base) + at);
  }
}

void load_rows(float* out, const SeqKv& kv, const void* base, int64_t end, int64_t width) {
  SHOAL_CHECK_LE(end, kv.capacity);
  for (int64_t p = 0; p < end; ++p) {
    const int64_t at = kv.row_offset(p, width);
    if (kv.dtype == DType::kBF16) {
      const uint16_t* in = static_cast<const uint16_t*>(base) + at;
      for (int64_t i = 0; i < width; ++i) out[p * width + i] = bf16_to_float(in[i]);
    } else {
      std::copy_n(static_cast<const float*>(base) + at, width, out + p * width);
    }
  }
}

}  // namespace

void SeqKv::store(int64_t p, const float* kv_row, int64_t kv_width, const float* pe_row, int64_t pe_width) const {
  SHOAL_CHECK(p >= 0 && p < capacity);
  store_row(kv, dtype, row_offset(p, kv_width), kv_row, kv_width);
  store_row(pe, dtype, row_offset(p, pe_width), pe_row, pe_width);
}

void SeqKv::load_kv(float* out, int64_t end, int64_t width) const { load_rows(out, *this, kv, end, width); }
void SeqKv::load_pe(float* out, int64_t end, int64_t width) const { load_rows(out, *this, pe, end, width); }

void SeqKv::describe(kernels::AttentionParams& p) const {
  p.kv_dtype = dtype;
  p.kv_blocks = blocks;
  p.kv_block_tokens = block_tokens;
  p.kv_block_stride = block_stride;
}

const void* SeqKv::kv_at(int64_t offset) const {
  return dtype == DType::kBF16 ? static_cast<const void*>(static_cast<const uint16_t*>(kv) + offset)
                               : static_cast<const void*>(static_cast<const float*>(kv) + offset);
}
const void* SeqKv::pe_at(int64_t offset) const {
  return dtype == DType::kBF16 ? static_cast<const void*>(static_cast<const uint16_t*>(pe) + offset)
                               : static_cast<const void*>(static_cast<const float*>(pe) + offset);
}

}  // namespace shoal
