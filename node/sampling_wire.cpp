#include "node/sampling_wire.h"

#include <algorithm>
#include <string>

namespace shoal {

void to_wire(const RowSampler& s, wire::RowSampling& out) {
  const SamplingParams& p = s.params;
  out.set_temperature(p.temperature);
  out.set_top_k(p.top_k);
  out.set_top_p(p.top_p);
  out.set_min_p(p.min_p);
  out.set_repetition_penalty(p.repetition_penalty);
  out.set_presence_penalty(p.presence_penalty);
  out.set_frequency_penalty(p.frequency_penalty);
  out.set_seed(p.seed.value_or(s.seed));
  out.set_step(s.step);
  out.set_top_logprobs(p.top_logprobs);
  for (const TokenBias& b : p.logit_bias) {
    out.add_bias_ids(b.id);
    out.add_bias_values(b.bias);
  }
  if (needs_history(p)) {
    out.mutable_history()->Add(s.history.begin(), s.history.end());
    out.set_n_prompt(int64_t(s.n_prompt));
  }
  if (!s.allowed.empty()) {
    std::string& bits = *out.mutable_allowed();
    bits.resize(s.allowed.size() * 8);
    for (size_t w = 0; w < s.allowed.size(); ++w)
      for (size_t b = 0; b < 8; ++b) bits[w * 8 + b] = char(uint8_t(s.allowed[w] >> (8 * b)));
  }
}

StatusOr<RowSampler> from_wire(const wire::RowSampling& w, int64_t vocab) {
  RowSampler s;
  SamplingParams& p = s.params;
  p.temperature = w.temperature();
  p.top_k = w.top_k();
  p.top_p = w.top_p();
  p.min_p = w.min_p();
  p.repetition_penalty = w.repetition_penalty();
  p.presence_penalty = w.presence_penalty();
  p.frequency_penalty = w.frequency_penalty();
  p.top_logprobs = w.top_logprobs();
  if (w.bias_ids_size() != w.bias_values_size())
    return invalid_argument("sampling logit_bias has " + std::to_string(w.bias_ids_size()) + " ids but " +
                            std::to_string(w.bias_values_size()) + " values");
  for (int i = 0; i < w.bias_ids_size(); ++i) {
    if (w.bias_ids(i) >= vocab)
      return invalid_argument("sampling logit_bias names token " + std::to_string(w.bias_ids(i)) +
                              ", outside the vocabulary of " + std::to_string(vocab));
    p.logit_bias.push_back({w.bias_ids(i), w.bias_values(i)});
  }
  SHOAL_RETURN_IF_ERROR(p.validate());
  s.seed = w.seed();
  s.step = w.step();
  if (s.step < 0) return invalid_argument("sampling step " + std::to_string(s.step) + " is negative");
  s.history.assign(w.history().begin(), w.history().end());
  if (w.n_prompt() < 0 || size_t(w.n_prompt()) > s.history.size())
    return invalid_argument("sampling n_prompt " + std::to_string(w.n_prompt()) + " is outside the history of " +
                            std::to_string(s.history.size()) + " tokens");
  s.n_prompt = size_t(w.n_prompt());
  for (int32_t id : s.history)
    if (id < 0 || id >= vocab)
      return invalid_argument("sampling history holds token " + std::to_string(id) + ", outside the vocabulary of " +
                              std::to_string(vocab));
  if (!w.allowed().empty()) {
    const size_t words = size_t((vocab + 63) / 64);
    if (w.allowed().size() != words * 8)
      return invalid_argument("sampling allowed-token mask has " + std::to_string(w.allowed().size()) +
                              " bytes, not the " + std::to_string(words * 8) + " of a vocabulary of " +
                              std::to_string(vocab));
    s.allowed.assign(words, 0);
    for (size_t i = 0; i < words * 8; ++i) s.allowed[i / 8] |= uint64_t(uint8_t(w.allowed()[i])) << (8 * (i % 8));
    // Bits past the vocabulary are ignored; at least one token must remain.
    if (vocab % 64) s.allowed.back() &= (uint64_t(1) << (vocab % 64)) - 1;
    if (std::all_of(s.allowed.begin(), s.allowed.end(), [](uint64_t x) { return x == 0; }))
      return invalid_argument("sampling allowed-token mask allows no token");
  }
  return s;
}

void logprobs_to_wire(const std::vector<SampleResult>& rows, wire::Result& out) {
  if (std::none_of(rows.begin(), rows.end(), [](const SampleResult& r) { return r.logprob.has_value(); })) return;
  for (const SampleResult& r : rows) {
    wire::RowLogprobs* w = out.add_logprobs();
    if (!r.logprob) continue;
    w->set_present(true);
    w->set_logprob(*r.logprob);
    for (const TokenLogprob& t : r.top) {
      w->add_top_ids(t.id);
      w->add_top_logprobs(t.logprob);
    }
  }
}

bool logprobs_from_wire(const wire::Result& r, std::vector<SampleResult>& rows) {
  if (r.logprobs_size() != 0 && size_t(r.logprobs_size()) != rows.size()) return false;
  for (int i = 0; i < r.logprobs_size(); ++i) {
    const wire::RowLogprobs& w = r.logprobs(i);
    if (!w.present()) continue;
    rows[size_t(i)].logprob = w.logprob();
    for (int k = 0; k < w.top_ids_size() && k < w.top_logprobs_size(); ++k)
      rows[size_t(i)].top.push_back({w.top_ids(k), w.top_logprobs(k)});
  }
  return true;
}

}  // namespace shoal
