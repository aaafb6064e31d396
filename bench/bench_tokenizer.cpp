// Encode throughput of the tokenizer on one core: a mixed-script corpus of at least 10 MB,
// generated here from the fixture texts (English, CJK, other scripts, code, digits, emoji,
// whitespace runs) shuffled with a fixed seed, encoded document by document. Besides wall time
// it reports the thread's CPU time, which other work on a shared machine disturbs less.
//   bench_tokenizer [TOKENIZER_DIR] [MB]
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "text/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : SHOAL_FIXTURES "/tokenizer-deepseek-v3";
  const double mb = argc > 2 ? std::stod(argv[2]) : 12.0;
  auto tok = shoal::Tokenizer::load(dir);
  if (!tok.ok()) return std::fprintf(stderr, "%s\n", tok.status().to_string().c_str()), 1;
  std::vector<std::string> texts;
  std::ifstream in(std::string(SHOAL_FIXTURES) + "/tokenizer-deepseek-v3/encode.jsonl");
  for (std::string line; std::getline(in, line);) texts.push_back(nlohmann::json::parse(line)["text"]);
  // Documents of ~4 KB made of random fixture texts joined by spaces and newlines.
  std::mt19937 rng(7);
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < size_t(mb * 1e6)) {
    std::string doc;
    while (doc.size() < 4096) doc += texts[rng() % texts.size()] + (rng() % 4 ? " " : "\n");
    total += doc.size();
    docs.push_back(std::move(doc));
  }
  const auto cpu_now = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
  };
  size_t tokens = 0;
  const double cpu0 = cpu_now();
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& d : docs) tokens += (*tok)->encode(d, false).size();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = cpu_now() - cpu0;
  std::printf("{\"corpus_mb\": %.1f, \"documents\": %zu, \"tokens\": %zu, \"seconds\": %.2f, \"mb_per_s\": %.1f, "
              "\"tokens_per_s\": %.0f, \"cpu_seconds\": %.2f, \"mb_per_cpu_s\": %.1f, \"threads\": 1}\n",
              double(total) / 1e6, docs.size(), tokens, s, double(total) / 1e6 / s, double(tokens) / s, cpu,
              double(total) / 1e6 / cpu);
  return 0;
}
