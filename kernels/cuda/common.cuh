// What the CUDA kernel files share: the error check, the stored values widened to float32 (the
// CPU's bit placements, exact) and the refusal of a dtype an op does not take yet.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/cuda/cuda.h"

namespace shoal::kernels::cuda {
namespace {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "shoal: CUDA error in %s: %s\n", what, cudaGetErrorString(e));
  std::abort();
}

// Element i of stored values p of dtype T as float32 (FP8: before its block scale). e4m3fn: its
// bits in a float's fields times 2^120 (exact, subnormals too), then the sign.
template <DType T>
__device__ __forceinline__ float widen(const uint8_t* p, int64_t i) {
  if constexpr (T == DType::kF32) {
    return reinterpret_cast<const float*>(p)[i];
  } else if constexpr (T == DType::kBF16) {
    return __uint_as_float(uint32_t(reinterpret_cast<const uint16_t*>(p)[i]) << 16);
  } else if constexpr (T == DType::kF16) {
    return __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(p)[i]));
  } else {
    const uint32_t x = p[i];
    const float mag = __uint_as_float((x & 0x7Fu) << 20) * 0x1p120f;
    return (x & 0x80u) ? -mag : mag;
  }
}

inline void require_dtype(const char* op, DType d) {
  if (linear_supports(d)) return;
  std::fprintf(stderr, "shoal: %s on CUDA does not take %s weights yet\n", op, std::string(dtype_name(d)).c_str());
  std::abort();
}

}  // namespace
}  // namespace shoal::kernels::cuda
