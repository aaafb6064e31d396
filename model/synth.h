// shoal synth: a random-weight checkpoint in exact Hugging Face layout for any supported config
// (config.json, model.safetensors.index.json, model-0000k-of-0000n.safetensors), so every code
// path can be run at any scale without downloading a release.
//
// Values: uniform, std 1/sqrt(fan_in) for matrices (activations stay O(1)), std 1 for the
// embedding (1/sqrt(hidden_size) when tied to lm_head), 1 +- 0.1 for norm weights, +-0.05 for the router's e_score_correction_bias, +-0.1
// for attention biases (Qwen2's q/k/v_proj.bias). Dense configs (qwen2, llama) synthesize in
// bf16 only, and not as GGUF (an error says so). Each
// tensor row has its own random stream derived from (seed, tensor name, row), so the values
// before rounding depend on nothing else: a bf16 and an fp8 synth of one seed are the same model
// up to rounding, and the output does not depend on thread count or shard size.
//
// Weights are generated and written a block of rows at a time straight into their place in
// their shard (the header is written first), so memory stays far below one tensor.
//
// With a tokenizer (`shoal synth --tokenizer DIR`) the checkpoint can serve text: its
// tokenizer.json and tokenizer_config.json (and chat_template.jinja when there is one) are copied
// byte for byte into `out`, vocab_size is sized to the tokenizer by synth_vocab_size and
// bos_token_id / eos_token_id are the tokenizer's. The caller reads the tokenizer (the tokenizer
// library is above this one) and passes the numbers in SynthOptions.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "model/config.h"
#include "model/gguf.h"

namespace shoal {

struct SynthOptions {
  std::filesystem::path config;          // config.json, or a folder holding it; empty: the embedded default
  std::filesystem::path out;             // created if missing; must not hold a checkpoint yet
  bool fp8 = false;                      // quantized weights as F8_E4M3 + 128x128 scales; else BF16
  int64_t layers = 0;                    // num_hidden_layers to write; 0 keeps the config's
  bool mtp = false;                      // write the MTP layers too; else num_nextn_predict_layers = 0
  uint64_t seed = 0;
  uint64_t shard_bytes = 4096ull << 20;  // tensor bytes per shard, split where HF splits

  // A tokenizer folder, or empty for none. With one: its files are copied into `out`,
  // vocab_size replaces the config's, and bos/eos_token_id replace the config's (-1: the
  // tokenizer has none, and the key is removed).
  std::filesystem::path tokenizer;
  int64_t vocab_size = 0;
  int64_t bos_token_id = -1, eos_token_id = -1;

  // GGUF instead (`shoal synth --format gguf`, docs/gguf.md "Synth and shard"): llama.cpp's
  // deepseek2 layout with every matrix in `quant` (llama-quantize's fallback where a row is not a
  // whole number of its blocks), norms, router and bias F32, a synthetic byte-level vocabulary.
  // `out` is a .gguf file, or a folder that gets model.gguf. split_bytes > 0 splits the file as
  // llama-gguf-split --split-max-size does (NAME-0000k-of-0000N.gguf); fp8, mtp and tokenizer
  // do not apply.
  bool gguf = false;
  DType quant = DType::kQ8_0;
  uint64_t split_bytes = 0;
};

// The files of a tokenizer folder that synth copies: the first two must exist, the last is copied
// when present (newer Hugging Face repos keep the chat template there).
inline constexpr const char* kSynthTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                                       "chat_template.jinja"};

// The vocab_size synth gives a model for a tokenizer whose ids are [0, n_token_ids) (one past the
// largest id of its vocabulary and added tokens): n_token_ids rounded up to a multiple of
// kSynthVocabMultiple. 1280 = 10 x 128 keeps the embedding and lm_head in whole 128-row fp8
// blocks, and is the rule that gives DeepSeek-V3's released vocab_size: its tokenizer's 128,815
// ids (128,000 BPE tokens + 815 added) -> 129,280.
inline constexpr int64_t kSynthVocabMultiple = 1280;
inline int64_t synth_vocab_size(int64_t n_token_ids) {
  return (n_token_ids + kSynthVocabMultiple - 1) / kSynthVocabMultiple * kSynthVocabMultiple;
}

struct SynthResult {
  ModelConfig config;       // as written to out/config.json
  int64_t n_tensors = 0;    // including the _scale_inv tensors
  int64_t n_shards = 0;
  uint64_t total_bytes = 0; // metadata.total_size: tensor bytes of every shard
  std::vector<std::filesystem::path> files;  // GGUF: the files written (part 1 first)
};

StatusOr<SynthResult> synth_checkpoint(const SynthOptions& o);

// Block quantization as in DeepSeek's fp8 release: for each [block, block] tile of w, scale_inv =
// max|w| / 448 (1 for an all-zero tile) and q = e4m3(w / scale_inv), rounded to nearest.
// w [rows, cols] float -> q [rows, cols] e4m3 bytes, scale_inv [ceil(rows/block), ceil(cols/block)].
void quantize_fp8_blocks(uint8_t* q, float* scale_inv, const float* w, int64_t rows, int64_t cols, int64_t block);

// ---- GGUF (synth --format gguf, and shoal shard of a GGUF) -------------------------------------

// A --quant name (case-insensitive): F32, F16, BF16 or a ggml block type llama-quantize writes
// (Q4_0 ... IQ1_M; not Q8_K, ggml's activation type); nullopt otherwise.
std::optional<DType> gguf_quant_type(std::string_view name);

// The type llama-quantize stores a matrix of row length ne0 in when asked for `want`
// (llama-quant.cpp's tensor_type_fallback): `want` when ne0 is a whole number of its blocks; else
// the 256-block i-quants -> IQ4_NL, Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
// F16 when the fallback's 32-weight blocks do not fit either.
DType gguf_fallback_type(DType want, int64_t ne0);

// llama.cpp's general.file_type (LlamaFileType) for a file whose matrices are all `t`.
uint32_t gguf_file_type(DType t);
// rows x cols weights of ggml block type t as random blocks whose scales give weights of about
// the given standard deviation (the same blocks synth writes; benches use them).
void random_gguf_rows(uint8_t* out, DType t, int64_t rows, int64_t cols, double std, uint64_t seed);

// One tensor of a GGUF being written: its data is `bytes` long at `offset` of the data section.
struct GgufTensorOut {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> ne;  // ggml order
  uint64_t bytes = 0;
  uint64_t offset = 0;      // set by gguf_stream_header
};

// The header of a GGUF (version 3) whose tensors follow in the given order, each padded to
// `alignment`: magic, counts, metadata, tensor infos, padding; the data section starts right
// after it. Sets every tensor's offset; *data_bytes (if given) is the data section's length.
// Lets a writer stream tensor data without holding it (model/gguf_writer.h builds whole images).
std::string gguf_stream_header(const std::vector<std::pair<std::string, GgufValue>>& kv,
                               std::vector<GgufTensorOut>& tensors, uint64_t* data_bytes = nullptr,
                               uint64_t alignment = 32);

}  // namespace shoal
