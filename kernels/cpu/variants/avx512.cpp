// The CPU kernels (linear, linear_t, attention, the probes' loops) compiled for the avx512 variant
// (target flags in kernels/CMakeLists.txt).
#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear_t.h"
#include "kernels/cpu/probe.h"
#include "kernels/cpu/variant.h"

namespace shoal::kernels::cpu {
void linear_avx512(float* out, const float* x, const Matrix& w, int64_t n) { linear_variant(out, x, w, n); }
void linear_t_avx512(float* out, const float* x, const Matrix& w, int64_t n) { linear_t_variant(out, x, w, n); }
const char* simd_name_avx512() { return kSimdName; }
void attention_avx512(const AttentionParams& p) { attention_variant(p); }
float read_pass_avx512(const float* p, int64_t n, int kernel) { return read_pass_variant(p, n, kernel); }
float fma_pass_avx512(int64_t iters) { return fma_pass_variant(iters); }
}  // namespace shoal::kernels::cpu
