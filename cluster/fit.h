// shoal plan: does a model fit a cluster, how is it spread, and how fast will it decode
// (docs/plan.md, "shoal plan"). Ranks are one per GPU, or `cpu_ranks` (default 1) per node
// without GPUs. Weights go to the GPUs first; when they do not fit, routed experts spill to the
// host memory of the GPU ranks' nodes and CPU nodes take a share (unless gpu_only). The layer
// and expert placement itself is cluster/plan.h's default_plan, given the ranks' budgets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/plan.h"
#include "cluster/spec.h"
#include "model/config.h"
#include "model/inspect.h"
#include "model/kv_layout.h"

namespace shoal::cluster {

// fp8: DeepSeek's release (F8_E4M3 linear weights + F32 128x128 block scales, BF16 embedding,
// head, norms and router, F32 router bias). bf16: everything BF16 but the F32 router bias.
// q8_0 / q4_k: GGUF blocks (34 bytes per 32 weights / 144 bytes per 256) for every matrix but
// the router, which stays F32 with all vectors (norms, bias), as llama.cpp quantizes.
// gguf: a GGUF file or quant recipe (cluster/quant_recipe.h), each tensor in its own ggml type;
// its bytes always come as `stored` unit bytes (fit_plan refuses it without them).
enum class WeightFormat { kFp8, kBf16, kQ8_0, kQ4K, kGguf };
StatusOr<WeightFormat> parse_weight_format(const std::string& name);
const char* format_name(WeightFormat f);
// "12.34 GB", "5.67 MB", "8.90 KB": decimal units, as shoal inspect prints them.
std::string gb(long double bytes);

// What a CPU rank needs beside its weights and KV cache (docs/plan.md, "Workspace"): the process
// and a prefill step of max(prefill_chunk, concurrency) tokens' activations and logits.
int64_t cpu_workspace_bytes(const ModelConfig& c, int64_t prefill_chunk, int64_t concurrency);

// Bytes of every unit (and of the MTP layers, which no unit holds) in that format.
UnitBytes unit_bytes_in(const ModelConfig& c, WeightFormat f);
int64_t mtp_bytes_in(const ModelConfig& c, WeightFormat f);

struct FitOptions {
  WeightFormat weights = WeightFormat::kFp8;
  bool gpu_only = false;        // weights on GPUs only; CPU nodes and host memory hold none
  bool expert_scatter = false;  // spread each layer's experts over the ranks (default_plan)
  int64_t context = 4096;       // KV positions per sequence
  int64_t concurrency = 1;      // sequences with a KV cache each
  // KV cache values (MLA's latent, GQA's keys and values): f32, the runtime's default, or bf16
  // (half the bytes; it does not hold the golden tolerance, so the runtime does not default to it).
  DType kv_dtype = DType::kF32;
  int64_t wire_value_bytes = 4; // hidden rows between ranks: 4 (--wire-dtype f32) or 2 (bf16)
  int64_t prefill_chunk = 512;  // tokens per prefill step, for the activation estimate
  bool suggest = true;          // on failure, try what would make it fit
  int64_t gguf_mtp_bytes = 0;   // kGguf: the MTP layers' bytes in the file (llama.cpp's converter drops them)
};

// One rank of the cluster and where its memory is.
struct RankSlot {
  int rank = 0;
  size_t node = 0;
  int gpu = -1;                     // -1: a CPU rank (its device is host memory)
  std::string device;               // "gpu:1", "cpu" or "cpu:0" when a node runs several
  int64_t capacity_bytes = 0;       // the device's memory
  int64_t host_capacity_bytes = 0;  // GPU ranks: their share of the node's host memory for experts
  double bandwidth_gbs = 0, efficiency = 0;            // the device
  double host_bandwidth_gbs = 0, host_efficiency = 0;  // the node's host memory
  double cpu_gflops = 0;  // its share of the node's float32 FMA peak (spec cpu_gflops); 0: not modeled
  std::map<double, double> cpu_linear_gflops;  // its share of the node's linear rate by tokens (spec)
};

// A CPU rank's multiply-add rate, GFLOP/s, when each weight serves `tokens` tokens of a step:
// its cpu_linear_gflops, linear in log2(tokens) between the measured points and flat beyond
// them, or else half its cpu_gflops; 0 when the spec gives neither (cluster/predict.cpp).
double cpu_compute_gflops(const RankSlot& slot, double tokens);

struct ExpertRange {
  int64_t layer = 0, first = 0, last = 0;  // experts [first, last] of layer, inclusive
};

struct RankFit {
  RankSlot slot;
  std::vector<int64_t> layers;  // attention blocks hosted
  bool embed = false, head = false;
  int64_t experts = 0;          // routed experts hosted (device and host memory)
  int64_t weight_bytes = 0, kv_bytes = 0, workspace_bytes = 0, total_bytes = 0;  // on the device
  int64_t host_experts = 0, host_weight_bytes = 0;
  std::vector<ExpertRange> host_ranges;
  // The KV pool of a rank with attention layers (all 0 on the others): one position of its layers
  // (kv_token_bytes), the device memory left over after total_bytes, the positions that holds, and
  // the positions the reserved KV plus that hold; both in whole blocks of kKvBlockTokens.
  int64_t kv_bytes_per_token = 0, kv_free_bytes = 0, kv_free_tokens = 0, kv_tokens = 0;
};

// How many sequences of `context` positions the cluster's KV pools hold at once.
struct KvServes {
  int64_t context = 0, sequences = 0;
};

struct Prediction {
  double hop_bytes_per_token = 0;          // hidden state + header, each pipeline hop
  int64_t hops = 0;                        // hops a token makes through the ranks
  double expert_bytes_per_token = 0;       // expert exchange over all MoE layers (expert scatter)
  double one_sequence_tokens_per_s = 0;    // decode, one sequence alone
  int64_t pipeline_stages = 0;
  int64_t pipeline_sequences = 0;          // max(concurrency, stages), in `stages` micro-batches
  double full_pipeline_tokens_per_s = 0;   // decode, every stage busy
  double weight_ms = 0, kv_ms = 0, link_ms = 0;  // one sequence's token: where the time goes
};

struct FitResult {
  bool fits = false;
  bool spilled = false;             // some experts in host memory
  bool has_experts = false;         // the model has MoE layers (dense Qwen2/Llama: none)
  bool mla = true;                  // DeepSeek's attention (latent KV cache, MTP layers); false: GQA
  double host_fraction = 0;         // the f of docs/plan.md's spill step
  WeightFormat weights = WeightFormat::kFp8;
  FitOptions options;               // as asked, but expert_scatter false for a model without experts
  ParamCounts params;
  int64_t weight_bytes = 0, mtp_weight_bytes = 0;
  int64_t kv_bytes_per_layer = 0;     // reserved: concurrency sequences of context positions, in whole blocks
  // The cluster's KV pool: a position of a sequence takes a slot on every rank with attention
  // layers, so it holds the least of their kv_tokens (kv_free_tokens: of their leftover alone);
  // kv_rank is that rank (-1 without one). kv_serves: sequences of 4K, 32K, 128K and the model's
  // max_position_embeddings (none above it) that those tokens hold, each in whole blocks.
  int64_t kv_bytes_per_token = 0;     // one position over all layers (kv_token_bytes)
  int64_t kv_tokens = 0, kv_free_tokens = 0;
  int kv_rank = -1;
  std::vector<KvServes> kv_serves;
  Plan plan;
  std::vector<RankFit> ranks;
  std::vector<std::vector<bool>> expert_on_host;  // [layer][expert]: in host memory, not on the device
  Prediction prediction;
  std::vector<std::string> reasons, suggestions, warnings, notes;
};

// The ranks a spec gives, with capacities and bandwidths (the table with the spec's overrides).
// Errors name a node whose device kind is not in the table.
StatusOr<std::vector<RankSlot>> rank_slots(const ClusterSpec& s, const FitOptions& o);

// `stored`: the unit bytes of a checkpoint in that format (else computed from the config).
StatusOr<FitResult> fit_plan(const ModelConfig& c, const ClusterSpec& s, const FitOptions& o,
                             const UnitBytes* stored = nullptr);

// Sequences of `context` positions that `tokens` positions of a KV pool hold, each sequence in
// whole blocks of kKvBlockTokens.
int64_t kv_sequences(int64_t tokens, int64_t context);
// The contexts "serves" lists for a model: 4096, 32768, 131072, then max_position_embeddings when
// it is another; none above max_position_embeddings (when the config gives it).
std::vector<int64_t> kv_serve_contexts(const ModelConfig& c);

// cluster/predict.cpp: the decode model of docs/plan.md over a placed plan.
Prediction predict(const ModelConfig& c, const ClusterSpec& s, const FitResult& r, const UnitBytes& bytes);

// cluster/fit_report.cpp
nlohmann::ordered_json fit_to_json(const FitResult& r, const ClusterSpec& s);
std::string fit_text(const FitResult& r, const ClusterSpec& s);

}  // namespace shoal::cluster
