// Sending and receiving the runtime's protobuf messages over a Transport.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "comm/transport.h"
#include "comm/wire/tags.h"
#include "comm/wire/wire.pb.h"

namespace shoal::wire {

template <typename M>
Status send(comm::Transport& t, int dst, Tag tag, const M& m, comm::Deadline deadline) {
  std::string bytes;
  if (!m.SerializeToString(&bytes)) return internal_error("cannot serialise a " + m.GetTypeName());
  return t.send(dst, tag, comm::as_bytes_of(bytes), deadline);
}

// A malformed message is an error naming the peer that sent it.
template <typename M>
StatusOr<M> parse(const comm::Transport& t, const comm::Message& msg) {
  M m;
  if (!m.ParseFromArray(msg.payload.data(), int(msg.payload.size())))
    return internal_error(t.peer_name(msg.src) + " sent a malformed " + m.GetTypeName() + " (" +
                          std::to_string(msg.payload.size()) + " bytes on tag " + std::to_string(msg.tag) + ")");
  return m;
}

template <typename M>
StatusOr<M> recv(comm::Transport& t, int src, Tag tag, comm::Deadline deadline) {
  SHOAL_ASSIGN_OR_RETURN(comm::Message msg, t.recv(src, tag, deadline));
  return parse<M>(t, msg);
}

// How hidden rows travel between ranks (`--wire-dtype`): float32 (exact: every placement gives
// the single process's bits) or bfloat16 (half the bytes; each hop rounds to nearest even).
enum class WireDtype { kF32 = 0, kBF16 = 1 };

inline std::string encode_rows(const float* v, size_t n, WireDtype dt) {
  if (dt == WireDtype::kF32) return std::string(reinterpret_cast<const char*>(v), n * sizeof(float));
  std::string out(n * 2, '\0');
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = float_to_bf16(v[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}
inline bool decode_rows(const std::string& bytes, size_t n, std::vector<float>& out, WireDtype dt) {
  if (dt == WireDtype::kF32) {
    if (bytes.size() != n * sizeof(float)) return false;
    out.resize(n);
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return true;
  }
  if (bytes.size() != n * 2) return false;
  out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    out[i] = bf16_to_float(h);
  }
  return true;
}

// float32 arrays travel as bytes fields.
inline std::string float_bytes(const float* v, size_t n) {
  return std::string(reinterpret_cast<const char*>(v), n * sizeof(float));
}
inline bool read_floats(const std::string& bytes, size_t n, std::vector<float>& out) {
  if (bytes.size() != n * sizeof(float)) return false;
  out.resize(n);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return true;
}

}  // namespace shoal::wire
