// Decode speed of one sequence against the machine's read bandwidth: each decode step must
// stream the weights it touches (attention, dense/shared MLPs, the k routed experts chosen per
// MoE layer, lm_head). When tokens/s x bytes/token is close to the read bandwidth, decode is
// limited by memory, not by interpretation overhead.
//   bench_decode --model DIR [--prompt N] [--tokens N]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "bench/membw.h"
#include "coordinator/engine.h"
#include "model/tensor_names.h"

using namespace shoal;

namespace {

// Bytes one decode token reads: every tensor of its units, experts at k / n_routed_experts.
StatusOr<double> bytes_per_token(Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  SHOAL_ASSIGN_OR_RETURN(auto infos, ck.all_tensor_infos());
  std::map<std::string, int64_t> bytes;
  for (const auto& t : infos) bytes[t.name] = int64_t(t.end - t.begin);
  double total = 0;
  for (const TensorSpec& s : model_tensors(c, false)) {
    double b = double(bytes[s.name] + bytes[names::scale_inv(s.name)]);
    if (s.unit == Unit::kEmbed) b = b / double(c.vocab_size);  // one row
    if (s.unit == Unit::kExpert) b = b * double(c.n_activated_experts) / double(c.n_routed_experts);
    total += b;
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model;
  int64_t prompt = 16, tokens = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!std::strcmp(argv[i], "--prompt")) prompt = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::stoll(argv[i + 1]);
  }
  if (model.empty()) {
    std::fprintf(stderr, "usage: bench_decode --model DIR [--prompt N] [--tokens N]\n");
    return 2;
  }
  auto ck = Checkpoint::open(model);
  if (!ck.ok()) return std::fprintf(stderr, "%s\n", ck.status().to_string().c_str()), 1;
  auto per_token = bytes_per_token(**ck);
  EngineOptions eo;
  eo.max_seq_len = prompt + tokens + 1;
  auto engine = Engine::open(model, eo);
  if (!engine.ok() || !per_token.ok()) return std::fprintf(stderr, "cannot open %s\n", model.c_str()), 1;
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < prompt; ++i) ids.push_back(int32_t((i * 7919 + 1) % (*engine)->config().vocab_size));
  auto warm = generate_greedy(**engine, {ids}, 4, false, false);  // page cache and threads warm
  if (!warm.ok()) return std::fprintf(stderr, "%s\n", warm.status().to_string().c_str()), 1;
  auto r = generate_greedy(**engine, {ids}, tokens + 1, false, false);
  if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), 1;
  const double tps = double(r->decode_tokens) / r->decode_seconds;
  const double bw = bench::read_bandwidth_gbs();
  const double gbs = tps * *per_token / 1e9;
  std::printf("{\"model\": \"%s\", \"decode_tokens_per_s\": %.2f, \"prefill_tokens_per_s\": %.2f, "
              "\"weight_bytes_per_token\": %.0f, \"weights_gbs\": %.2f, \"read_bandwidth_gbs\": %.2f, "
              "\"fraction_of_read_bandwidth\": %.2f}\n",
              model.c_str(), tps, double(r->prefill_tokens) / r->prefill_seconds, *per_token, gbs, bw, gbs / bw);
  return 0;
}
