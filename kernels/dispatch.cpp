// The public kernel entries: validate once, then run on the backend ctx names.
#include <atomic>

#include "common/check.h"
#include "kernels/cpu/cpu.h"
#include "kernels/kernels.h"
#ifdef SHOAL_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace shoal::kernels {

#define SHOAL_DISPATCH(op, ...)                                                         \
  do {                                                                                  \
    if (ctx.device == Device::kCpu) return cpu::op(__VA_ARGS__);                        \
    ::shoal::detail::check_failed(__FILE__, __LINE__,                                   \
                                  "kernel " #op " is not built for this device yet");   \
  } while (0)

// The ops the CUDA backend has (kernels/cuda/cuda.h): there when built with it, else as above.
#ifdef SHOAL_HAVE_CUDA
#define SHOAL_DISPATCH_CUDA(op, ...)                                                    \
  do {                                                                                  \
    if (ctx.device == Device::kCuda) return cuda::op(__VA_ARGS__);                      \
    SHOAL_DISPATCH(op, __VA_ARGS__);                                                    \
  } while (0)
#else
#define SHOAL_DISPATCH_CUDA(op, ...) SHOAL_DISPATCH(op, __VA_ARGS__)
#endif

namespace {
std::atomic<int64_t> g_weight_bytes{0};

void count_bytes(const Matrix& w, int64_t rows) {
  int64_t bytes = rows * dtype_row_bytes(w.dtype, w.cols);
  if (w.dtype == DType::kF8E4M3 && rows > 0)
    bytes += ((w.row0 + rows - 1) / w.block - w.row0 / w.block + 1) * w.scale_cols() * int64_t(sizeof(float));
  g_weight_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

void check_matrix(const Matrix& w) {
  SHOAL_CHECK(w.data != nullptr);
  SHOAL_CHECK(w.rows >= 0 && w.cols > 0);
  if (w.dtype == DType::kF8E4M3) SHOAL_CHECK(w.scale_inv != nullptr && w.block > 0);
  SHOAL_CHECK(w.cols % dtype_block(w.dtype) == 0);
}
}  // namespace

int64_t weight_bytes_read() { return g_weight_bytes.load(std::memory_order_relaxed); }

Matrix Matrix::slice_rows(int64_t first, int64_t n) const {
  SHOAL_CHECK(first >= 0 && n >= 0 && first + n <= rows);
  Matrix m = *this;
  m.row0 = row0 + first;
  m.rows = n;
  return m;
}

void dequantize_row(float* out, const Matrix& w, int64_t r) {
  check_matrix(w);
  SHOAL_CHECK(r >= 0 && r < w.rows);
  cpu::dequantize_span(out, w, r, 0, w.cols);
}

void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx) {
  check_matrix(w);
  SHOAL_CHECK(n >= 0);
  count_bytes(w, w.rows);
  SHOAL_DISPATCH_CUDA(linear, out, x, w, n, ctx);
}

void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx) {
  check_matrix(w);
  SHOAL_CHECK(n >= 0);
  count_bytes(w, w.rows);
  SHOAL_DISPATCH_CUDA(linear_t, out, x, w, n, ctx);
}

void rms_norm(float* out, const float* x, const Matrix& weight, int64_t n, float eps, const Context& ctx) {
  check_matrix(weight);
  SHOAL_CHECK_EQ(weight.rows, 1);
  SHOAL_DISPATCH_CUDA(rms_norm, out, x, weight, n, eps, ctx);
}

void embedding(float* out, const int32_t* ids, const Matrix& w, int64_t n, const Context& ctx) {
  check_matrix(w);
  for (int64_t t = 0; t < n; ++t) SHOAL_CHECK(ids[t] >= 0 && ids[t] < w.rows);
  g_weight_bytes.fetch_add(n * dtype_row_bytes(w.dtype, w.cols), std::memory_order_relaxed);
  SHOAL_DISPATCH_CUDA(embedding, out, ids, w, n, ctx);
}

void silu_mul(float* out, const float* gate, const float* up, int64_t n, int64_t d, const Context& ctx) {
  SHOAL_DISPATCH_CUDA(silu_mul, out, gate, up, n, d, ctx);
}

void rope(const RopeParams& p, const Context& ctx) {
  SHOAL_CHECK(p.rope_dim % 2 == 0);
  SHOAL_DISPATCH_CUDA(rope, p, ctx);
}

void attention(const AttentionParams& p, const Context& ctx) {
  SHOAL_CHECK(p.n_kv >= 0 && p.n_q >= 0 && p.dv > 0);
  for (int64_t i = 0; i < p.n_q; ++i) SHOAL_CHECK(p.q_pos[i] >= 0);
  SHOAL_CHECK(p.kv_dtype == DType::kF32 || p.kv_dtype == DType::kBF16 ||
              (p.kv_dtype == DType::kF8E4M3 && p.kv_scales != nullptr));
  SHOAL_CHECK(p.kv_blocks == nullptr || p.kv_block_tokens > 0);
  SHOAL_DISPATCH(attention, p, ctx);
}

void route(const RouteParams& p, const Context& ctx) {
  SHOAL_CHECK(p.n_groups > 0 && p.n_experts % p.n_groups == 0);
  SHOAL_CHECK_LE(p.topk_groups, p.n_groups);
  SHOAL_CHECK_LE(p.topk, p.n_experts);
  SHOAL_DISPATCH(route, p, ctx);
}

}  // namespace shoal::kernels

namespace shoal::kernels {
#ifdef SHOAL_HAVE_CUDA
bool cuda_built() { return true; }
int cuda_device_count() { return cuda::device_count(); }
#else
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
#endif
}  // namespace shoal::kernels
