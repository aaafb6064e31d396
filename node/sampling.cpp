// sample(): penalties on the raw logits -> greedy (temperature 0), or weights
// w = exp((z - max) / T) -> top_k -> top_p -> min_p -> renormalise -> one draw walking the kept
// tokens in id order with the uniform of (seed, step). Logprobs are the log-softmax of the
// penalised logits (before temperature and truncation). docs/sampling.md has the reasons.
//
// Cost for a vocabulary of 129,280, never a sort of the vocabulary: greedy is one vectorised
// pass; sampling adds a vectorised exp pass and a draw that skips blocks by their sums; top_k
// selects in one scan with a threshold; top_p buckets the tokens by log-weight and ranks only
// the bucket where the cumulative mass crosses top_p.
#include "node/sampling.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>

#include "common/check.h"

namespace shoal {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
constexpr float kInf = std::numeric_limits<float>::infinity();

// SplitMix64's output function (Steele, Lea, Flood 2014).
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// exp(x) for x <= 0 (or -inf), in double, written so that loops over it vectorise and give the
// same bits on every machine (no libm). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and
// the Taylor series of e^r to degree 11 (truncation error < 1e-14 relative). Below -708 (and
// for -inf) the result is 0: such a weight is below 1e-307 of the best token's.
inline double exp_nonpos(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split of ln 2
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShift = 0x1.8p52;                     // rounds to an integer in the low bits
  const bool under = !(x >= -708.0);
  const double xc = under ? -708.0 : x;
  const double t = xc * kLog2e + kShift;
  const double n = t - kShift;
  const double r = (xc - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^n from the low bits of t (n in [-1022, 0]): (n + 1023) << 52.
  const uint64_t bits = (std::bit_cast<uint64_t>(t) + 1023) << 52;
  return under ? 0.0 : p * std::bit_cast<double>(bits);
}

// Vocabulary-sized buffers, per thread and reused: allocating them on every call would map
// fresh pages every time. Nothing carries over from one call to the next; `seen` and `count`
// are all zero between calls.
struct Scratch {
  std::vector<float> z;        // the penalised row
  std::vector<double> w;       // weights per id
  std::vector<double> e;       // exp(z - max) for the log-softmax
  std::vector<uint16_t> bin;   // top_p buckets
  std::vector<int32_t> edge;   // the bucket where top_p is crossed
  std::vector<double> part;    // top_p histograms
  std::vector<uint8_t> seen;   // repetition penalty
  std::vector<int32_t> count;  // frequency and presence penalties
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

template <typename T>
std::span<T> buffer(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return {v.data(), n};
}

// The penalised row (a view of the caller's when no penalty applies), its max and argmax.
struct Row {
  std::span<const float> z;
  float max = -kInf;
  int32_t argmax = -1;  // the lowest id among the maxima
};


// Sum in eight interleaved partial sums (vectorises; a fixed order, so the same bits every call).
double lane_sum(const double* x, size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t l = 0; l < 8; ++l) acc[l] += x[i + l];
  for (size_t l = 0; i < n; ++i, ++l) acc[l] += x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// out[i] = exp((z[i] - max) / T): the token's weight relative to the best one (which has 1).
void weights(std::span<const float> z, double max, double T, double* out) {
  for (size_t i = 0; i < z.size(); ++i) out[i] = exp_nonpos((static_cast<double>(z[i]) - max) / T);
}

Row prepare(std::span<const float> logits, const SamplingParams& p, std::span<const int32_t> history,
            size_t n_prompt) {
  SHOAL_CHECK(!logits.empty());
  SHOAL_CHECK_LE(logits.size(), static_cast<size_t>(std::numeric_limits<int32_t>::max()));
  SHOAL_CHECK(p.validate().ok());
  Row r;
  if (changes_logits(p)) {
    const std::span<float> copy = buffer(scratch().z, logits.size());
    std::copy(logits.begin(), logits.end(), copy.begin());
    apply_penalties(copy, p, history, n_prompt);
    r.z = copy;
  } else {
    SHOAL_CHECK_LE(n_prompt, history.size());
    r.z = logits;
  }
  // The max, and the largest magnitude as bits (above +inf's: a NaN), in 16 lanes so that the
  // loop vectorises; then the first id holding the max.
  constexpr size_t L = 16;
  constexpr uint32_t kInfBits = 0x7f800000u;
  const std::span<const float> z = r.z;
  float mx[L];
  uint32_t mag[L];
  for (size_t l = 0; l < L; ++l) mx[l] = -kInf, mag[l] = 0;
  size_t i = 0;
  for (; i + L <= z.size(); i += L)
    for (size_t l = 0; l < L; ++l) {
      const float v = z[i + l];
      const uint32_t m = std::bit_cast<uint32_t>(v) & 0x7fffffffu;
      mx[l] = v > mx[l] ? v : mx[l];
      mag[l] = m > mag[l] ? m : mag[l];
    }
  for (size_t l = 0; i < z.size(); ++i, ++l) {
    const uint32_t m = std::bit_cast<uint32_t>(z[i]) & 0x7fffffffu;
    mx[l] = z[i] > mx[l] ? z[i] : mx[l];
    mag[l] = m > mag[l] ? m : mag[l];
  }
  uint32_t max_mag = 0;
  for (size_t l = 0; l < L; ++l) r.max = std::max(r.max, mx[l]), max_mag = std::max(max_mag, mag[l]);
  SHOAL_CHECK(max_mag <= kInfBits && r.max < kInf && "sample: logits must be finite or -inf");
  SHOAL_CHECK(r.max > -kInf && "sample: at least one logit must be finite");
  r.argmax = static_cast<int32_t>(std::find(z.begin(), z.end(), r.max) - z.begin());
  return r;
}

// a ranks before b: higher logit first, then lower id.
struct Before {
  std::span<const float> z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

// The m best tokens, ranked, in one scan: a buffer of up to 2m candidates cut back to m with
// nth_element; later tokens not above the m-th logit so far cannot enter (a tie ranks after it:
// its id is higher).
std::vector<int32_t> best_tokens(std::span<const float> z, size_t m) {
  const Before before{z};
  std::vector<int32_t> buf;
  m = std::min(m, z.size());
  if (m == 0) return buf;
  buf.reserve(2 * m);
  float floor = -kInf;
  bool full = false;
  for (size_t i = 0; i < z.size(); ++i) {
    if (full && !(z[i] > floor)) continue;
    buf.push_back(static_cast<int32_t>(i));
    if (buf.size() == 2 * m) {
      std::nth_element(buf.begin(), buf.begin() + (m - 1), buf.end(), before);
      buf.resize(m);
      floor = z[buf[m - 1]];
      full = true;
    }
  }
  if (buf.size() > m) {
    std::nth_element(buf.begin(), buf.begin() + (m - 1), buf.end(), before);
    buf.resize(m);
  }
  std::sort(buf.begin(), buf.end(), before);
  return buf;
}

// Ranks `ids` (best first) only as far as needed: the length of the shortest ranked prefix whose
// weight, added to `cum`, reaches `target` (all of them when none does). Ranks growing chunks
// with nth_element, so a short prefix costs one linear pass.
size_t prefix_reaching(std::span<int32_t> ids, std::span<const float> z, const double* w, double cum,
                       double target) {
  const Before before{z};
  size_t sorted = 0, chunk = 256;
  while (sorted < ids.size()) {
    const size_t end = std::min(ids.size(), sorted + chunk);
    if (end < ids.size()) std::nth_element(ids.begin() + sorted, ids.begin() + end, ids.end(), before);
    std::sort(ids.begin() + sorted, ids.begin() + end, before);
    for (size_t j = sorted; j < end; ++j) {
      cum += w[ids[j]];
      if (cum >= target) return j + 1;
    }
    sorted = end;
    chunk *= 8;
  }
  return ids.size();
}

// What the draw walks: the kept tokens and their weights (not normalised), either as one weight
// per vocabulary id (0: not kept) or, after a top_k, as a list in ascending id order.
struct Dist {
  std::span<double> w;
  std::vector<int32_t> ids;  // listed: the kept ids, ascending, and their weights
  std::vector<double> list_w;
  bool listed = false;
};

// top_p over the whole vocabulary: zeroes the weights outside the nucleus. The ranking is
// bucketed by log-weight, so only the bucket where the cumulative mass crosses top_p is sorted.
// A token j in the nucleus has less than top_p of the mass ranked before it, so the rest, at
// most V * w_j, is above (1 - top_p) of it: tokens with w <= (1 - top_p) * mass / V are never
// in it; half that bound is the floor, leaving room for rounding.
void nucleus(std::span<const float> z, double max, double T, double top_p, std::span<double> w) {
  constexpr size_t kBins = 4096;
  constexpr uint16_t kOut = kBins;  // below the floor: a bin of its own, after all others
  const size_t V = z.size();
  const double mass = lane_sum(w.data(), V);
  const double target = top_p * mass;
  const double floor = 0.5 * (1.0 - top_p) * mass / static_cast<double>(V);  // < 0.5
  const double scale = static_cast<double>(kBins) / -std::log(floor);          // bins over [log floor, 0]
  // bin = floor(-log(w) * scale) from the logit: (max - z) / T >= 0 is monotone in z, so a
  // better token never has a later bin.
  const double f = scale / T;
  const std::span<uint16_t> bin = buffer(scratch().bin, V);
  for (size_t i = 0; i < V; ++i) {
    const double b = std::min((max - static_cast<double>(z[i])) * f, static_cast<double>(kBins - 1));
    bin[i] = w[i] >= floor ? static_cast<uint16_t>(static_cast<int32_t>(b)) : kOut;
  }
  // The mass per bin, in four interleaved histograms (independent chains of additions; no
  // branches: kOut has a slot too).
  constexpr size_t kSlots = kBins + 1;
  const std::span<double> part = buffer(scratch().part, 4 * kSlots);
  std::fill(part.begin(), part.end(), 0.0);
  size_t i = 0;
  for (; i + 4 <= V; i += 4)
    for (size_t l = 0; l < 4; ++l) part[l * kSlots + bin[i + l]] += w[i + l];
  for (size_t l = 0; i < V; ++i, ++l) part[l * kSlots + bin[i]] += w[i];
  std::vector<double> bin_mass(kBins);
  for (size_t b = 0; b < kBins; ++b)
    bin_mass[b] = (part[b] + part[kSlots + b]) + (part[2 * kSlots + b] + part[3 * kSlots + b]);
  double cum = 0;
  size_t cross = kBins;
  for (size_t b = 0; b < kBins; ++b) {
    if (cum + bin_mass[b] >= target) {
      cross = b;
      break;
    }
    cum += bin_mass[b];
  }
  if (cross == kBins) {  // rounding: keep every candidate
    for (i = 0; i < V; ++i) w[i] = bin[i] == kOut ? 0.0 : w[i];
    return;
  }
  const std::span<int32_t> all_edge = buffer(scratch().edge, V);
  size_t n_edge = 0;
  for (i = 0; i < V; ++i)  // one bucket of thousands: a well-predicted branch
    if (bin[i] == cross) all_edge[n_edge++] = static_cast<int32_t>(i);
  const std::span<int32_t> edge = all_edge.first(n_edge);
  const size_t len = prefix_reaching(edge, z, w.data(), cum, target);
  for (i = 0; i < V; ++i) w[i] = bin[i] > cross ? 0.0 : w[i];  // kOut included
  for (size_t j = len; j < edge.size(); ++j) w[edge[j]] = 0;
}

Dist build(const Row& r, const SamplingParams& p) {
  const std::span<const float> z = r.z;
  const size_t V = z.size();
  const double max = r.max;
  const double T = p.temperature;
  const double min_w = p.min_p;  // the best token has w = 1: p_i >= min_p * p_max  <=>  w_i >= min_p
  const size_t k = (p.top_k >= 1 && static_cast<size_t>(p.top_k) < V) ? static_cast<size_t>(p.top_k) : V;
  Dist d;
  if (k == V) {
    d.w = buffer(scratch().w, V);
    weights(z, max, T, d.w.data());
    if (p.top_p < 1.0f) nucleus(z, max, T, p.top_p, d.w);
    if (min_w > 0)
      for (double& w : d.w) w = w >= min_w ? w : 0.0;
    return d;
  }
  // top_k: the k best, ranked; top_p within them (renormalised over them); min_p.
  d.listed = true;
  std::vector<int32_t> ranked = best_tokens(z, k);
  std::vector<double> rw(ranked.size());
  for (size_t j = 0; j < ranked.size(); ++j)
    rw[j] = exp_nonpos((static_cast<double>(z[ranked[j]]) - max) / T);
  size_t len = ranked.size();
  if (p.top_p < 1.0f) {
    double mass = 0;
    for (double w : rw) mass += w;
    const double target = static_cast<double>(p.top_p) * mass;
    double cum = 0;
    for (size_t j = 0; j < ranked.size(); ++j) {
      cum += rw[j];
      if (cum >= target) {
        len = j + 1;
        break;
      }
    }
  }
  std::vector<size_t> order;
  for (size_t j = 0; j < len; ++j)
    if (rw[j] >= min_w) order.push_back(j);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranked[a] < ranked[b]; });
  for (size_t j : order) {
    d.ids.push_back(ranked[j]);
    d.list_w.push_back(rw[j]);
  }
  d.w = d.list_w;
  return d;
}

int32_t id_at(const Dist& d, size_t j) { return d.listed ? d.ids[j] : static_cast<int32_t>(j); }

// The total weight, in blocks of kBlock entries (each a lane_sum), summed in order.
constexpr size_t kBlock = 1024;
std::vector<double> block_sums(const Dist& d) {
  std::vector<double> sums((d.w.size() + kBlock - 1) / kBlock);
  for (size_t b = 0; b < sums.size(); ++b)
    sums[b] = lane_sum(d.w.data() + b * kBlock, std::min(kBlock, d.w.size() - b * kBlock));
  return sums;
}

double total_weight(const std::vector<double>& sums) {
  double total = 0;
  for (double s : sums) total += s;
  return total;
}

// Inverse CDF in id order: the first kept token whose cumulative weight exceeds u * total. The
// cumulative weight skips whole blocks by their sums, then adds the tokens of the block where it
// crosses one by one.
int32_t draw(const Dist& d, double u) {
  const std::vector<double> sums = block_sums(d);
  const double target = u * total_weight(sums);
  double acc = 0;
  int32_t last = -1;
  for (size_t b = 0; b < sums.size(); ++b) {
    if (!(acc + sums[b] > target)) {
      acc += sums[b];
      continue;
    }
    const size_t end = std::min(d.w.size(), (b + 1) * kBlock);
    for (size_t j = b * kBlock; j < end; ++j) {
      if (!(d.w[j] > 0)) continue;
      acc += d.w[j];
      last = id_at(d, j);
      if (acc > target) return last;
    }
  }
  // u * total rounded up to the total: the last kept token.
  for (size_t j = d.w.size(); j-- > 0;)
    if (d.w[j] > 0) return id_at(d, j);
  SHOAL_CHECK(false && "sample: nothing kept");
  return last;
}

}  // namespace

Status SamplingParams::validate() const {
  if (!(std::isfinite(temperature) && temperature >= 0.0f))
    return invalid_argument("temperature must be a finite number >= 0 (0 is greedy), got " + num(temperature));
  if (top_k < -1)
    return invalid_argument("top_k must be >= 1, or 0 or -1 for no top-k, got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) return invalid_argument("top_p must be in (0, 1], got " + num(top_p));
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return invalid_argument("min_p must be in [0, 1], got " + num(min_p));
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f))
    return invalid_argument("repetition_penalty must be a finite number > 0 (1 is none), got " +
                            num(repetition_penalty));
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    return invalid_argument("presence_penalty must be in [-2, 2], got " + num(presence_penalty));
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    return invalid_argument("frequency_penalty must be in [-2, 2], got " + num(frequency_penalty));
  if (top_logprobs < -1 || top_logprobs > kMaxTopLogprobs)
    return invalid_argument("top_logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) +
                            "], or -1 for no logprobs, got " + std::to_string(top_logprobs));
  for (size_t i = 0; i < logit_bias.size(); ++i) {
    const TokenBias& b = logit_bias[i];
    if (b.id < 0) return invalid_argument("logit_bias token id " + std::to_string(b.id) + " is negative");
    if (i > 0 && b.id <= logit_bias[i - 1].id)
      return invalid_argument("logit_bias token ids must be ascending and distinct, got " +
                              std::to_string(logit_bias[i - 1].id) + " then " + std::to_string(b.id));
    if (!(b.bias >= -kMaxLogitBias && b.bias <= kMaxLogitBias))
      return invalid_argument("logit_bias for token " + std::to_string(b.id) + " must be in [-100, 100], got " +
                              num(b.bias));
  }
  return {};
}

void apply_penalties(std::span<float> z, const SamplingParams& p, std::span<const int32_t> history,
                     size_t n_prompt) {
  SHOAL_CHECK_LE(n_prompt, history.size());
  const size_t V = z.size();
  for (int32_t id : history) SHOAL_CHECK(id >= 0 && static_cast<size_t>(id) < V);
  // The new value in double, rounded to float once; -inf stays -inf, overflow is clamped.
  auto store = [](float& slot, double v) {
    if (std::isinf(slot) && slot < 0) return;
    slot = static_cast<float>(std::clamp(v, -static_cast<double>(FLT_MAX), static_cast<double>(FLT_MAX)));
  };
  if (p.repetition_penalty != 1.0f) {
    const double rp = p.repetition_penalty;
    std::vector<uint8_t>& seen = scratch().seen;
    if (seen.size() < V) seen.resize(V, 0);
    for (int32_t id : history) {
      if (seen[id]) continue;
      seen[id] = 1;
      const double v = z[id];
      store(z[id], v > 0 ? v / rp : v * rp);
    }
    for (int32_t id : history) seen[id] = 0;
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    const auto output = history.subspan(n_prompt);
    std::vector<int32_t>& count = scratch().count;
    if (count.size() < V) count.resize(V, 0);
    for (int32_t id : output) ++count[id];
    for (int32_t id : output) {
      if (count[id] == 0) continue;  // done already
      const double v = static_cast<double>(z[id]) - static_cast<double>(p.frequency_penalty) * count[id] -
                       static_cast<double>(p.presence_penalty);
      store(z[id], v);
      count[id] = 0;
    }
  }
  for (const TokenBias& b : p.logit_bias) {
    SHOAL_CHECK(b.id >= 0 && static_cast<size_t>(b.id) < V);
    store(z[b.id], static_cast<double>(z[b.id]) + static_cast<double>(b.bias));
  }
}

double sample_uniform(uint64_t seed, int64_t step) {
  const uint64_t key = mix64(seed + kGolden);
  const uint64_t h = mix64(key + (static_cast<uint64_t>(step) + 1) * kGolden);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

std::vector<TokenProb> sampling_distribution(std::span<const float> logits, const SamplingParams& p,
                                             std::span<const int32_t> history, size_t n_prompt) {
  const Row r = prepare(logits, p, history, n_prompt);
  if (p.temperature == 0.0f) return {{r.argmax, 1.0}};
  const Dist d = build(r, p);
  const double total = total_weight(block_sums(d));
  std::vector<TokenProb> out;
  for (size_t j = 0; j < d.w.size(); ++j)
    if (d.w[j] > 0) out.push_back({id_at(d, j), d.w[j] / total});
  return out;
}

SampleResult sample(std::span<const float> logits, const SamplingParams& p, std::span<const int32_t> history,
                    size_t n_prompt, uint64_t seed, int64_t step) {
  SHOAL_CHECK_LE(int64_t{0}, step);
  const Row r = prepare(logits, p, history, n_prompt);
  SampleResult out;
  out.id = p.temperature == 0.0f ? r.argmax : draw(build(r, p), sample_uniform(p.seed.value_or(seed), step));
  if (p.top_logprobs >= 0) {
    // log-softmax of the penalised logits: z_i - max - log(sum_j exp(z_j - max)).
    const std::span<double> e = buffer(scratch().e, r.z.size());
    weights(r.z, r.max, 1.0, e.data());
    const double shift = static_cast<double>(r.max) + std::log(lane_sum(e.data(), e.size()));
    auto logprob = [&](int32_t id) { return static_cast<float>(static_cast<double>(r.z[id]) - shift); };
    out.logprob = logprob(out.id);
    for (int32_t id : best_tokens(r.z, static_cast<size_t>(p.top_logprobs))) out.top.push_back({id, logprob(id)});
  }
  return out;
}

bool needs_history(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
}

bool changes_logits(const SamplingParams& p) { return needs_history(p) || !p.logit_bias.empty(); }

std::vector<SampleResult> choose_tokens(const float* logits, int64_t m, int64_t vocab,
                                        const std::vector<RowSampler>& samplers) {
  SHOAL_CHECK(samplers.empty() || int64_t(samplers.size()) == m);
  std::vector<SampleResult> out(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) {
    const float* l = logits + r * vocab;
    if (samplers.empty()) {
      out[size_t(r)].id = int32_t(std::max_element(l, l + vocab) - l);
      continue;
    }
    const RowSampler& s = samplers[size_t(r)];
    if (!s.allowed.empty()) {
      SHOAL_CHECK_EQ(s.allowed.size(), size_t((vocab + 63) / 64));
      thread_local std::vector<float> masked;
      masked.assign(l, l + vocab);
      for (int64_t i = 0; i < vocab; ++i)
        if (!((s.allowed[size_t(i >> 6)] >> (i & 63)) & 1)) masked[size_t(i)] = -kInf;
      l = masked.data();
    }
    out[size_t(r)] = sample({l, size_t(vocab)}, s.params, s.history, s.n_prompt, s.seed, s.step);
  }
  return out;
}

}  // namespace shoal
