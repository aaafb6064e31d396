// The OpenAI batch file format (docs/batch.md): one request per input line,
//   {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body"}
// and one record per output line,
//   {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}
//   {"id", "custom_id", "response": null, "error": {"code", "message", "line"}}
// This file checks request lines (their bodies as `shoal serve` does: serve/openai.h)
// and builds records; runner.h drives them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "serve/openai.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal::batch {

// Why a line gets an error record instead of a response. Codes (docs/batch.md):
// invalid_json, missing_custom_id, duplicate_custom_id, invalid_method, invalid_url,
// invalid_body, unsupported_parameter, context_length_exceeded, server_error.
struct RecordError {
  std::string code;
  std::string message;
};

// What is known of a line before its request is checked: its JSON and its custom_id.
struct LineHead {
  int64_t line = 0;                       // 1-based, counting every line of the input
  nlohmann::json request;                 // the parsed line (null when error is set)
  std::optional<std::string> custom_id;   // a non-empty string custom_id
  std::optional<RecordError> error;       // invalid_json or missing_custom_id
};
LineHead read_line_head(std::string_view text, int64_t line);

// The resume key of a line: "c:<custom_id>" for the line that owns its custom_id (the first
// line that names it), "l:<line>" for every other line (not JSON, no custom_id, a duplicate).
std::string custom_id_key(const std::string& custom_id);
std::string line_key(int64_t line);

// The key of a record read back from the output file, or nothing when the record is not one
// this runner writes (then the file is cut there on resume).
std::optional<std::string> record_key(const nlohmann::json& record);

// A request ready for the GenerationService: its body as `shoal serve` reads it
// (server::parse_request, server::prepare_request).
struct PreparedRequest {
  server::CompletionRequest request;  // the parsed body: endpoint, stop strings, logprobs, ...
  server::Prepared prepared;          // prompt, max_tokens, EOS, sampling and seed; reasoning split
};

struct PrepareOptions {
  const Tokenizer* tokenizer = nullptr;
  std::string model;           // the runner's model name: stands for a body's "model" that names no adapter
  std::vector<std::string> adapters;  // the named LoRA adapters served, by id (a body's "model" picks one)
  int64_t vocab_size = 0;      // prompt token ids must be below it
  int64_t max_seq_len = 0;     // prompt + max_tokens must fit
  int32_t eos_id = -1;         // stops every request (-1: none)
  OutputGrammars* grammars = nullptr;  // compiles response_format and forced tool calls
};

// The seed of a request whose body gives none: FNV-1a (64-bit) of its custom_id, the same in
// every run and build, so a rerun after a kill samples the same text.
uint64_t default_seed(std::string_view custom_id);

// Checks method and url of a request line (its custom_id was already checked), then reads its
// body as `shoal serve` does; stream must be off. Its "model" picks a LoRA adapter by name; any
// other name (written for another server, or none) stands for the base model when no adapters
// are served, and is an error naming the served models when some are.
std::variant<PreparedRequest, RecordError> prepare_request(const nlohmann::json& request, const std::string& custom_id,
                                                           const PrepareOptions& o);

// Records keep their keys in the OpenAI API's order.
using Record = nlohmann::ordered_json;

// body: server::full_response.
Record response_record(const std::string& custom_id, const nlohmann::json& body);
// custom_id: the line's custom_id when it has one (a string), else null.
Record error_record(const std::optional<std::string>& custom_id, const RecordError& e, int64_t line);

// One output line (no newline): compact JSON, UTF-8, invalid bytes replaced.
std::string dump_line(const Record& record);

// prefix + 32 random hex digits (ids that differ between runs).
std::string random_id(std::string_view prefix);

}  // namespace shoal::batch
