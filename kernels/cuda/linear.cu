// linear on the GPU for F32, F16, BF16 and F8_E4M3 with block scales: a weight-streaming kernel
// (each warp reads its rows once per pass and applies them to up to 8 tokens held in
// registers), the decode path; prefill runs the same kernel over token chunks until a tiled
// tensor-core path that keeps the same order lands (docs/cuda.md).
//
// The canonical order of out[t][r] (docs/cuda.md, "The canonical order"): the row is read in
// chunks of 16 bytes (4 F32, 8 F16/BF16, 16 FP8 values; a last partial chunk holds the rest);
// chunk j belongs to lane j % 32, which adds its chunks in increasing j, each chunk's values in
// increasing column, one fused multiply-add per value into a float starting at +0; the 32 lane
// sums are then added by the butterfly s += shfl_xor(s, m) for m = 16, 8, 4, 2, 1. Nothing in it
// depends on n, on which tokens share a pass, on the grid or on the alignment of x.
#include <cstdio>

#include "kernels/cuda/common.cuh"

namespace shoal::kernels::cuda {
namespace {

constexpr int kWarps = 8;        // rows per block of threads, one warp each

template <DType T>
inline constexpr int kValueBytes = T == DType::kF32 ? 4 : T == DType::kF8E4M3 ? 1 : 2;

struct Args {
  float* out;
  const float* x;
  const uint8_t* w;       // the tensor's first row
  const float* scale;     // F8_E4M3: [ceil(R / block), ceil(cols / block)] of the tensor
  int64_t row0, rows, cols, stride, block, scale_cols, n;
  bool aligned;           // rows start on 16 bytes: chunks load as one 16-byte word
};

// One pass: rows of this block's warps against tokens [t0, t0 + T).
template <DType T, int TT>
__global__ void __launch_bounds__(kWarps * 32) linear_kernel(Args a, int64_t t0) {
  constexpr int V = 16 / kValueBytes<T>;  // values per chunk
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= a.rows) return;
  const int tokens = int(min(int64_t(TT), a.n - t0));
  const uint8_t* row = a.w + (a.row0 + r) * a.stride;
  const float* srow = T == DType::kF8E4M3 ? a.scale + ((a.row0 + r) / a.block) * a.scale_cols : nullptr;
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.0f;
  const int64_t chunks = (a.cols + V - 1) / V;
  for (int64_t j = lane; j < chunks; j += 32) {
    const int64_t c0 = j * V;
    const int m = int(min(int64_t(V), a.cols - c0));
    alignas(16) uint8_t buf[16];
    if (a.aligned && m == V) {
      *reinterpret_cast<uint4*>(buf) = __ldg(reinterpret_cast<const uint4*>(row + c0 * kValueBytes<T>));
    } else {  // an unaligned row or the last partial chunk: byte by byte, zeros past the row
      for (int b = 0; b < 16; ++b) buf[b] = b < m * kValueBytes<T> ? row[c0 * kValueBytes<T> + b] : 0;
    }
    const float s = T == DType::kF8E4M3 ? srow[c0 / a.block] : 1.0f;  // a chunk never straddles a block
    float wv[V];
#pragma unroll
    for (int i = 0; i < V; ++i) wv[i] = T == DType::kF8E4M3 ? widen<T>(buf, i) * s : widen<T>(buf, i);
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      if (t >= tokens) break;
      const float* xt = a.x + (t0 + t) * a.cols + c0;
      float sum = acc[t];
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (i < m) sum = __fmaf_rn(wv[i], __ldg(xt + i), sum);
      acc[t] = sum;
    }
  }
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t >= tokens) break;
    float s = acc[t];
#pragma unroll
    for (int mask = 16; mask >= 1; mask >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, mask);
    if (lane == 0) a.out[(t0 + t) * a.rows + r] = s;
  }
}

template <DType T>
void run(const Args& a, cudaStream_t stream) {
  const dim3 grid(unsigned((a.rows + kWarps - 1) / kWarps)), threads(kWarps * 32);
  for (int64_t t0 = 0; t0 < a.n;) {  // passes of 8 tokens, then 4, 2, 1 for the rest
    const int64_t left = a.n - t0;
    const int take = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    switch (take) {
      case 8: linear_kernel<T, 8><<<grid, threads, 0, stream>>>(a, t0); break;
      case 4: linear_kernel<T, 4><<<grid, threads, 0, stream>>>(a, t0); break;
      case 2: linear_kernel<T, 2><<<grid, threads, 0, stream>>>(a, t0); break;
      default: linear_kernel<T, 1><<<grid, threads, 0, stream>>>(a, t0); break;
    }
    check(cudaGetLastError(), "linear");
    t0 += take;
  }
}

}  // namespace

bool linear_supports(DType d) {
  return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF8E4M3;
}

void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx) {
  require_dtype("linear", w.dtype);
  if (n == 0 || w.rows == 0) return;
  Args a;
  a.out = out;
  a.x = x;
  a.w = static_cast<const uint8_t*>(w.data);
  a.scale = w.scale_inv;
  a.row0 = w.row0;
  a.rows = w.rows;
  a.cols = w.cols;
  a.stride = dtype_row_bytes(w.dtype, w.cols);
  a.block = w.block;
  a.scale_cols = w.scale_cols();
  a.n = n;
  a.aligned = reinterpret_cast<uintptr_t>(w.data) % 16 == 0 && a.stride % 16 == 0;
  if (w.dtype == DType::kF8E4M3 && w.block % 16 != 0) {
    std::fprintf(stderr, "shoal: FP8 block %lld is not a multiple of 16 columns\n", (long long)w.block);
    std::abort();
  }
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  switch (w.dtype) {
    case DType::kF32: return run<DType::kF32>(a, stream);
    case DType::kF16: return run<DType::kF16>(a, stream);
    case DType::kBF16: return run<DType::kBF16>(a, stream);
    default: return run<DType::kF8E4M3>(a, stream);
  }
}

}  // namespace shoal::kernels::cuda
