// libFuzzer target: a tokenizer folder through Tokenizer::load (text/tokenizer/tokenizer.h). The
// input is cut at lines "---" into tokenizer.json, tokenizer_config.json and config.json (the
// files beside it; absent when the input has fewer parts) and a text; they are written to a
// scratch folder (the loader reads files only) and loaded. A tokenizer that loads encodes a few
// fixed texts (ASCII, CJK, emoji, special-token text, invalid UTF-8, its BOS and EOS strings)
// and the input's text, with and without BOS, and decodes the ids whole and streamed. Invariants:
// a load fails with invalid_argument or unimplemented naming the file; an encode gives ids
// decode takes (unless config.json narrowed the vocabulary: then an error that names the id);
// decode with and without special tokens gives valid UTF-8 (lossy), and the stream's pieces add
// up to it.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

// This process's folder (in memory where /dev/shm is), removed at exit.
const fs::path& scratch() {
  static const fs::path dir = [] {
    std::error_code ec;
    const fs::path base = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path d = base / ("shoal-fuzz-tokenizer-" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit([] { std::error_code ec; fs::remove_all(scratch(), ec); });
    return d;
  }();
  return dir;
}

void put(const char* name, const std::string_view* text) {
  const fs::path file = scratch() / name;
  if (text == nullptr) {
    std::error_code ec;
    fs::remove(file, ec);
    return;
  }
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(text->data(), std::streamsize(text->size()));
  if (!out) std::abort();
}

bool valid_utf8(std::string_view s) { return shoal::utf8_lossy(s) == s; }

void round_trip(const shoal::Tokenizer& tok, std::string_view text, bool narrowed) {
  for (const bool bos : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, bos);
    if (!bos && text.empty() && !ids.empty()) std::abort();
    for (const bool skip : {false, true}) {
      auto whole = tok.decode(ids, skip);
      if (!whole.ok()) {
        if (!narrowed || whole.status().message().find("outside the vocabulary") == std::string::npos) std::abort();
        continue;
      }
      if (!valid_utf8(*whole)) std::abort();
      shoal::StreamDecoder stream(tok, skip);
      std::string pieces;
      for (const int32_t id : ids) {
        auto piece = stream.push(id);
        if (!piece.ok()) std::abort();
        pieces += *piece;
      }
      pieces += stream.finish();
      if (pieces != *whole) std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  for (size_t at = 0;;) {
    const size_t cut = parts.size() < 3 ? input.find("\n---\n", at) : std::string_view::npos;
    parts.push_back(input.substr(at, cut == std::string_view::npos ? std::string_view::npos : cut - at));
    if (cut == std::string_view::npos) break;
    at = cut + 5;
  }
  const char* names[] = {"tokenizer.json", "tokenizer_config.json", "config.json"};
  for (size_t i = 0; i < 3; ++i) put(names[i], i < parts.size() ? &parts[i] : nullptr);

  auto loaded = shoal::Tokenizer::load(scratch());
  if (!loaded.ok()) {
    const shoal::Status& s = loaded.status();
    if (s.code() != shoal::Code::kInvalidArgument && s.code() != shoal::Code::kUnimplemented) std::abort();
    if (!s.message().starts_with(scratch().string())) std::abort();  // it names the file
    return 0;
  }
  const shoal::Tokenizer& tok = **loaded;
  const bool narrowed = parts.size() > 2;  // config.json's vocab_size sets the ids decode takes
  if (tok.vocab_limit() < 0) std::abort();
  for (const std::string_view text :
       {std::string_view("Hello, world! It's 2024: x=3.14; a-b--c"), std::string_view("  leading\n\n\ttabs  "),
        std::string_view("東京は晴れです。한국어 Ελληνικά"), std::string_view("🚀🎉👩‍💻 ok"),
        std::string_view("<｜begin▁of▁sentence｜>hi<｜end▁of▁sentence｜><x><|endoftext|>"),
        std::string_view("bad \xff\xfe utf8 \xe6\x97"), std::string_view("")})
    round_trip(tok, text, narrowed);
  round_trip(tok, tok.bos_token(), narrowed);
  round_trip(tok, tok.eos_token(), narrowed);
  if (parts.size() > 3) round_trip(tok, parts[3].substr(0, 256), narrowed);
  if (!narrowed && (tok.bos_id() >= tok.vocab_limit() || tok.eos_id() >= tok.vocab_limit())) std::abort();
  return 0;
}
