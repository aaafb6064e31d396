// The placement plan: which rank hosts each unit of the model. Everything in the distributed
// runtime is driven by it (docs/distributed.md, "Plan"). Units:
//   embed                 the token embedding
//   layer[i].attn         norms, attention (MLA, or GQA for Qwen2/Llama), the router (gate),
//                         shared expert or dense MLP
//   layer[i].expert[j]    routed expert j of MoE layer i
//   head                  final norm, lm_head, sampling
// Ranks are world ranks 0..world_size-1; rank 0 is also the coordinator.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "model/config.h"
#include "model/lora.h"

namespace shoal {
class Checkpoint;
}

namespace shoal::cluster {

struct Plan {
  int world_size = 1;
  int embed = 0;
  int head = 0;
  std::vector<int> attn;                  // [n_layers]
  std::vector<std::vector<int>> experts;  // [n_layers][n_routed_experts]; empty for dense layers

  bool hosts_anything(int rank) const;
  // Layers whose attention block `rank` hosts, ascending.
  std::vector<int64_t> attn_layers(int rank) const;
  // experts[layer][j] == rank, for load_layer's ExpertFilter; empty vector for dense layers.
  std::vector<bool> expert_filter(int rank, int64_t layer) const;
  // Ranks owning at least one expert of `layer`, ascending.
  std::vector<int> expert_ranks(int64_t layer) const;

  bool operator==(const Plan&) const = default;
};

// Bytes of weights of every unit (scales included), as stored.
struct UnitBytes {
  int64_t embed = 0, head = 0;
  std::vector<int64_t> attn;                  // [n_layers]
  std::vector<std::vector<int64_t>> experts;  // [n_layers][n_routed_experts]; empty for dense

  bool operator==(const UnitBytes&) const = default;
};
// From the tensor headers of a checkpoint (reads no tensor data).
StatusOr<UnitBytes> unit_bytes(Checkpoint& ck);
// From the config alone (no weights needed, e.g. the real 671B config): the bytes the tensor
// table's tensors take in the dtypes shoal synth writes and DeepSeek's release stores: with fp8,
// quantized matrices as F8_E4M3 plus F32 [ceil(R/b), ceil(C/b)] `_scale_inv` block scales;
// the router's e_score_correction_bias F32; everything else BF16. Equals unit_bytes() of a
// synthesized checkpoint of that config.
UnitBytes unit_bytes_for(const ModelConfig& c, bool fp8);
// Adds a LoRA adapter's A and B (as stored) to the units that hold its modules: a routed expert's
// to that expert, every other module's to its layer's attention unit.
void add_lora_bytes(UnitBytes& bytes, const LoraAdapter& lora);
// Weight bytes `rank` hosts under `plan`.
int64_t rank_weight_bytes(const Plan& plan, const UnitBytes& bytes, int rank);

// JSON form (schema in docs/plan.md). from_json checks everything against the config and
// world size and names the offending field: "plan: layers[3].experts[5] = 7 is not a rank of
// a 3-rank world".
nlohmann::json plan_to_json(const Plan& plan);
StatusOr<Plan> plan_from_json(const nlohmann::json& j, const ModelConfig& c, int world_size);
StatusOr<Plan> read_plan_file(const std::filesystem::path& file, const ModelConfig& c, int world_size);

struct PlannerOptions {
  std::vector<int> ranks;              // ranks that host units, in pipeline order; empty: all ranks
  std::vector<int64_t> budget_bytes;   // memory budget per entry of `ranks`; empty: equal shares
  bool expert_scatter = false;         // spread each MoE layer's experts over all `ranks`
};

// The default planner: contiguous layer ranges per rank (embed on the first rank of `ranks`,
// head on the last), the bytes each rank holds in proportion to the budgets (equal shares when
// none are given). With expert_scatter, each MoE layer's routed experts spread over `ranks` in
// whole expert groups (n_group) per rank, so group-limited routing reaches at most topk_group
// ranks per token; the attention blocks then follow, and without budgets they balance the work
// per token (the embedding's table counts as memory only). A model without MoE layers (Qwen2,
// Llama) gets the pipeline either way. Fails with the numbers per rank when budgets are given
// and the model does not fit.
StatusOr<Plan> default_plan(const ModelConfig& c, const UnitBytes& bytes, int world_size,
                            const PlannerOptions& options);

}  // namespace shoal::cluster
