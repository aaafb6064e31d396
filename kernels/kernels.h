// The kernel interface: every op has one signature on every backend (output first, then inputs,
// sizes, then the Context that names the backend and its stream). Activations are float32;
// weights are read in their stored dtype (F32, F16, BF16, or F8_E4M3 with 128x128 block scales).
// Entries validate their arguments once and dispatch on ctx.device (kernels/dispatch.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"

namespace shoal::kernels {

enum class Device { kCpu, kCuda };

struct Context {
  Device device = Device::kCpu;
  void* stream = nullptr;  // cudaStream_t on kCuda
};

// How linear treats a matrix of a ggml block type (GGUF): kExact dequantizes each weight exactly
// (ggml's reference values) against float32 activations; kFast quantizes the activations per
// block and takes integer dot products, as llama.cpp does (kernels/cpu/qlinear.h). Other dtypes
// are always exact.
enum class Numerics : uint8_t { kExact, kFast };

// A weight matrix [rows, cols], row-major, in its stored dtype. For F8_E4M3 the real value is
// e4m3(w[r][c]) * scale_inv[r / block][c / block], with scale_inv [ceil(R/block), ceil(C/block)]
// over the whole stored tensor of R rows. A view of rows [row0, row0 + rows) of that tensor keeps
// `data` and `scale_inv` at the tensor's start, so block indices stay those of the tensor.
// A 1-D weight (a norm) is a Matrix with rows == 1.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;
  const float* scale_inv = nullptr;  // F8_E4M3 only
  int64_t block = 128;               // F8_E4M3 only
  int64_t row0 = 0;                  // first row of this view within the stored tensor
  Numerics numerics = Numerics::kExact;

  Matrix slice_rows(int64_t first, int64_t n) const;
  int64_t scale_cols() const { return (cols + block - 1) / block; }
};

// Bytes of weights linear, linear_t and embedding have read in this process since it started:
// each call counts its view once (stored bytes, FP8 scales included), as decode streams them.
// shoal bench divides the difference over decode steps by the steps for its roofline.
int64_t weight_bytes_read();

// Writes row r of the view as float32: out[cols].
void dequantize_row(float* out, const Matrix& w, int64_t r);

// out[n, w.rows] = x[n, w.cols] · wᵀ          (nn.Linear without bias)
void linear(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx);

// out[n, w.cols] = x[n, w.rows] · w           (used by MLA's absorbed attention)
void linear_t(float* out, const float* x, const Matrix& w, int64_t n, const Context& ctx);

// out[n, dim] = x / sqrt(mean(x²) + eps) * weight; weight is a Matrix [1, dim].
void rms_norm(float* out, const float* x, const Matrix& weight, int64_t n, float eps, const Context& ctx);

// out[n, w.cols] = rows ids[n] of the table w.
// On kCuda, ids alone stays in host memory (kernels/cuda/cuda.h).
void embedding(float* out, const int32_t* ids, const Matrix& w, int64_t n, const Context& ctx);

// out[n, d] = silu(gate[n, d]) * up[n, d]
void silu_mul(float* out, const float* gate, const float* up, int64_t n, int64_t d, const Context& ctx);

// Rotary embedding on interleaved pairs, in place: for each token t and head h, the pairs
// (x[t, h, 2i], x[t, h, 2i+1]) of the first rope_dim values at x + t*token_stride + h*head_stride
// are rotated by the angle positions[t] * inv_freq[i] (DeepSeek model.py's complex view).
// Which elements of a head rotate together: DeepSeek's model.py pairs neighbours (2i, 2i + 1);
// Hugging Face's rotate_half (Qwen2, Llama; llama.cpp's NEOX) pairs i with i + rope_dim / 2.
enum class RopeLayout { kInterleaved, kHalves };
struct RopeParams {
  float* x;
  const int32_t* positions;  // [n]
  const float* inv_freq;     // [rope_dim / 2]
  int64_t n, n_heads, rope_dim, token_stride, head_stride;
  float attn_factor = 1.0f;  // cos/sin multiplier (HF's YaRN mscale / mscale_all_dim)
  RopeLayout layout = RopeLayout::kInterleaved;
};
void rope(const RopeParams& p, const Context& ctx);

// Causal attention of one sequence: queries at positions q_pos[i] attend to keys [0, q_pos[i]].
//   out[i, h, :] = softmax_t(scale * q[i, h, :] · k[t, h, :]) · v[t, h, :]
// Shapes via strides so the same op serves MLA naive (per-head keys) and absorbed (shared latent
// keys: k_head_stride = v_head_stride = 0). Keys are split in two parts that are both dotted
// with their half of the query: (q_a·k_a + q_b·k_b), which is how MLA keeps nope and rope apart.
//
// The key and value operands may be a KV cache's rows as they are stored: in bf16 (kv_dtype;
// widened exactly as they are read) and paged, key t then in block kv_blocks[t / kv_block_tokens]
// at row t % kv_block_tokens, an operand's block b starting kv_block_stride * b elements past its
// pointer. Neither changes an operation: a paged bf16 cache gives the bits of a contiguous float
// one holding the same values. In fp8 (e4m3) each row of each part has a float32 scale: the
// scales of row t are kv_scales[2t], [2t + 1] (paged: kv_scales[b * kv_scale_block_stride +
// 2 (t % kv_block_tokens)] ...), the operand reading part k_a_part, k_b_part or v_part of them.
struct AttentionParams {
  float* out;           // [n_q, n_heads, dv] contiguous
  const float* q_a;     // [n_q, n_heads, da] with q_token_stride / q_head_stride
  const float* q_b;     // [n_q, n_heads, db] with q_b_token_stride / q_b_head_stride
  const void* k_a;      // [n_kv, (n_heads,) da]   elements of kv_dtype
  const void* k_b;      // [n_kv, (n_heads,) db]
  const void* v;        // [n_kv, (n_heads,) dv]
  const int32_t* q_pos; // [n_q] absolute positions; key t is visible when t <= q_pos
  int64_t n_q, n_kv, n_heads, da, db, dv;
  int64_t q_token_stride, q_head_stride, q_b_token_stride, q_b_head_stride;
  int64_t k_a_token_stride, k_a_head_stride, k_b_token_stride, k_b_head_stride;
  int64_t v_token_stride, v_head_stride;
  float scale;
  int64_t kv_group = 1;  // query heads per key/value head: head h reads k/v head h / kv_group (GQA)
  DType kv_dtype = DType::kF32;      // of k_a, k_b and v: kF32, kBF16 or kF8E4M3 (with kv_scales)
  const int32_t* kv_blocks = nullptr;  // paged operands: the block of each kv_block_tokens keys
  int64_t kv_block_tokens = 0, kv_block_stride = 0;
  const float* kv_scales = nullptr;    // fp8: two per row
  int64_t kv_scale_block_stride = 0;
  int8_t k_a_part = 0, k_b_part = 1, v_part = 0;  // which of a row's two scales each operand takes
};
void attention(const AttentionParams& p, const Context& ctx);

// Router: logits[n, n_experts] -> top-k expert indices and weights per token, DeepSeek semantics.
enum class Scoring { kSoftmax, kSigmoid };
enum class GroupScore { kNone, kMax, kTop2Sum };
struct RouteParams {
  int32_t* indices;        // [n, topk]
  float* weights;          // [n, topk]
  const float* logits;     // [n, n_experts]
  const float* bias;       // [n_experts] added for selection only; nullptr if none
  int64_t n, n_experts, topk, n_groups, topk_groups;
  Scoring scoring;
  GroupScore group_score;  // kNone: no group limiting
  bool normalize;          // weights /= sum(weights)
  float scale;             // weights *= scale (after normalising)
};
void route(const RouteParams& p, const Context& ctx);

}  // namespace shoal::kernels

namespace shoal::kernels {
// Backends compiled into this binary and the CUDA devices visible (0 without SHOAL_CUDA).
bool cuda_built();
int cuda_device_count();
}  // namespace shoal::kernels
