// shoal synth: write a random-weight checkpoint for a config, in Hugging Face layout or as a GGUF.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "model/synth.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal::cli {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::string config, out, tokenizer, dtype = "bf16", format = "hf", quant;
  int64_t layers = 0;
  uint64_t seed = 0;
  double shard_size_mb = 4096;
  double split_max_mb = 0;
  bool mtp = false;
};

// One past the largest token id of tokenizer.json: over model.vocab and added_tokens. (The
// Tokenizer's vocab_limit would be the vocab_size of a config.json beside it instead.)
StatusOr<int64_t> token_id_count(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found("cannot open " + file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& what) { return invalid_argument(file.string() + ": " + what); };
  if (!j.is_object()) return bad("not a JSON object");
  int64_t n = 0;
  auto take = [&](const nlohmann::json& id, const std::string& where) -> Status {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) return bad(where + ": expected a token id, got " + id.dump());
    n = std::max(n, id.get<int64_t>() + 1);
    return {};
  };
  const auto model = j.find("model");
  if (model == j.end() || !model->is_object() || !model->contains("vocab") || !(*model)["vocab"].is_object())
    return bad("model.vocab: expected an object of token ids");
  for (const auto& [token, id] : (*model)["vocab"].items()) SHOAL_RETURN_IF_ERROR(take(id, "model.vocab"));
  if (const auto added = j.find("added_tokens"); added != j.end() && added->is_array()) {
    for (size_t i = 0; i < added->size(); ++i) {
      const nlohmann::json& t = (*added)[i];
      const std::string where = "added_tokens[" + std::to_string(i) + "].id";
      if (!t.is_object() || !t.contains("id")) return bad(where + ": missing");
      SHOAL_RETURN_IF_ERROR(take(t["id"], where));
    }
  }
  if (n == 0) return bad("no tokens");
  return n;
}

// Reads the tokenizer folder for synth: vocab_size from its ids, BOS/EOS ids from
// tokenizer_config.json's bos_token/eos_token. Loading it with the Tokenizer first checks that
// `shoal run` will be able to load the copy.
Status add_tokenizer(const fs::path& dir, SynthOptions& so, int64_t& n_ids) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return not_found("--tokenizer " + dir.string() + ": not a folder");
  for (const char* name : {kSynthTokenizerFiles[0], kSynthTokenizerFiles[1]}) {
    if (!fs::is_regular_file(dir / name, ec)) return not_found("tokenizer file not found: " + (dir / name).string());
  }
  SHOAL_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::load(dir));
  SHOAL_ASSIGN_OR_RETURN(n_ids, token_id_count(dir / kSynthTokenizerFiles[0]));
  so.tokenizer = dir;
  so.vocab_size = synth_vocab_size(n_ids);
  so.bos_token_id = tok->bos_id();
  so.eos_token_id = tok->eos_id();
  return {};
}

int synth(const Options& o) {
  SynthOptions so;
  int64_t n_ids = 0;
  so.gguf = o.format == "gguf";
  if (so.gguf) {
    if (!o.tokenizer.empty())
      return fail(invalid_argument("--tokenizer: a GGUF synth carries its own byte-level vocabulary (no tokenizer folder)"));
    if (o.dtype != "bf16") return fail(invalid_argument("--dtype is for --format hf; a GGUF takes --quant TYPE"));
    const auto q = gguf_quant_type(o.quant.empty() ? "Q8_0" : o.quant);
    if (!q)
      return fail(invalid_argument("--quant " + o.quant +
                                   ": not a ggml type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K ... Q6_K, "
                                   "IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS)"));
    so.quant = *q;
    so.split_bytes = uint64_t(o.split_max_mb * (1 << 20));
  } else if (!o.quant.empty() || o.split_max_mb > 0) {
    return fail(invalid_argument("--quant and --split-max-mb are for --format gguf"));
  }
  if (!o.tokenizer.empty()) {
    if (Status s = add_tokenizer(o.tokenizer, so, n_ids); !s.ok()) return fail(s);
  }
  so.config = o.config;
  so.out = o.out;
  so.fp8 = o.dtype == "fp8";
  so.layers = o.layers;
  so.mtp = o.mtp;
  so.seed = o.seed;
  so.shard_bytes = uint64_t(o.shard_size_mb * (1 << 20));
  const auto t0 = std::chrono::steady_clock::now();
  auto r = synth_checkpoint(so);
  if (!r.ok()) return fail(r.status());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (so.gguf) {
    std::printf("wrote %lld tensors, %.3f GB in %lld file(s), %lld layers, %s, to %s in %.1f s\n",
                (long long)r->n_tensors, double(r->total_bytes) / 1e9, (long long)r->n_shards,
                (long long)r->config.n_layers, std::string(dtype_name(so.quant)).c_str(), r->files.front().c_str(), s);
    return 0;
  }
  std::printf("wrote %lld tensors, %.3f GB in %lld shard(s), %lld layers%s, to %s in %.1f s\n",
              (long long)r->n_tensors, double(r->total_bytes) / 1e9, (long long)r->n_shards,
              (long long)r->config.n_layers, o.mtp && r->config.n_mtp_layers > 0 ? " + MTP" : "", o.out.c_str(), s);
  if (!so.tokenizer.empty()) {
    std::printf("tokenizer: %lld token ids, vocab_size %lld, bos_token_id %lld, eos_token_id %lld\n",
                (long long)n_ids, (long long)r->config.vocab_size, (long long)r->config.bos_token_id,
                (long long)r->config.eos_token_id);
  }
  return 0;
}

}  // namespace

void add_synth(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("synth", "Write a random-weight checkpoint (HF layout or GGUF) for a config");
  sub->add_option("--config", o->config,
                  "config.json, or a folder holding it (default: the embedded demo model, DeepSeek-V3's "
                  "architecture at hidden 1024, 4 layers, 32 experts)");
  sub->add_option("--out", o->out,
                  "Folder to write (created; must not hold a checkpoint yet); with --format gguf also a NAME.gguf file")
      ->required();
  sub->add_option("--format", o->format,
                  "hf (default): config.json + safetensors; gguf: llama.cpp's deepseek2 GGUF (docs/gguf.md)")
      ->check(CLI::IsMember({"hf", "gguf"}));
  sub->add_option("--quant", o->quant,
                  "GGUF: ggml type of the matrices (default Q8_0): F32, F16, BF16, Q4_0 ... Q6_K, IQ1_S ... IQ4_XS; "
                  "a matrix whose rows do not fit its blocks falls back as llama-quantize does; norms and router F32");
  sub->add_option("--split-max-mb", o->split_max_mb,
                  "GGUF: split into NAME-0000k-of-0000N.gguf parts of at most this many MiB of tensors, as "
                  "llama-gguf-split --split-max-size (default: one file)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--tokenizer", o->tokenizer,
                  "Folder with tokenizer.json and tokenizer_config.json: copied into --out, vocab_size set to "
                  "the tokenizer's ids rounded up to a multiple of 1280 (129,280 for DeepSeek-V3's), "
                  "bos/eos_token_id to its BOS/EOS tokens, so the model can serve text");
  sub->add_option("--dtype", o->dtype, "bf16 (default), or fp8: e4m3 with 128x128 block scales, as DeepSeek ships")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  sub->add_option("--layers", o->layers, "num_hidden_layers to write (default: the config's)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--seed", o->seed, "Random seed (default 0); the same seed writes the same bytes");
  sub->add_option("--shard-size-mb", o->shard_size_mb,
                  "Tensor MiB per shard (default 4096, fractions allowed), split where HF splits")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--mtp", o->mtp,
                "Also write the MTP layers (num_nextn_predict_layers). Off by default: the 671B model's MTP "
                "layer alone is 11 GB, so without this flag config.json gets num_nextn_predict_layers = 0");
  sub->callback([o, &rc] { rc = synth(*o); });
}

}  // namespace shoal::cli
