// Choosing the next token from the head's logits, on the head rank: greedy, temperature,
// top_k, top_p, min_p, repetition/presence/frequency penalties, seeded draws and logprobs.
// A pure function of its arguments: the draw depends only on (seed, step), never on the other
// sequences of the batch or the order they are processed in. Safe to call from several threads
// at once (vocabulary-sized buffers are per thread). The exact order of operations, tie rules
// and the RNG are in docs/sampling.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/status.h"

namespace shoal {

inline constexpr int32_t kMaxTopLogprobs = 20;
inline constexpr float kMaxLogitBias = 100.0f;

// OpenAI's logit_bias: added to one token's logit (after the penalties) before anything else.
struct TokenBias {
  int32_t id;
  float bias;  // [-100, 100]
};

struct SamplingParams {
  float temperature = 1.0f;          // >= 0, finite; 0: greedy (argmax, ties -> lowest id)
  int32_t top_k = 0;                 // 0 or -1: off; >= 1: keep the k best (more than vocab: off)
  float top_p = 1.0f;                // (0, 1]; 1: off
  float min_p = 0.0f;                // [0, 1]; 0: off
  float repetition_penalty = 1.0f;   // > 0, finite; 1: off. Over prompt + output tokens
  float presence_penalty = 0.0f;     // [-2, 2]; minus once per token present in the output
  float frequency_penalty = 0.0f;    // [-2, 2]; minus count * penalty over the output
  std::optional<uint64_t> seed;      // none: the per-request seed the caller chose
  int32_t top_logprobs = -1;         // -1: no logprobs; 0..20: the chosen token's + that many best
  std::vector<TokenBias> logit_bias; // ascending ids, each once; ids must be below the vocabulary

  // An invalid_argument naming the first field out of range and its allowed range.
  Status validate() const;
};

struct TokenLogprob {
  int32_t id;
  float logprob;
};

struct SampleResult {
  int32_t id = -1;
  std::optional<float> logprob;    // when top_logprobs >= 0
  std::vector<TokenLogprob> top;   // top_logprobs entries, best first (ties: lower id first)
};

// Picks the next token. `logits` is the head's row for this sequence (the vocabulary); every
// entry must be finite or -inf (-inf: never chosen), with at least one finite. `history` holds
// the sequence's tokens so far, prompt ids first: history[0, n_prompt) is the prompt, the rest
// is what was generated. `seed` is used when p.seed is empty (the caller draws one per request
// and keeps it); `step` is the index of the token being generated (0 for the first). `p` must
// pass validate(); ids in history must be in [0, vocab).
SampleResult sample(std::span<const float> logits, const SamplingParams& p, std::span<const int32_t> history,
                    size_t n_prompt, uint64_t seed, int64_t step);

// What the head needs to choose one row's token besides its logits (the scheduler fills it in,
// the micro-batch carries it to the head rank). `history` travels only when a penalty is set
// (the penalties are the only step that reads it); then n_prompt counts its prompt part.
struct RowSampler {
  SamplingParams params;
  uint64_t seed = 0;     // the request's seed (params.seed, or one the server drew for it)
  int64_t step = 0;      // index of the token being generated
  std::vector<int32_t> history;
  size_t n_prompt = 0;
  // Constrained decoding: the tokens allowed (bit i of word i / 64, over the vocabulary); the
  // others get -inf before anything else. Empty: every token.
  std::vector<uint64_t> allowed;
};
bool needs_history(const SamplingParams& p);   // a penalty is set
bool changes_logits(const SamplingParams& p);  // a penalty or a logit bias is set

// The token of each of the m rows of logits [m, vocab]: with no samplers, each row's argmax
// (lowest id among ties) and nothing else; otherwise sample() with samplers[r] for row r, over
// its allowed tokens when it has a mask (logprobs are then those of the masked distribution).
std::vector<SampleResult> choose_tokens(const float* logits, int64_t m, int64_t vocab,
                                        const std::vector<RowSampler>& samplers);

// The steps of sample(), exposed for tests and for callers that need one of them.

// The penalties in place (repetition, then frequency, then presence), then logit_bias; results
// that would overflow are clamped to +-FLT_MAX.
void apply_penalties(std::span<float> logits, const SamplingParams& p, std::span<const int32_t> history,
                     size_t n_prompt);

// The uniform double in [0, 1) of draw (seed, step): counter-based (SplitMix64), no state.
double sample_uniform(uint64_t seed, int64_t step);

struct TokenProb {
  int32_t id;
  double prob;
};
// The exact distribution sample() draws from (after penalties, temperature, top_k, top_p,
// min_p and renormalisation): the kept tokens in ascending id order with their probabilities.
// Greedy (temperature 0) gives the argmax with probability 1.
std::vector<TokenProb> sampling_distribution(std::span<const float> logits, const SamplingParams& p,
                                             std::span<const int32_t> history, size_t n_prompt);

}  // namespace shoal
