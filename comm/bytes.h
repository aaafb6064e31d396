// ByteWriter / ByteReader: flat little-endian encoding of plain values and arrays for the
// messages built on top of Transport (collectives, expert exchange). The reader never reads
// past its span: a short or malformed message makes ok() false instead.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

namespace shoal::comm {

class ByteWriter {
 public:
  template <typename T>
  void put(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_array(std::span<const T>(&value, 1));
  }
  template <typename T>
  void put_array(std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (values.empty()) return;
    const size_t old = buf_.size();
    buf_.resize(old + values.size_bytes());
    std::memcpy(buf_.data() + old, values.data(), values.size_bytes());
  }
  std::span<const std::byte> bytes() const { return buf_; }

 private:
  std::vector<std::byte> buf_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const std::byte> bytes) : bytes_(bytes) {}

  template <typename T>
  T get() {
    T value{};
    get_array(std::span<T>(&value, 1));
    return value;
  }
  // Fills `out` from the next out.size_bytes() bytes; leaves it untouched when they are missing.
  template <typename T>
  void get_array(std::span<T> out) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (!ok_ || bytes_.size() - pos_ < out.size_bytes()) {
      ok_ = false;
      return;
    }
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + pos_, out.size_bytes());
    pos_ += out.size_bytes();
  }
  // Every read so far was in bounds (and, with at_end, nothing is left over).
  bool ok() const { return ok_; }
  bool at_end() const { return ok_ && pos_ == bytes_.size(); }
  size_t remaining() const { return ok_ ? bytes_.size() - pos_ : 0; }

 private:
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace shoal::comm
