// The small ops on the GPU: linear_t, embedding, rms_norm, silu_mul and rope (kernels/kernels.h semantics).
// linear_t and rope compute exactly the CPU's operations in the CPU's order, so their results
// are the CPU's bits; rms_norm sums its squares in double as the CPU does, in a fixed tree instead
// of a line; silu_mul uses CUDA's expf (within 2 ulp of glibc's). None depends on the batch.

#include "kernels/cuda/common.cuh"

namespace shoal::kernels::cuda {
namespace {

// The stored value of element (row, col) of the tensor as float32: dequantize_row's value (FP8:
// the e4m3 value times its block's scale, rounded once).
struct Weights {
  const uint8_t* data;
  const float* scale;
  DType dtype;
  int64_t cols, block, scale_cols;
  __device__ __forceinline__ float at(int64_t row, int64_t col) const {
    const int64_t i = row * cols + col;
    switch (dtype) {
      case DType::kF32: return widen<DType::kF32>(data, i);
      case DType::kBF16: return widen<DType::kBF16>(data, i);
      case DType::kF16: return widen<DType::kF16>(data, i);
      default: return widen<DType::kF8E4M3>(data, i) * scale[(row / block) * scale_cols + col / block];
    }
  }
};

Weights weights_of(const Matrix& w) {
  return {static_cast<const uint8_t*>(w.data), w.scale_inv, w.dtype, w.cols, w.block, w.scale_cols()};
}

// out[t, c] = sum over rows r ascending of fma(w[row0 + r][c], x[t, r], acc), acc from +0: the
// CPU's order (one thread per column, up to 8 tokens per pass).
template <int TT>
__global__ void linear_t_kernel(float* out, const float* x, Weights w, int64_t row0, int64_t rows, int64_t n,
                                int64_t t0) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= w.cols) return;
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float wv = w.at(row0 + r, c);
#pragma unroll
    for (int t = 0; t < TT; ++t) acc[t] = __fmaf_rn(wv, __ldg(x + (t0 + t) * rows + r), acc[t]);
  }
#pragma unroll
  for (int t = 0; t < TT; ++t) out[(t0 + t) * w.cols + c] = acc[t];
}

// One block of 256 threads per token: squares summed in double, per thread over i = tid, tid +
// 256, ..., then a fixed tree over the 256 partial sums.
__global__ void rms_norm_kernel(float* out, const float* x, Weights w, int64_t d, float eps) {
  __shared__ double part[256];
  const int64_t t = blockIdx.x;
  const float* xt = x + t * d;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += 256) ss += double(xt[i]) * double(xt[i]);
  part[threadIdx.x] = ss;
  __syncthreads();
  for (int half = 128; half >= 1; half >>= 1) {
    if (int(threadIdx.x) < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  const float inv = float(1.0 / sqrt(part[0] / double(d) + double(eps)));
  for (int64_t i = threadIdx.x; i < d; i += 256) out[t * d + i] = xt[i] * inv * w.at(0, i);
}

__global__ void silu_mul_kernel(float* out, const float* gate, const float* up, int64_t total) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const float g = gate[i];
  out[i] = g / (1.0f + expf(-g)) * up[i];
}

// One thread per (token, head, pair): the angle a float32 product, its cosine and sine in double
// rounded to float and scaled, then the rotation as the CPU writes it (no fused operations).
__global__ void rope_kernel(RopeParams p, int64_t half) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= p.n * p.n_heads * half) return;
  const int64_t i = k % half, h = (k / half) % p.n_heads, t = k / (half * p.n_heads);
  const float angle = float(p.positions[t]) * p.inv_freq[i];
  const float c = float(cos(double(angle))) * p.attn_factor, s = float(sin(double(angle))) * p.attn_factor;
  const int64_t first = p.layout == RopeLayout::kInterleaved ? 2 : 1;
  const int64_t second = p.layout == RopeLayout::kInterleaved ? 1 : half;
  float* v = p.x + t * p.token_stride + h * p.head_stride;
  const float a = v[first * i], b = v[first * i + second];
  v[first * i] = a * c - b * s;
  v[first * i + second] = a * s + b * c;
}

// out[t, :] = row ids[t] of w, each value as dequantize_row gives it.
__global__ void embedding_kernel(float* out, const int32_t* ids, Weights w, int64_t row0, int64_t n) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n * w.cols) return;
  const int64_t t = k / w.cols, c = k % w.cols;
  out[k] = w.at(row0 + ids[t], c);
}

unsigned blocks_for(int64_t items, int threads) { return unsigned((items + threads - 1) / threads); }

}  // namespace

void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx) {
  require_dtype("linear_t", w.dtype);
  if (n == 0 || w.cols == 0) return;
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  const Weights wt = weights_of(w);
  const unsigned grid = blocks_for(w.cols, 256);
  for (int64_t t0 = 0; t0 < n;) {
    const int64_t left = n - t0;
    const int take = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    switch (take) {
      case 8: linear_t_kernel<8><<<grid, 256, 0, stream>>>(out, x, wt, w.row0, w.rows, n, t0); break;
      case 4: linear_t_kernel<4><<<grid, 256, 0, stream>>>(out, x, wt, w.row0, w.rows, n, t0); break;
      case 2: linear_t_kernel<2><<<grid, 256, 0, stream>>>(out, x, wt, w.row0, w.rows, n, t0); break;
      default: linear_t_kernel<1><<<grid, 256, 0, stream>>>(out, x, wt, w.row0, w.rows, n, t0); break;
    }
    check(cudaGetLastError(), "linear_t");
    t0 += take;
  }
}

void embedding(float* out, const int32_t* ids, const Matrix& w, int64_t n, const Context& ctx) {
  require_dtype("embedding", w.dtype);
  if (n == 0) return;
  // The ids come from the host (checked there against the table): copied into this thread's
  // device buffer, which grows as needed and stays for the next call.
  static thread_local int32_t* device_ids = nullptr;
  static thread_local int64_t capacity = 0;
  auto stream = static_cast<cudaStream_t>(ctx.stream);
  if (n > capacity) {
    check(cudaStreamSynchronize(stream), "embedding");  // the old buffer may still be read
    cudaFree(device_ids);
    check(cudaMalloc(&device_ids, size_t(n) * sizeof(int32_t)), "embedding");
    capacity = n;
  }
  check(cudaMemcpyAsync(device_ids, ids, size_t(n) * sizeof(int32_t), cudaMemcpyHostToDevice, stream), "embedding");
  embedding_kernel<<<blocks_for(n * w.cols, 256), 256, 0, stream>>>(out, device_ids, weights_of(w), w.row0, n);
  check(cudaGetLastError(), "embedding");
  check(cudaStreamSynchronize(stream), "embedding");  // ids may change once this returns
}

void rms_norm(float* out, const float* x, const Matrix& weight, int64_t n, float eps, const Context& ctx) {
  if (n == 0) return;
  rms_norm_kernel<<<unsigned(n), 256, 0, static_cast<cudaStream_t>(ctx.stream)>>>(out, x, weights_of(weight),
                                                                                   weight.cols, eps);
  check(cudaGetLastError(), "rms_norm");
}

void silu_mul(float* out, const float* gate, const float* up, int64_t n, int64_t d, const Context& ctx) {
  if (n * d == 0) return;
  silu_mul_kernel<<<blocks_for(n * d, 256), 256, 0, static_cast<cudaStream_t>(ctx.stream)>>>(out, gate, up, n * d);
  check(cudaGetLastError(), "silu_mul");
}

void rope(const RopeParams& p, const Context& ctx) {
  const int64_t half = p.rope_dim / 2, items = p.n * p.n_heads * half;
  if (items == 0) return;
  rope_kernel<<<blocks_for(items, 256), 256, 0, static_cast<cudaStream_t>(ctx.stream)>>>(p, half);
  check(cudaGetLastError(), "rope");
}

}  // namespace shoal::kernels::cuda
