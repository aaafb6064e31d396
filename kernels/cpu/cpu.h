// CPU implementations: the same signatures as kernels/kernels.h, in namespace cpu.
// Arguments were validated by the dispatching entry; these trust them.
#pragma once

#include "kernels/kernels.h"

namespace shoal::kernels::cpu {

void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx);
void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx);
void rms_norm(float* out, const float* x, const Matrix& weight, int64_t n, float eps, const Context& ctx);
void embedding(float* out, const int32_t* ids, const Matrix& w, int64_t n, const Context& ctx);
void silu_mul(float* out, const float* gate, const float* up, int64_t n, int64_t d, const Context& ctx);
void rope(const RopeParams& p, const Context& ctx);
void attention(const AttentionParams& p, const Context& ctx);
void route(const RouteParams& p, const Context& ctx);

// Columns [c0, c1) of row r of the view, as float32: out[c1 - c0].
void dequantize_span(float* out, const Matrix& w, int64_t r, int64_t c0, int64_t c1);

}  // namespace shoal::kernels::cpu
