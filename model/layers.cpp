#include "model/layers.h"

#include <omp.h>

#include <algorithm>
#include <memory>

#include "common/check.h"
#include "model/expert_combine.h"

namespace shoal {
namespace {

using kernels::Matrix;

// out += scale * extra, element by element.
void add_scaled(float* out, const float* extra, float scale, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] += scale * extra[i];
}

// The rows (ascending) of each adapter with a term in l, in adapter id order.
struct AdapterRows {
  const LoraTerm* term;
  std::vector<int64_t> rows;
};
std::vector<AdapterRows> adapter_rows(const LoraTerms& l, RowAdapters rows, int64_t n) {
  std::vector<AdapterRows> groups;
  if (rows.empty() || n == 0 || !l.any()) return groups;
  SHOAL_CHECK_EQ(int64_t(rows.size()), n);
  for (int32_t id = 1; id < int32_t(l.by_id.size()); ++id) {
    const LoraTerm& t = l.by_id[size_t(id)];
    if (!t.active()) continue;
    AdapterRows g{&t, {}};
    for (int64_t r = 0; r < n; ++r)
      if (rows[size_t(r)] == id) g.rows.push_back(r);
    if (!g.rows.empty()) groups.push_back(std::move(g));
  }
  return groups;
}

// Copies a strided [n, width] block out of rows of `stride` floats starting at `offset`.
void gather_cols(float* dst, const float* src, int64_t n, int64_t stride, int64_t offset, int64_t width) {
  for (int64_t t = 0; t < n; ++t) std::copy_n(src + t * stride + offset, width, dst + t * width);
}
void scatter_cols(float* dst, const float* src, int64_t n, int64_t stride, int64_t offset, int64_t width) {
  for (int64_t t = 0; t < n; ++t) std::copy_n(src + t * width, width, dst + t * stride + offset);
}

// MLA's up-projections of head h, each row with its adapter's kv_b_proj term (which is in
// kv_b_proj's layout also where the base keeps kv_b split). q_nope · W_uk (into the latent
// space): out[m, C].
LoraTerms lora_uk(const AttnWeights& w, int64_t h, const ModelConfig& c) {
  return w.lora.wkv_b.slice_rows(h * (c.qk_nope_head_dim + c.v_head_dim), c.qk_nope_head_dim);
}
void project_q_nope(float* out, const float* q_nope, RowAdapters rows, int64_t m, const AttnWeights& w, int64_t h,
                    const ModelConfig& c, const kernels::Context& ctx) {
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, C = c.kv_lora_rank;
  if (c.mla_split_kv_b) {
    kernels::linear(out, q_nope, w.wk_b.slice_rows(h * C, C), m, ctx);
    return add_lora_t(out, q_nope, lora_uk(w, h, c), rows, m, ctx);
  }
  adapted_linear_t(out, q_nope, w.wkv_b.slice_rows(h * (dn + dv), dn), lora_uk(w, h, c), rows, m, ctx);
}
// W_uk · latent (the keys' nope part): out[m, dn].
void expand_k_nope(float* out, const float* latent, RowAdapters rows, int64_t m, const AttnWeights& w, int64_t h,
                   const ModelConfig& c, const kernels::Context& ctx) {
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, C = c.kv_lora_rank;
  if (c.mla_split_kv_b) {
    kernels::linear_t(out, latent, w.wk_b.slice_rows(h * C, C), m, ctx);
    return add_lora(out, latent, lora_uk(w, h, c), rows, m, ctx);
  }
  adapted_linear(out, latent, w.wkv_b.slice_rows(h * (dn + dv), dn), lora_uk(w, h, c), rows, m, ctx);
}
// W_uv of head h [dv, C], and its LoRA terms.
Matrix w_uv(const AttnWeights& w, int64_t h, const ModelConfig& c) {
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim;
  return c.mla_split_kv_b ? w.wv_b.slice_rows(h * dv, dv) : w.wkv_b.slice_rows(h * (dn + dv) + dn, dv);
}
LoraTerms lora_uv(const AttnWeights& w, int64_t h, const ModelConfig& c) {
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim;
  return w.lora.wkv_b.slice_rows(h * (dn + dv) + dn, dv);
}

// Naive attention of one sequence: expand the latents of positions [0, end) with kv_b_proj into
// per-head k_nope and v, then attend with q = [q_nope, q_pe].
void attend_naive(float* o, const float* q, const AttnWeights& w, const SeqRange& s, const int32_t* pos,
                  const SeqKv& kv, const LayerContext& lc) {
  const ModelConfig& c = *lc.config;
  const int64_t H = c.n_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  const int64_t end = pos[s.count - 1] + 1, kvw = dn + dv, C = c.kv_lora_rank;
  // The cached rows as float32, contiguous: the expansion's input (its product costs C * H *
  // (dn + dv) per row, against C for this copy) and the roped keys beside it.
  // Every element of these is written before it is read: no zeroing pass over them (at long
  // contexts kv_full is tens of MB per chunk and layer).
  auto latent = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(end * C));
  auto k_pe = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(end * dr));
  kv.load_kv(latent.get(), end, C);
  kv.load_pe(k_pe.get(), end, dr);
  auto kv_full = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(end * H * kvw));  // [end, H, dn + dv]
  const std::vector<int32_t> rows(static_cast<size_t>(s.adapter != 0 ? end : 0), s.adapter);  // every cached row
  if (!c.mla_split_kv_b) {
    adapted_linear(kv_full.get(), latent.get(), w.wkv_b, w.lora.wkv_b, rows, end, lc.kernels);
  } else {
    auto part = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(end * std::max(dn, dv)));
    for (int64_t h = 0; h < H; ++h) {
      expand_k_nope(part.get(), latent.get(), rows, end, w, h, c, lc.kernels);
      scatter_cols(kv_full.get(), part.get(), end, H * kvw, h * kvw, dn);
      kernels::linear(part.get(), latent.get(), w_uv(w, h, c), end, lc.kernels);
      add_lora(part.get(), latent.get(), lora_uv(w, h, c), rows, end, lc.kernels);
      scatter_cols(kv_full.get(), part.get(), end, H * kvw, h * kvw + dn, dv);
    }
  }
  kernels::AttentionParams p{};
  p.out = o;
  p.q_a = q; p.q_b = q + dn;
  p.q_token_stride = p.q_b_token_stride = H * (dn + dr);
  p.q_head_stride = p.q_b_head_stride = dn + dr;
  p.k_a = kv_full.get(); p.k_a_token_stride = H * kvw; p.k_a_head_stride = kvw;
  p.k_b = k_pe.get(); p.k_b_token_stride = dr; p.k_b_head_stride = 0;
  p.v = kv_full.get() + dn; p.v_token_stride = H * kvw; p.v_head_stride = kvw;
  p.q_pos = pos;
  p.n_q = s.count; p.n_kv = end; p.n_heads = H; p.da = dn; p.db = dr; p.dv = dv;
  p.scale = lc.rope->softmax_scale;
  kernels::attention(p, lc.kernels);
}

// Absorbed attention of the sequences that use it, whose tokens are rows `rows` of the batch:
// q_lat = q_nope · W_uk per head (into the latent space) for all those tokens at once, scores
// against each sequence's cached latents directly, context in latent space, then · W_uvᵀ per
// head for all tokens at once. Each projection reads its slice of kv_b_proj once per batch,
// not once per sequence; every token's result is the same as alone (linear is batch-invariant).
void attend_absorbed(float* o, const float* q, const AttnWeights& w, const Batch& batch,
                     const std::vector<size_t>& seqs, const std::vector<SeqKv>& kv, const LayerContext& lc) {
  const ModelConfig& c = *lc.config;
  const int64_t H = c.n_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  const int64_t C = c.kv_lora_rank, qw = dn + dr;
  std::vector<int64_t> rows;  // batch token of each absorbed row
  std::vector<int32_t> adapters;  // and its adapter id (empty: all the base model)
  for (size_t si : seqs)
    for (int64_t t = batch.seqs[si].begin; t < batch.seqs[si].begin + batch.seqs[si].count; ++t) {
      rows.push_back(t);
      adapters.push_back(batch.seqs[si].adapter);
    }
  if (std::all_of(adapters.begin(), adapters.end(), [](int32_t a) { return a == 0; })) adapters.clear();
  const int64_t m = int64_t(rows.size());
  std::vector<float> q_lat(static_cast<size_t>(m * H * C)), ctx_lat(static_cast<size_t>(m * H * C));  // [m, H, C]
  // Heads in parallel (each head's small products then run on one thread, without a fork/join
  // of their own); every head writes its own columns.
#pragma omp parallel
  {
    std::vector<float> a(static_cast<size_t>(m * std::max(dn, C))), b(static_cast<size_t>(m * std::max(dv, C)));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < m; ++i) std::copy_n(q + rows[size_t(i)] * H * qw + h * qw, dn, a.data() + i * dn);
      project_q_nope(b.data(), a.data(), adapters, m, w, h, c, lc.kernels);
      scatter_cols(q_lat.data(), b.data(), m, H * C, h * C, C);
    }
  }
  const int32_t* pos = batch.positions.data();
  int64_t first = 0;  // first absorbed row of the sequence
  for (size_t si : seqs) {
    const SeqRange& s = batch.seqs[si];
    kernels::AttentionParams p{};
    p.out = ctx_lat.data() + first * H * C;
    p.q_a = q_lat.data() + first * H * C; p.q_token_stride = H * C; p.q_head_stride = C;
    p.q_b = q + s.begin * H * qw + dn; p.q_b_token_stride = H * qw; p.q_b_head_stride = qw;
    p.k_a = kv[si].kv; p.k_a_token_stride = C; p.k_a_head_stride = 0;
    p.k_b = kv[si].pe; p.k_b_token_stride = dr; p.k_b_head_stride = 0;
    p.v = kv[si].kv; p.v_token_stride = C; p.v_head_stride = 0;
    kv[si].describe(p);  // the cache's blocks and dtype, read where they are
    p.q_pos = pos + s.begin;
    p.n_q = s.count; p.n_kv = pos[s.begin + s.count - 1] + 1; p.n_heads = H; p.da = C; p.db = dr; p.dv = C;
    p.scale = lc.rope->softmax_scale;
    kernels::attention(p, lc.kernels);
    first += s.count;
  }
#pragma omp parallel
  {
    std::vector<float> a(static_cast<size_t>(m * C)), b(static_cast<size_t>(m * dv));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      gather_cols(a.data(), ctx_lat.data(), m, H * C, h * C, C);
      adapted_linear(b.data(), a.data(), w_uv(w, h, c), lora_uv(w, h, c), adapters, m, lc.kernels);
      for (int64_t i = 0; i < m; ++i) std::copy_n(b.data() + i * dv, dv, o + rows[size_t(i)] * H * dv + h * dv);
    }
  }
}

// Naive costs end*(dn+dv)*C per head to expand the cache, absorbed costs about m*end*(2C-dn)
// more in scores and context: expanding pays off once a sequence brings this many new tokens.

}  // namespace

bool use_naive(const ModelConfig& c, int64_t new_tokens, AttnImpl impl) {
  if (impl != AttnImpl::kAuto) return impl == AttnImpl::kNaive;
  const int64_t C = c.kv_lora_rank;
  return new_tokens * (2 * C - c.qk_nope_head_dim) > (c.qk_nope_head_dim + c.v_head_dim) * C;
}

namespace {

// out[rows of adapter k] += scale_k * B_k (A_k x) for each adapter k with a term in l, or, with
// `transposed`, scale_k * ((x B_k) A_k) (the absorbed W_UK side).
void add_lora_terms(float* out, const float* x, const LoraTerms& l, RowAdapters rows, int64_t n, bool transposed,
                    const kernels::Context& ctx) {
  const std::vector<AdapterRows> groups = adapter_rows(l, rows, n);
  // Outside a parallel region (attention, shared experts) the adapters share the threads; the
  // products are too small to split. A row's sums are the same either way.
#pragma omp parallel for schedule(dynamic, 1) if (groups.size() > 1 && !omp_in_parallel())
  for (size_t g = 0; g < groups.size(); ++g) {
    const LoraTerm& t = *groups[g].term;
    const std::vector<int64_t>& mine = groups[g].rows;
    // Each thread's scratch, grown as needed: decode calls this for every adapted weight of
    // every expert a step runs.
    static thread_local std::vector<float> xs, mid, y;
    const int64_t m = int64_t(mine.size()), rank = t.a.rows;
    const int64_t in = transposed ? t.b.rows : t.a.cols, width = transposed ? t.a.cols : t.b.rows;
    const float* xm = x;
    if (m != n) {
      xs.resize(static_cast<size_t>(m * in));
      for (int64_t i = 0; i < m; ++i) std::copy_n(x + mine[size_t(i)] * in, in, xs.data() + i * in);
      xm = xs.data();
    }
    mid.resize(static_cast<size_t>(m * rank));
    y.resize(static_cast<size_t>(m * width));
    if (transposed) {
      kernels::linear_t(mid.data(), xm, t.b, m, ctx);
      kernels::linear_t(y.data(), mid.data(), t.a, m, ctx);
    } else {
      kernels::linear(mid.data(), xm, t.a, m, ctx);
      if (t.bt.data) kernels::linear_t(y.data(), mid.data(), t.bt, m, ctx);
      else kernels::linear(y.data(), mid.data(), t.b, m, ctx);
    }
    for (int64_t i = 0; i < m; ++i) add_scaled(out + mine[size_t(i)] * width, y.data() + i * width, t.scale, width);
  }
}

}  // namespace

void add_lora(float* out, const float* x, const LoraTerms& l, RowAdapters rows, int64_t n, const kernels::Context& ctx) {
  add_lora_terms(out, x, l, rows, n, false, ctx);
}

void add_lora_t(float* out, const float* x, const LoraTerms& l, RowAdapters rows, int64_t n,
                const kernels::Context& ctx) {
  add_lora_terms(out, x, l, rows, n, true, ctx);
}

void adapted_linear(float* out, const float* x, const Matrix& w, const LoraTerms& l, RowAdapters rows, int64_t n,
                    const kernels::Context& ctx) {
  kernels::linear(out, x, w, n, ctx);
  add_lora(out, x, l, rows, n, ctx);
}

void adapted_linear_t(float* out, const float* x, const Matrix& w, const LoraTerms& l, RowAdapters rows, int64_t n,
                      const kernels::Context& ctx) {
  kernels::linear_t(out, x, w, n, ctx);
  add_lora_t(out, x, l, rows, n, ctx);
}

void mla_forward(float* out, const float* h, const AttnWeights& w, const Batch& batch,
                 const std::vector<SeqKv>& kv, const LayerContext& lc) {
  const ModelConfig& c = *lc.config;
  const int64_t n = batch.n_tokens(), H = c.n_heads, C = c.kv_lora_rank, dr = c.qk_rope_head_dim;
  const int64_t qw = c.qk_head_dim();
  const auto& ctx = lc.kernels;
  SHOAL_CHECK_EQ(kv.size(), batch.seqs.size());
  const std::vector<int32_t> rows = batch.row_adapters();

  std::vector<float> q(static_cast<size_t>(n * H * qw));  // [n, H, dn + dr]
  if (c.q_lora_rank > 0) {
    std::vector<float> qa(static_cast<size_t>(n * c.q_lora_rank));
    adapted_linear(qa.data(), h, w.wq_a, w.lora.wq_a, rows, n, ctx);
    kernels::rms_norm(qa.data(), qa.data(), w.q_norm, n, float(c.rms_norm_eps), ctx);
    adapted_linear(q.data(), qa.data(), w.wq_b, w.lora.wq_b, rows, n, ctx);
  } else {
    adapted_linear(q.data(), h, w.wq, w.lora.wq, rows, n, ctx);
  }
  std::vector<float> kv_a(static_cast<size_t>(n * (C + dr)));  // [n, C + dr]: latent, then k_pe
  adapted_linear(kv_a.data(), h, w.wkv_a, w.lora.wkv_a, rows, n, ctx);
  const int32_t* pos = batch.positions.data();
  kernels::rope({q.data() + c.qk_nope_head_dim, pos, lc.rope->inv_freq.data(), n, H, dr, H * qw, qw,
                 lc.rope->attn_factor}, ctx);
  kernels::rope({kv_a.data() + C, pos, lc.rope->inv_freq.data(), n, 1, dr, C + dr, 0, lc.rope->attn_factor}, ctx);
  std::vector<float> latent(static_cast<size_t>(n * C));
  gather_cols(latent.data(), kv_a.data(), n, C + dr, 0, C);
  kernels::rms_norm(latent.data(), latent.data(), w.kv_norm, n, float(c.rms_norm_eps), ctx);

  std::vector<float> o(static_cast<size_t>(n * H * c.v_head_dim));  // [n, H, dv]
  std::vector<size_t> absorbed;
  for (size_t si = 0; si < batch.seqs.size(); ++si) {
    const SeqRange& s = batch.seqs[si];
    for (int64_t t = s.begin; t < s.begin + s.count; ++t)
      kv[si].store(pos[t], latent.data() + t * C, C, kv_a.data() + t * (C + dr) + C, dr);
    if (use_naive(c, s.count, lc.attn_impl != AttnImpl::kAuto ? lc.attn_impl : s.attn)) {
      attend_naive(o.data() + s.begin * H * c.v_head_dim, q.data() + s.begin * H * qw, w, s, pos + s.begin, kv[si], lc);
    } else {
      absorbed.push_back(si);
    }
  }
  if (!absorbed.empty()) attend_absorbed(o.data(), q.data(), w, batch, absorbed, kv, lc);
  adapted_linear(out, o.data(), w.wo, w.lora.wo, rows, n, ctx);
}

void mlp_forward(float* out, const float* h, const MlpWeights& w, RowAdapters rows, int64_t n,
                 const kernels::Context& ctx) {
  const int64_t inter = w.gate.rows;
  std::vector<float> g(static_cast<size_t>(n * inter)), u(static_cast<size_t>(n * inter));
  adapted_linear(g.data(), h, w.gate, w.lora.gate, rows, n, ctx);
  adapted_linear(u.data(), h, w.up, w.lora.up, rows, n, ctx);
  kernels::silu_mul(g.data(), g.data(), u.data(), n, inter, ctx);
  adapted_linear(out, g.data(), w.down, w.lora.down, rows, n, ctx);
}

void gate_forward(std::vector<int32_t>& indices, std::vector<float>& weights, const float* h,
                  const LayerWeights& w, int64_t n, const LayerContext& lc) {
  const ModelConfig& c = *lc.config;
  const int64_t E = c.n_routed_experts, k = c.n_activated_experts;
  std::vector<float> logits(static_cast<size_t>(n * E));
  kernels::linear(logits.data(), h, w.gate, n, lc.kernels);
  indices.resize(static_cast<size_t>(n * k));
  weights.resize(static_cast<size_t>(n * k));
  kernels::RouteParams p{};
  p.indices = indices.data();
  p.weights = weights.data();
  p.logits = logits.data();
  p.bias = w.gate_bias.empty() ? nullptr : w.gate_bias.data();
  p.n = n; p.n_experts = E; p.topk = k;
  p.n_groups = c.n_expert_groups; p.topk_groups = c.n_limited_groups;
  p.scoring = c.score_func == ScoringFunc::kSigmoid ? kernels::Scoring::kSigmoid : kernels::Scoring::kSoftmax;
  p.group_score = c.topk_method == TopkMethod::kNoauxTc              ? kernels::GroupScore::kTop2Sum
                  : c.topk_method == TopkMethod::kGroupLimitedGreedy ? kernels::GroupScore::kMax
                                                                     : kernels::GroupScore::kNone;
  // V3 normalises (when asked) and then always scales; V2 scales only when it does not normalise.
  p.normalize = c.norm_topk_prob && k > 1;
  const bool scale = c.model_type == ModelType::kDeepseekV3 || !p.normalize;
  p.scale = scale ? float(c.route_scale) : 1.0f;
  kernels::route(p, lc.kernels);
}

void run_expert_pairs(float* y, const float* x, RowAdapters x_adapters, std::span<const int32_t> pair_row,
                      std::span<const int32_t> pair_expert, const std::vector<std::optional<MlpWeights>>& experts,
                      const LayerContext& lc) {
  const int64_t dim = lc.config->dim;
  SHOAL_CHECK_EQ(pair_row.size(), pair_expert.size());
  std::vector<int32_t> order(pair_row.size());  // pairs by expert, then in given order
  for (size_t p = 0; p < order.size(); ++p) order[p] = int32_t(p);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return pair_expert[size_t(a)] < pair_expert[size_t(b)]; });
  std::vector<size_t> starts;  // first pair (in `order`) of each expert's group, then the end
  for (size_t i = 0; i < order.size(); ++i)
    if (i == 0 || pair_expert[size_t(order[i])] != pair_expert[size_t(order[i - 1])]) starts.push_back(i);
  starts.push_back(order.size());
  const int64_t groups = int64_t(starts.size()) - 1;
  for (int64_t g = 0; g < groups; ++g) {
    const int32_t e = pair_expert[size_t(order[starts[size_t(g)]])];
    SHOAL_CHECK(e >= 0 && size_t(e) < experts.size() && experts[size_t(e)].has_value());
  }
  // Experts spread over the threads (each expert's products then run on one thread and stream
  // whole matrices, with no fork/join of their own) when there are enough of them to share;
  // otherwise one after another, each split over the threads. A row's result is the same
  // either way: the kernels do not depend on threading.
  const bool spread = groups >= 2 * int64_t(omp_get_max_threads()) ||
                      (groups >= int64_t(omp_get_max_threads()) && int64_t(order.size()) <= 4 * groups);
#pragma omp parallel if (spread && groups > 1)
  {
    std::vector<float> xs, ys;
    std::vector<int32_t> as;
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < groups; ++g) {
      const size_t first = starts[size_t(g)], last = starts[size_t(g + 1)];
      const int32_t e = pair_expert[size_t(order[first])];
      const int64_t m = int64_t(last - first);
      xs.resize(static_cast<size_t>(m * dim));
      ys.resize(static_cast<size_t>(m * dim));
      as.assign(x_adapters.empty() ? 0 : size_t(m), 0);
      for (int64_t r = 0; r < m; ++r) {
        const int32_t row = pair_row[size_t(order[first + size_t(r)])];
        std::copy_n(x + int64_t(row) * dim, dim, xs.data() + r * dim);
        if (!as.empty()) as[size_t(r)] = x_adapters[size_t(row)];
      }
      mlp_forward(ys.data(), xs.data(), *experts[size_t(e)], as, m, lc.kernels);
      for (int64_t r = 0; r < m; ++r)
        std::copy_n(ys.data() + r * dim, dim, y + int64_t(order[first + size_t(r)]) * dim);
    }
  }
}

void combine_experts(float* y, const float* pair_out, const int32_t* idx, const float* weight, int64_t n,
                     int64_t k, int64_t dim, int64_t n_experts) {
  const CombineNode root{0, combine_width(n_experts)};
  std::vector<int32_t> slots(static_cast<size_t>(k)), ids(static_cast<size_t>(k));
  std::vector<const float*> outputs(static_cast<size_t>(k));
  std::vector<float> weights(static_cast<size_t>(k));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) slots[size_t(j)] = int32_t(t * k + j);
    std::sort(slots.begin(), slots.end(), [&](int32_t a, int32_t b) { return idx[a] < idx[b]; });
    for (size_t j = 0; j < slots.size(); ++j) {
      ids[j] = idx[slots[j]];
      outputs[j] = pair_out + int64_t(slots[j]) * dim;
      weights[j] = weight[slots[j]];
    }
    weighted_partials(y + t * dim, {&root, 1}, ids, outputs, weights, dim);
  }
}

void moe_forward(float* out, const float* h, const LayerWeights& w, RowAdapters rows, int64_t n,
                 const LayerContext& lc) {
  const ModelConfig& c = *lc.config;
  const int64_t dim = c.dim, k = c.n_activated_experts;
  std::vector<int32_t> idx;
  std::vector<float> wt;
  gate_forward(idx, wt, h, w, n, lc);
  std::vector<int32_t> pair_row(static_cast<size_t>(n * k));
  for (int64_t p = 0; p < n * k; ++p) pair_row[size_t(p)] = int32_t(p / k);
  std::vector<float> pair_out(static_cast<size_t>(n * k * dim)), y(static_cast<size_t>(n * dim));
  run_expert_pairs(pair_out.data(), h, rows, pair_row, idx, w.experts, lc);
  combine_experts(y.data(), pair_out.data(), idx.data(), wt.data(), n, k, dim, c.n_routed_experts);
  add_shared_experts(out, h, y.data(), w, rows, n, lc);
}

void add_shared_experts(float* out, const float* h, const float* y, const LayerWeights& w, RowAdapters rows,
                        int64_t n, const LayerContext& lc) {
  const int64_t size = n * lc.config->dim;
  if (w.shared) {
    mlp_forward(out, h, *w.shared, rows, n, lc.kernels);
    for (int64_t i = 0; i < size; ++i) out[i] += y[i];
  } else {
    std::copy_n(y, size, out);
  }
}

}  // namespace shoal
