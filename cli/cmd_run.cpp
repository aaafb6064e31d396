// shoal run: generate greedily from token ids, a text prompt or a chat, and report tokens/s.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/cluster_flags.h"
#include "cli/commands.h"
#include "coordinator/cluster.h"
#include "coordinator/engine.h"
#include "text/chat_template.h"
#include "text/reasoning.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model, tokenizer;
  std::string ids, prompt, chat;
  int64_t max_tokens = 32;
  int64_t max_seq_len = 0;
  ClusterFlags cluster;
};

struct Prompt {
  std::vector<int32_t> ids;
  bool text = false;        // came from text: stop at EOS and print the decoded answer
  bool reasoning = false;   // the chat template opened a <think> block
};

StatusOr<Prompt> make_prompt(const Options& o, const Tokenizer* tok) {
  Prompt p;
  if (!o.ids.empty()) {
    SHOAL_ASSIGN_OR_RETURN(p.ids, parse_ids(o.ids));
    return p;
  }
  p.text = true;
  if (!o.prompt.empty()) {
    p.ids = tok->encode(o.prompt, tok->add_bos_default());
    return p;
  }
  ChatRequest req;
  req.messages = nlohmann::json::parse(o.chat, nullptr, /*allow_exceptions=*/false);
  if (req.messages.is_discarded()) return invalid_argument("--chat is not valid JSON (a list of messages)");
  SHOAL_ASSIGN_OR_RETURN(std::string rendered, render_chat(*tok, req));
  p.reasoning = prompt_opens_reasoning(rendered);
  p.ids = tok->encode(rendered, /*add_bos=*/false);  // the template wrote BOS
  return p;
}

void print_text(const Tokenizer& tok, const std::vector<int32_t>& ids, bool reasoning) {
  auto text = tok.decode(ids, /*skip_special_tokens=*/true);
  if (!text.ok()) return;
  const auto d = split_reasoning(*text, reasoning);
  if (!d.reasoning.empty()) std::printf("reasoning: %s\n", nlohmann::json(d.reasoning).dump().c_str());
  std::printf("text: %s\n", nlohmann::json(d.content).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

int run(const Options& o) {
  if (int(!o.ids.empty()) + int(!o.prompt.empty()) + int(!o.chat.empty()) != 1)
    return fail(invalid_argument("give exactly one of --ids, --prompt and --chat"));
  std::unique_ptr<Tokenizer> tok;
  if (o.ids.empty()) {
    auto loaded = Tokenizer::load(o.tokenizer.empty() ? o.model : o.tokenizer);
    if (!loaded.ok()) return fail(loaded.status());
    tok = std::move(loaded).value();
  }
  auto prompt = make_prompt(o, tok.get());
  if (!prompt.ok()) return fail(prompt.status());
  ClusterOptions co;
  co.model_dir = o.model;
  co.max_seq_len = o.max_seq_len;
  ClusterFlags flags = o.cluster;
  flags.one_model = true;
  auto cluster = open_cluster(flags, co);
  if (!cluster.ok()) return fail(cluster.status());
  std::vector<int32_t> stop;
  if (prompt->text && tok->eos_id() >= 0) stop.push_back(tok->eos_id());
  std::printf("generated:");
  auto r = generate_greedy(**cluster, {prompt->ids}, o.max_tokens, false, false, stop, [](int64_t, int32_t id) {
    std::printf(" %d", id);  // streamed as chosen
    std::fflush(stdout);
  });
  std::printf("\n");
  if (!r.ok()) return fail(r.status());
  if (Status s = (*cluster)->shutdown(); !s.ok()) return fail(s);
  if (prompt->text) print_text(*tok, r->ids[0], prompt->reasoning);
  std::printf("prefill: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)r->prefill_tokens,
              r->prefill_seconds, double(r->prefill_tokens) / std::max(r->prefill_seconds, 1e-9));
  std::printf("decode: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)r->decode_tokens, r->decode_seconds,
              double(r->decode_tokens) / std::max(r->decode_seconds, 1e-9));
  return 0;
}

}  // namespace

void add_run(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("run", "Generate greedily from token ids, a text prompt or a chat");
  sub->add_option("--model", o->model, "Checkpoint: a Hugging Face folder (config.json + safetensors) or a GGUF (file, part 1 or folder)")->required();
  sub->add_option("--ids", o->ids, "Prompt token ids, e.g. \"0 17 42\"");
  sub->add_option("--prompt", o->prompt, "Prompt text (BOS as tokenizer_config.json says)");
  sub->add_option("--chat", o->chat, "Messages as JSON, e.g. '[{\"role\":\"user\",\"content\":\"Hi\"}]'");
  sub->add_option("--tokenizer", o->tokenizer, "Folder with tokenizer.json, or a GGUF (default: --model)");
  sub->add_option("--max-tokens", o->max_tokens, "Tokens to generate (text prompts stop at EOS)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-seq-len", o->max_seq_len, "KV cache positions (default: min(config, 4096))");
  add_cluster_flags(sub, o->cluster);
  sub->callback([o, &rc] { rc = run(*o); });
}

}  // namespace shoal::cli
