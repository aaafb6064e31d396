// Compares this tokenizer with the reference's answers written by difftest.mjs: for each
// variant folder, every case's encode ids, its decode of random ids, and the streamed decode.
// Texts holding code points that this Oniguruma's Unicode tables leave unassigned (\p{Cn}) are
// counted apart: newer tables classify them, so they may split differently (docs/tokenizer.md).
//
//   ninja tokenizer_difftest && ./tokenizer_difftest OUT
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "text/tokenizer/onig_regex.h"
#include "text/tokenizer/tokenizer.h"

namespace {

using nlohmann::json;

struct Counts {
  int cases = 0, unassigned = 0, encode = 0, decode = 0, stream = 0;
};

void check_case(const shoal::Tokenizer& tok, const shoal::Regex& cn, const json& c, Counts& n) {
  ++n.cases;
  const auto text = c["text"].get<std::string>();
  const auto want = c["ids"].get<std::vector<int32_t>>();
  if (tok.encode(text, false) != want) {
    std::vector<shoal::Span> found;
    cn.find_all(text, found);
    if (!found.empty()) {
      ++n.unassigned;
    } else if (n.encode++ < 3) {
      std::printf("  encode differs: %s\n", json(text).dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    }
  }
  const auto ids = c["decode_ids"].get<std::vector<int32_t>>();
  const bool skip = c["skip"].get<bool>();
  const auto decoded = tok.decode(ids, skip);
  if (!decoded.ok()) return;  // an id past this variant's table
  if (decoded.value() != c["decoded"].get<std::string>() && n.decode++ < 3) {
    std::printf("  decode differs: %s\n", json(ids).dump().c_str());
  }
  shoal::StreamDecoder stream(tok, skip);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.push(id).value();
  streamed += stream.finish();
  n.stream += streamed != decoded.value();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT (the folder difftest.mjs wrote)\n", argv[0]);
    return 2;
  }
  const auto cn = shoal::Regex::compile("\\p{Cn}");
  if (!cn.ok()) return 2;
  std::vector<std::filesystem::path> variants;
  for (const auto& entry : std::filesystem::directory_iterator(argv[1])) variants.push_back(entry.path());
  std::sort(variants.begin(), variants.end());
  int failures = 0;
  for (const auto& dir : variants) {
    auto loaded = shoal::Tokenizer::load(dir);
    if (!loaded.ok()) {
      std::printf("%s: %s\n", dir.filename().c_str(), loaded.status().to_string().c_str());
      ++failures;
      continue;
    }
    Counts n;
    std::ifstream in(dir / "cases.jsonl");
    for (std::string line; std::getline(in, line);) check_case(*loaded.value(), *cn.value(), json::parse(line), n);
    std::printf("%s: %d cases, %d encode / %d decode / %d stream differences, %d with unassigned code points\n",
                dir.filename().c_str(), n.cases, n.encode, n.decode, n.stream, n.unassigned);
    failures += n.encode + n.decode + n.stream;
  }
  return failures == 0 ? 0 : 1;
}
