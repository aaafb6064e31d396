// Per-rank shards of a checkpoint (`shoal shard`, docs/deploy-homelab.md): a folder holding
// config.json, one model.safetensors with exactly the tensors of one rank's units, and a
// manifest shoal-shard.json naming the rank, the plan's world size, and per file its tensors,
// bytes and SHA-256. A node whose --model is such a folder checks, at each session's hello, that
// the folder holds exactly the tensors the plan gives its rank and that every file still has its
// manifest hash (node/session.cpp).
//
// A GGUF source gives GGUF shards instead: the folder holds model.gguf (no config.json) with all
// the source's metadata, the rank's tensors, and of each stacked ffn_*_exps tensor only the
// slices of the experts the rank hosts, listed in `shoal.shard.experts.<tensor>`; the manifest
// names the tensors by their Hugging Face names as for safetensors (docs/gguf.md, "Synth and shard").
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace shoal {
class Checkpoint;
}

namespace shoal::cluster {

inline constexpr const char* kShardManifest = "shoal-shard.json";

struct ShardFile {
  std::string file;                  // relative to the shard folder
  int64_t bytes = 0;
  std::string sha256;                // hex
  std::vector<std::string> tensors;  // in file order
};

struct ShardManifest {
  int version = 1;
  int rank = 0;
  int world_size = 0;
  std::string source;                // the checkpoint it was cut from
  std::vector<ShardFile> files;
};

// Writes dir/config.json (the source's), dir/model.safetensors (the named tensors, bytes as
// stored) and dir/shoal-shard.json; for a GGUF source dir/model.gguf and dir/shoal-shard.json.
// Tensors are streamed from the source's mapping.
StatusOr<ShardManifest> write_shard(Checkpoint& source, const std::vector<std::string>& tensors, int rank,
                                    int world_size, const std::filesystem::path& dir);

// The manifest of a shard folder; nullopt when the folder has none (a whole checkpoint).
StatusOr<std::optional<ShardManifest>> read_shard_manifest(const std::filesystem::path& dir);

// Hashes every file of the manifest and compares bytes and SHA-256; the error names the file.
// A file that matched keeps counting as checked in this process until its size or modification
// time changes.
Status verify_shard(const std::filesystem::path& dir, const ShardManifest& manifest);

// The manifest's tensors against the ones a rank must host: an error naming the shard's rank
// and a few missing or extra names unless they are the same set.
Status check_shard_tensors(const std::filesystem::path& dir, const ShardManifest& manifest, int rank,
                           const std::vector<std::string>& hosted);

// SHA-256 of a file (hex), read in 4 MiB pieces.
StatusOr<std::string> file_sha256(const std::filesystem::path& file);

}  // namespace shoal::cluster
