// Wire format of the TCP transport (docs/comm.md, "TCP framing"). Host byte order, which is
// little-endian on every platform shoal builds for (x86-64, aarch64); checked at compile time.
//
// Connection set-up: the connecting (higher) rank sends a Hello, the accepting (lower) rank
// answers with its own; each side checks magic, version, the other's rank and the world size;
// then the connecting rank sends kAckMagic (4 bytes) and both count the connection as made.
// Data: every message is one FrameHeader followed by `length` payload bytes.
#pragma once

#include <bit>
#include <cstdint>

namespace shoal::comm::tcp {

static_assert(std::endian::native == std::endian::little, "the TCP framing assumes little-endian");

constexpr uint32_t kHelloMagic = 0x4c484853;  // "SHHL"
constexpr uint32_t kAckMagic = 0x41484853;    // "SHHA"
constexpr uint32_t kFrameMagic = 0x46484853;  // "SHHF"
constexpr uint32_t kProtocolVersion = 1;

struct Hello {
  uint32_t magic = kHelloMagic;
  uint32_t version = kProtocolVersion;
  int32_t rank = -1;  // the sender's rank
  int32_t size = 0;   // the sender's world size
};
static_assert(sizeof(Hello) == 16);

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint32_t tag = 0;
  uint64_t length = 0;  // payload bytes that follow
};
static_assert(sizeof(FrameHeader) == 16);

}  // namespace shoal::comm::tcp
