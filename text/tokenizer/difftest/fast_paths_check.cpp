// Checks the tokenizer's fast paths against plain definitions of what they compute:
//  1. char_flags (native_regex.h) for every code point against Oniguruma matching \p{L},
//     \p{M}, \p{N}, \p{P}, \p{S} and \s;
//  2. that the Split patterns of the DeepSeek-V3, Qwen2.5 and Llama 3.1 fixtures are the ones
//     with a native matcher;
//  3. each native pattern's matches against Oniguruma's on every encode.jsonl text of those
//     fixtures, on random texts drawn from the characters that decide these patterns, plus
//     random ones, and on an apostrophe before every code point (the (?i) contractions);
//  4. the BPE merge loop against "merge the lowest-rank pair, leftmost, until none is left",
//     on random merge tables (ranks in any order) and random runs over small alphabets;
//  5. NFC (normalizer.h): nfc_append, which runs the algorithm only around characters that fail
//     the quick check, against the algorithm over the whole text, on every code point between
//     characters that compose or reorder, and the quick check on every code point.
//
//   ninja tokenizer_fast_paths_check && ./tokenizer_fast_paths_check [RANDOM_TEXTS] [SEED]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/tokenizer/bpe.h"
#include "text/tokenizer/native_regex.h"
#include "text/tokenizer/normalizer.h"
#include "text/tokenizer/onig_regex.h"
#include "text/tokenizer/utf8.h"

namespace {

using shoal::Regex;
using shoal::Span;

std::unique_ptr<Regex> compile(const std::string& pattern) {
  auto re = Regex::compile(pattern);
  if (!re.ok()) {
    std::fprintf(stderr, "%s\n", re.status().to_string().c_str());
    std::exit(2);
  }
  return std::move(re.value());
}

int check_flags() {
  std::string all;
  std::vector<uint32_t> offset_to_cp;  // by byte offset, for the code point starting there
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    offset_to_cp.resize(all.size() + 1);
    offset_to_cp[all.size()] = c;
    shoal::utf8::append(all, c);
  }
  const char* patterns[] = {R"(\p{L})", R"(\p{M})", R"(\p{N})", R"(\p{P})", R"(\p{S})", R"(\s)"};
  std::vector<uint8_t> want(0x110000, 0);
  for (int k = 0; k < 6; ++k) {
    std::vector<Span> found;
    compile(patterns[k])->find_all_oniguruma(all, found);
    for (const Span& m : found) want[offset_to_cp[m.begin]] |= uint8_t(1u << k);
  }
  int bad = 0;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    if (shoal::char_flags(c) != want[c] && bad++ < 5)
      std::printf("  U+%04X: flags %d, Oniguruma %d\n", unsigned(c), shoal::char_flags(c), want[c]);
  }
  std::printf("character classes: %d of 1112064 code points differ\n", bad);
  return bad;
}

int check_fixture_patterns(const std::string& dir) {
  std::ifstream in(dir + "/tokenizer.json");
  const auto j = nlohmann::json::parse(in);
  int bad = 0, n = 0;
  for (const auto& step : j["pre_tokenizer"]["pretokenizers"]) {
    if (step["type"] != "Split") continue;
    ++n;
    bad += shoal::native_find_all(step["pattern"]["Regex"].get<std::string>()) == nullptr;
  }
  std::printf("%s Split patterns: %d, %d without a native matcher\n", dir.substr(dir.rfind('/') + 1).c_str(), n, bad);
  return bad;
}

// Characters around every boundary these patterns test, and random code points.
std::string random_text(std::mt19937& rng) {
  static const std::vector<char32_t> pool = {
      ' ', ' ', ' ', '\n', '\n', '\r', '\t', 0x0B, 0x0C, 0x1C, 0x1F, 0x00, 0x7F, 0x85, 0xA0, 0x1680, 0x2000,
      0x200A, 0x200B, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0x180E, 0xFEFF, 'a', 'z', 'A', 'Z', 'x', 'x',
      0xE9, 0xDF, 0x3B1, 0x416, 0x5D0, 0x627, 0x915, 0x93F, 0x301, 0x300, 0xE01, 0xE31, 0x1D400, 0x20000, 0x1D167,
      '0', '5', '9', 0x663, 0xB2, 0xBD, 0x216B, 0x1D7D8, 0x1F100, '!', '"', '#', '$', '\'', '-', '.', '/', ':',
      '@', '[', '\\', ']', '^', '_', '`', '{', '|', '~', 0xA7, 0xAB, 0x2014, 0x2026, 0x201C, 0x20AC, 0xA9,
      0x1F600, 0x1F3FB, 0x200D, 0xFE0F, 0x3002, 0xFF0C, 0x4E00, 0x4E2D, 0x9FA5, 0x9FA6, 0x3040, 0x3041, 0x309F,
      0x30A0, 0x30FF, 0x3100, 0x303F, 0x3400, 0xAC00, 0x378, 0x1FABB, 0xE000, 0x10FFFF, 0x31350,
      // The (?i) contractions of the Qwen2 / Llama 3 patterns, and characters that fold near them.
      '\'', '\'', '\'', 's', 'S', 't', 'T', 'r', 'R', 'e', 'E', 'v', 'V', 'm', 'M', 'l', 'L', 'd', 'D', 0x17F,
      0x212A, 0xDF, 0x1E9E, 0xFB05, 0xFB06, 0x2019, 0x130, 0x131};
  std::string s;
  const int n = int(rng() % 24);
  for (int i = 0; i < n; ++i) {
    char32_t c = pool[rng() % pool.size()];
    if (rng() % 8 == 0) {
      c = rng() % 4 ? rng() % 0x3400 : rng() % 0x30000;  // mostly the alphabetic scripts
      if (c >= 0xD800 && c <= 0xDFFF) c = 'q';
    }
    const int repeat = rng() % 6 == 0 ? 1 + int(rng() % 5) : 1;
    for (int r = 0; r < repeat; ++r) shoal::utf8::append(s, c);
  }
  return s;
}

// An apostrophe before every code point, alone and before the second letters of 're, 've, 'll.
std::vector<std::string> contraction_texts() {
  std::vector<std::string> texts;
  for (const char* after : {"", "e", "E", "l", "L", "x"}) {
    std::string text;
    for (char32_t c = 0; c <= 0x10FFFF; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      text += '\'';
      shoal::utf8::append(text, c);
      text += after;
      text += '\n';
    }
    texts.push_back(std::move(text));
  }
  return texts;
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

int check_matches(const std::vector<std::string>& dirs, long random_texts, unsigned seed) {
  const std::vector<std::string> contractions = contraction_texts();
  std::vector<std::string> texts;
  for (const std::string& dir : dirs) {
    std::ifstream in(dir + "/encode.jsonl");
    for (std::string line; std::getline(in, line);) texts.push_back(nlohmann::json::parse(line)["text"]);
  }
  std::mt19937 rng(seed);
  for (long i = 0; i < random_texts; ++i) texts.push_back(random_text(rng));
  int bad = 0;
  for (const char* pattern : shoal::kNativePatterns) {
    const auto re = compile(pattern);
    if (!re->is_native()) {
      std::printf("no native matcher for /%s/\n", pattern);
      ++bad;
    }
    long differ = 0;
    const bool folds = std::string_view(pattern).find("(?i:") != std::string_view::npos;
    for (const std::string& text : folds ? concat(texts, contractions) : texts) {
      std::vector<Span> native, onig;
      re->find_all(text, native);
      re->find_all_oniguruma(text, onig);
      const bool same = native.size() == onig.size() &&
                        std::equal(native.begin(), native.end(), onig.begin(), [](Span a, Span b) {
                          return a.begin == b.begin && a.end == b.end;
                        });
      if (!same && differ++ < 3) {
        const auto shown =
            nlohmann::json(text.substr(0, 200)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        std::printf("  %s differs on %s\n", nlohmann::json(pattern).dump().c_str(), shown.c_str());
      }
    }
    std::printf("%zu texts, %ld differ: %s\n", texts.size() + (folds ? contractions.size() : 0), differ,
                nlohmann::json(pattern).dump().c_str());
    bad += differ != 0;
  }
  return bad;
}

// The definition: merge the adjacent pair of lowest rank, leftmost among equals, until no
// adjacent pair has a merge.
std::vector<int32_t> merge_slowly(const shoal::MergeMap& merges, std::vector<int32_t> ids) {
  for (;;) {
    size_t best = ids.size();
    const shoal::MergeMap::Merge* best_merge = nullptr;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto* m = merges.find(ids[i], ids[i + 1]);
      if (m != nullptr && (best_merge == nullptr || m->rank < best_merge->rank)) best = i, best_merge = m;
    }
    if (best_merge == nullptr) return ids;
    ids[best] = best_merge->id;
    ids.erase(ids.begin() + long(best) + 1);
  }
}

int check_bpe(long cases, unsigned seed) {
  std::mt19937 rng(seed);
  long differ = 0;
  shoal::BpeScratch scratch;
  for (long k = 0; k < cases; ++k) {
    // Bytes 'a'.. are ids 0..; each merge of two existing ids makes a new id, at a random rank.
    shoal::Bpe bpe;
    bpe.byte_ids.fill(-1);
    const int letters = 1 + int(rng() % 4);
    for (int b = 0; b < letters; ++b) bpe.byte_ids['a' + b] = b;
    int32_t next_id = letters;
    const int n_merges = int(rng() % 40);
    bpe.merges.reserve(size_t(n_merges));
    std::vector<int32_t> ranks(n_merges);
    for (int i = 0; i < n_merges; ++i) ranks[i] = i;
    std::shuffle(ranks.begin(), ranks.end(), rng);
    for (int i = 0; i < n_merges; ++i) {
      const int32_t left = int32_t(rng() % next_id), right = int32_t(rng() % next_id);
      if (bpe.merges.find(left, right) == nullptr) bpe.merges.insert(left, right, {ranks[i], next_id++});
    }
    std::string piece;
    const size_t length = rng() % 4 ? rng() % 40 : rng() % 600;
    for (size_t i = 0; i < length; ++i) piece += char('a' + (rng() % 3 ? rng() % letters : 0));
    std::vector<int32_t> got, bytes;
    bpe.encode(piece, true, got, scratch);
    for (char b : piece) bytes.push_back(bpe.byte_ids[static_cast<unsigned char>(b)]);
    if (got != merge_slowly(bpe.merges, bytes) && differ++ < 3) std::printf("  BPE differs on \"%s\"\n", piece.c_str());
  }
  std::printf("BPE: %ld random merge tables and pieces, %ld differ\n", cases, differ);
  return differ != 0;
}

// Text that is all the code points for which `keep` holds, each between `before` and `after`.
template <class Keep>
std::string every_code_point(const std::string& before, const std::string& after, Keep keep) {
  std::string text, one;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    one.clear();
    shoal::utf8::append(one, c);
    if (!keep(one)) continue;
    text += before + one + after;
  }
  return text;
}

int check_nfc() {
  int bad = 0;
  // Around every code point, characters that compose with what comes before them or after,
  // or reorder with it: a starter, a Hangul L and LV, marks of classes 1, 230 and 240, the
  // Hangul V and T, and a starter that composes with the one before it (U+0B3E).
  const std::pair<const char*, const char*> contexts[] = {
      {"a", "\u0301"}, {"\u0301", "\u0345"}, {"\u1100", "\u1161"}, {"\uAC00", "\u11A8"}, {"\u0B47", "\u0B3E"},
      {"\u0334", "\u0334"}, {"x", "y"}};
  for (const auto& [before, after] : contexts) {
    const std::string text = every_code_point(before, after, [](const std::string&) { return true; });
    std::string piecewise, whole;
    shoal::nfc_append(text, piecewise);
    shoal::nfc_append_whole(text, whole);
    if (piecewise != whole && bad++ < 3) std::printf("  NFC piecewise differs between %s and %s\n", before, after);
  }
  // The quick check: the code points it passes, one after another, are NFC as they are.
  const std::string passed = every_code_point("", "", [](const std::string& c) { return shoal::nfc_quick_check(c); });
  std::string whole;
  shoal::nfc_append_whole(passed, whole);
  if (!shoal::nfc_quick_check(passed) || whole != passed) {
    std::printf("  NFC quick check passes text NFC changes\n");
    ++bad;
  }
  std::printf("NFC: %d of %zu checks differ\n", bad, std::size(contexts) + 1);
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const long random_texts = argc > 1 ? std::atol(argv[1]) : 200000;
  const unsigned seed = argc > 2 ? unsigned(std::atol(argv[2])) : 1;
  const std::vector<std::string> dirs = {SHOAL_FIXTURES "/tokenizer-deepseek-v3", SHOAL_FIXTURES "/tokenizer-qwen2.5",
                                         SHOAL_FIXTURES "/tokenizer-llama3.1"};
  int bad = check_flags();
  for (const std::string& dir : dirs) bad += check_fixture_patterns(dir);
  bad += check_matches(dirs, random_texts, seed);
  bad += check_bpe(random_texts / 2, seed);
  bad += check_nfc();
  std::printf(bad ? "FAILED\n" : "all the same\n");
  return bad ? 1 : 0;
}
