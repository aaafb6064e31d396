// Runtime dispatch of the ggml block dequantizers (block.h).
#include "kernels/cpu/formats/ggml/block.h"

#include "common/check.h"

namespace shoal::kernels::cpu::ggml {

void dequantize_block(DType t, const uint8_t* b, float* y) {
  switch (t) {
#define SHOAL_GGML_CASE(T) \
  case DType::T:           \
    return dequantize_block<DType::T>(b, y);
    SHOAL_GGML_CASE(kQ4_0)
    SHOAL_GGML_CASE(kQ4_1)
    SHOAL_GGML_CASE(kQ5_0)
    SHOAL_GGML_CASE(kQ5_1)
    SHOAL_GGML_CASE(kQ8_0)
    SHOAL_GGML_CASE(kQ2_K)
    SHOAL_GGML_CASE(kQ3_K)
    SHOAL_GGML_CASE(kQ4_K)
    SHOAL_GGML_CASE(kQ5_K)
    SHOAL_GGML_CASE(kQ6_K)
    SHOAL_GGML_CASE(kQ8_K)
    SHOAL_GGML_CASE(kIQ2_XXS)
    SHOAL_GGML_CASE(kIQ2_XS)
    SHOAL_GGML_CASE(kIQ3_XXS)
    SHOAL_GGML_CASE(kIQ1_S)
    SHOAL_GGML_CASE(kIQ4_NL)
    SHOAL_GGML_CASE(kIQ3_S)
    SHOAL_GGML_CASE(kIQ2_S)
    SHOAL_GGML_CASE(kIQ4_XS)
    SHOAL_GGML_CASE(kIQ1_M)
#undef SHOAL_GGML_CASE
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF8E4M3:
      break;
  }
  SHOAL_CHECK(dtype_is_block(t) && "dequantize_block: not a ggml block type");
}

}  // namespace shoal::kernels::cpu::ggml
