// llama.cpp's logits for token ids, to set shoal's GGUF results beside llama.cpp's own run of the
// same file (tests/fixtures/gguf-tiny-*/README.md). Not part of the shoal build: compile it
// against a llama.cpp build (see bench/llama-cpp/dense-gguf-check):
//   g++ -O2 -std=c++17 dump_logits.cpp -I$LLAMA/include -I$LLAMA/ggml/include -L$LLAMA/build/bin -lllama -o dump_logits
// Usage: dump_logits MODEL.gguf STEPS "ids of sequence 0" ["ids of sequence 1" ...]
// Prints {"prompt_logits": [seq][pos][vocab], "greedy_ids": [seq][step], "greedy_logits": ...}:
// every prompt position from one prefill, then STEPS greedy tokens through the KV cache, each
// sequence in a fresh context (CPU, F32 KV cache, flash attention off).
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

static void print_row(const float* v, int n) {
  std::printf("[");
  for (int i = 0; i < n; ++i) std::printf(i ? ",%.9g" : "%.9g", v[i]);
  std::printf("]");
}

int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: %s MODEL STEPS IDS...\n", argv[0]), 2;
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.use_extra_bufts = false;  // repacked weights take another code path (and abort on some CPUs)
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) return std::fprintf(stderr, "cannot load %s\n", argv[1]), 1;
  const int steps = std::atoi(argv[2]);
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::vector<std::vector<std::vector<float>>> prompt, greedy;
  std::vector<std::vector<int>> ids_out;
  for (int s = 3; s < argc; ++s) {
    std::vector<llama_token> ids;
    std::istringstream in(argv[s]);
    for (int id; in >> id;) ids.push_back(id);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = cp.n_ubatch = 512;
    cp.n_threads = cp.n_threads_batch = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    llama_context* ctx = llama_init_from_model(model, cp);
    llama_batch b = llama_batch_init(512, 0, 1);
    b.n_tokens = int(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      b.token[i] = ids[i]; b.pos[i] = int(i); b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    if (llama_decode(ctx, b)) return std::fprintf(stderr, "decode failed\n"), 1;
    prompt.emplace_back();
    for (size_t i = 0; i < ids.size(); ++i) {
      const float* l = llama_get_logits_ith(ctx, int(i));
      prompt.back().emplace_back(l, l + n_vocab);
    }
    greedy.emplace_back();
    ids_out.emplace_back();
    std::vector<float> last = prompt.back().back();
    for (int k = 0; k < steps; ++k) {
      int best = 0;
      for (int v = 1; v < n_vocab; ++v) if (last[v] > last[best]) best = v;
      greedy.back().push_back(last);
      ids_out.back().push_back(best);
      if (k + 1 == steps) break;
      b.n_tokens = 1;
      b.token[0] = best; b.pos[0] = int(ids.size()) + k; b.n_seq_id[0] = 1; b.seq_id[0][0] = 0; b.logits[0] = 1;
      if (llama_decode(ctx, b)) return std::fprintf(stderr, "decode failed\n"), 1;
      const float* l = llama_get_logits_ith(ctx, 0);
      last.assign(l, l + n_vocab);
    }
    llama_batch_free(b);
    llama_free(ctx);
  }
  std::printf("{\"prompt_logits\":[");
  for (size_t s = 0; s < prompt.size(); ++s) {
    std::printf(s ? ",[" : "[");
    for (size_t p = 0; p < prompt[s].size(); ++p) { if (p) std::printf(","); print_row(prompt[s][p].data(), n_vocab); }
    std::printf("]");
  }
  std::printf("],\"greedy_ids\":[");
  for (size_t s = 0; s < ids_out.size(); ++s) {
    std::printf(s ? ",[" : "[");
    for (size_t k = 0; k < ids_out[s].size(); ++k) std::printf(k ? ",%d" : "%d", ids_out[s][k]);
    std::printf("]");
  }
  std::printf("],\"greedy_logits\":[");
  for (size_t s = 0; s < greedy.size(); ++s) {
    std::printf(s ? ",[" : "[");
    for (size_t k = 0; k < greedy[s].size(); ++k) { if (k) std::printf(","); print_row(greedy[s][k].data(), n_vocab); }
    std::printf("]");
  }
  std::printf("]}\n");
  llama_model_free(model);
  return 0;
}
