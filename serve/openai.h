// The OpenAI API's request and response shapes for `shoal serve` (docs/serving.md): parsing and
// validating /v1/chat/completions and /v1/completions bodies, turning them into a prompt and a
// GenerationRequest, and the JSON of responses, stream chunks and errors. No networking here:
// everything is a pure function of its arguments, so the tests call it directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/scheduler.h"
#include "node/sampling.h"
#include "text/grammar/output_grammar.h"
#include "text/reasoning.h"
#include "text/tool_calls.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal::server {

// An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;   // empty: null
};
nlohmann::json error_body(const ApiError& e);
ApiError bad_request(std::string message, std::string param = {}, std::string code = {});

enum class Endpoint { kChat, kCompletions };

inline constexpr size_t kMaxStopStrings = 4;
inline constexpr int64_t kMaxChoices = 16;  // n

// A validated request, before tokenization.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;
  int32_t adapter = 0;  // the LoRA adapter id `model` names (0: the base model)
  // chat: the messages as the template sees them (content parts joined into one string)
  nlohmann::json messages = nlohmann::json::array();
  // completions: text, or token ids when the prompt was given as ids
  std::string prompt_text;
  std::optional<std::vector<int32_t>> prompt_ids;
  std::optional<int64_t> max_tokens;  // none: chat the rest of the context, completions 16
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  std::vector<std::string> stop;      // stop strings, at most kMaxStopStrings
  bool ignore_eos = false;            // extension (vLLM's): do not stop at EOS
  bool logprobs = false;              // asked for logprobs (top_logprobs in sampling)
  // The request's sampling parameters, validated (OpenAI's ranges and SamplingParams::validate);
  // OpenAI's defaults where absent (temperature 1).
  SamplingParams sampling;
  // chat: OpenAI's `tools` (validated function definitions; null when none or with tool_choice
  // "none"), rendered and the output parsed into tool_calls.
  nlohmann::ordered_json tools = nullptr;
  // chat: what constrains the answer: response_format, tool_choice "required" or a named
  // function, parallel_tool_calls (tools, syntax and reasoning are filled in by prepare_request).
  OutputSpec output;
  bool echo = false;  // completions: the prompt's text before the completion (not with logprobs)
  int64_t n = 1;      // choices, each sampled on its own; they share the prompt's prefill
};

// Parses a JSON body for `endpoint`. `model_ids`: the served models, the base first, then each
// LoRA adapter by id (other names: 404 model_not_found, naming them). Returns the error to send,
// or nothing when `out` is filled.
std::optional<ApiError> parse_request(std::string_view body, Endpoint endpoint, const std::vector<std::string>& model_ids,
                                      CompletionRequest& out);

// A request turned into tokens and a GenerationRequest.
struct Prepared {
  GenerationRequest generation;  // prompt, max_tokens, stop_ids (EOS), sampling; id set by the
                                 // service; seed: the caller draws one when sampling has none
  std::string rendered;          // chat: the rendered template
  bool reasoning = false;        // split output into reasoning_content and content (R1 style)
  bool starts_in_reasoning = false;  // the rendered prompt opened <think>
  bool tool_calls = false;           // parse DeepSeek's tool-call text into tool_calls
};

// Renders (chat, add_generation_prompt, no BOS added: the template writes it) or encodes
// (completions, BOS as the tokenizer says) the prompt, checks it against the context and the
// vocabulary, and sets max_tokens (default: chat the rest of the context, completions 16). Errors are 400s naming
// the numbers.
// `eos_id`: the tokenizer's EOS, else config.json's (-1: none). `grammars`: where a constrained
// request's grammar is compiled (response_format, forced tool calls; a schema outside the
// supported subset is a 400 naming the keyword); without it such a request is a 500.
std::optional<ApiError> prepare_request(const CompletionRequest& req, const Tokenizer& tok, int64_t max_seq_len,
                                        int64_t vocab_size, int32_t eos_id, Prepared& out,
                                        OutputGrammars* grammars = nullptr);

// Stop strings: text is held back while it could still be the start of one; the first match
// cuts the output there (the stop string itself is not shown).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Text as generated; returns what can be shown now. After a match, stopped() is true and
  // later pushes return nothing.
  std::string push(std::string_view text);
  // End of generation: what was held back (nothing after a match).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// Generated tokens to text deltas: the streaming detokenizer (special tokens skipped), stop
// strings, and the reasoning split when the request has one.
class TextStream {
 public:
  struct Delta {
    std::string reasoning;
    std::string content;
    std::vector<ToolCallStream::CallDelta> tool_calls;  // with tools: the calls' pieces
    bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
    // Appends `d`: text concatenated, a call's pieces merged into it.
    void append(const Delta& d);
  };
  TextStream(const Tokenizer& tok, const Prepared& p, std::vector<std::string> stops);
  Delta push(int32_t token);
  Delta finish();
  // A stop string matched: the request is over ("stop"); cancel it.
  bool stopped() const { return stops_.stopped(); }
  int tool_calls() const { return tools_ ? tools_->calls() : 0; }  // calls begun so far

 private:
  Delta split(const std::string& text, bool last);
  Delta with_tool_calls(Delta d, bool last);

  StreamDecoder decoder_;
  StopMatcher stops_;
  std::optional<ReasoningParser> reasoning_;  // chat with an R1-style template
  std::optional<ToolCallStream> tools_;       // chat with tools: the content's tool calls
};

// Token counts of a response (completion tokens include the EOS token when it ended the request).
struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens found in the KV prefix cache (prompt_tokens_details)
};

// The "logprobs" object of a choice, from the generated tokens' logprobs. Chat:
// {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
// "refusal": null}; completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
// "text_offset"}. Tokens are their bytes as text (invalid UTF-8 replaced when sent).
class Logprobs {
 public:
  Logprobs(const Tokenizer& tok, Endpoint endpoint) : tok_(tok), endpoint_(endpoint) {}
  void add(int32_t token, float logprob, const std::vector<TokenLogprob>& top);
  bool empty() const { return entries_.empty(); }
  // The entries added since the last take(), as a choice's "logprobs" object.
  nlohmann::json take();

 private:
  std::string text_of(int32_t id) const;

  const Tokenizer& tok_;
  Endpoint endpoint_;
  nlohmann::json entries_ = nlohmann::json::array();
  int64_t offset_ = 0;  // completions' text_offset: bytes of the tokens before
};

// One generation's answer as its token events arrive, shared by `shoal serve` and `shoal batch`:
// usage, the text deltas (TextStream: detokenizer, stop strings, reasoning split), logprobs
// when asked (the stop id that ends the request has none), and the finish reason.
class Completion {
 public:
  Completion(const Tokenizer& tok, const Prepared& p, const CompletionRequest& req);
  // The text the event adds. A token that completes a stop string ends the answer ("stop"):
  // stopped_by_string() turns true and the caller cancels the request. The end event
  // (kStop/kLength) flushes the held text; kCancelled ends it without a finish reason.
  TextStream::Delta push(const TokenEvent& e);
  bool stopped_by_string() const { return text_.stopped(); }
  const std::string& finish() const { return finish_; }  // "stop", "length"; empty: not ended
  const Usage& usage() const { return usage_; }
  // The logprobs since the last take (null when the request did not ask for them).
  nlohmann::json take_logprobs() { return logprobs_ ? logprobs_->take() : nlohmann::json(nullptr); }
  bool has_logprobs() const { return logprobs_ && !logprobs_->empty(); }

 private:
  TextStream text_;
  std::optional<Logprobs> logprobs_;
  std::vector<int32_t> stop_ids_;
  Usage usage_;
  std::string finish_;
  std::string echo_;  // completions with echo: the prompt's text, sent before the first delta
};

// Response bodies. `finish`: "stop" / "length"; usage counts tokens (completion tokens include
// the EOS token when it ended the request).
nlohmann::json usage_json(const Usage& u);
// A random 64-bit value (per-thread generator seeded from std::random_device).
uint64_t random_u64();
// "chatcmpl-" / "cmpl-" + 24 random hex digits.
std::string new_response_id(Endpoint endpoint);

// logprobs: the choice's "logprobs" (null when not asked).
nlohmann::json full_response(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                             const TextStream::Delta& text, bool has_reasoning, const std::string& finish,
                             const Usage& usage, nlohmann::json logprobs = nullptr);
// OpenAI's tool_calls array: a message's whole calls ({id, type, function: {name, arguments}}),
// or a stream delta's pieces (with "index"; id, type and name only in a call's first piece).
nlohmann::json tool_calls_json(const std::vector<ToolCallStream::CallDelta>& calls, bool streamed);
// Adds one call's piece to `calls` (a new call, or more arguments of the last one).
void append_call(std::vector<ToolCallStream::CallDelta>& calls, const ToolCallStream::CallDelta& c);

// One chunk of a stream: chat `delta` {role?, content?, reasoning_content?}; completions take
// delta.content as their text. finish empty: null. include_usage: "usage": null on the chunk
// (OpenAI puts it on every chunk when stream_options.include_usage is set).
nlohmann::json stream_chunk(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                            const nlohmann::json& delta, const std::string& finish, bool include_usage,
                            nlohmann::json logprobs = nullptr);
// The last chunk when include_usage: no choices, the usage.
nlohmann::json usage_chunk(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                           const Usage& usage);

}  // namespace shoal::server
