// The CUDA backend's entries: the same signatures as kernels/kernels.h (which validates and
// dispatches here when ctx.device is kCuda). Every pointer is device memory: the matrix's data
// and scales, the activations and the output; ctx.stream is the cudaStream_t to run on (null:
// the default stream). Calls are asynchronous on that stream, as CUDA's are.
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace shoal::kernels::cuda {

int device_count();

// out[n, w.rows] = x[n, w.cols] · wᵀ for F32, F16, BF16 and F8_E4M3 with block scales. The order
// of each output's sum depends only on the matrix (its dtype and width), never on n or on the
// other tokens beside it: a token's result is bitwise the same alone or in any batch
// (docs/cuda.md, "The canonical order").
void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx);

// Whether linear and linear_t take this dtype on the GPU.
bool linear_supports(DType d);

// out[n, w.cols] = x[n, w.rows] · w in the CPU's order (per column, rows ascending, one fused
// multiply-add each): the CPU's bits.
void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx);
// Rows ids[n] of the table, as dequantize_row gives them. ids alone is host memory (the token
// ids come from the host, which checks them against the table); returns once they are copied.
void embedding(float* out, const int32_t* ids, const Matrix& w, int64_t n, const Context& ctx);
// As the CPU's: squares summed in double (a fixed tree here), then x * inv * weight.
void rms_norm(float* out, const float* x, const Matrix& weight, int64_t n, float eps, const Context& ctx);
void silu_mul(float* out, const float* gate, const float* up, int64_t n, int64_t d, const Context& ctx);
// p.x, p.positions and p.inv_freq in device memory.
void rope(const RopeParams& p, const Context& ctx);

}  // namespace shoal::kernels::cuda
