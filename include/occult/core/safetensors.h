// safetensors reading and writing (https://github.com/huggingface/safetensors format):
// 8-byte little-endian header length N, N bytes of JSON header, then the raw data buffer.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end)} relative to
// the data buffer; the optional "__metadata__" entry maps strings to strings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "occult/core/half.h"

namespace occult {

// Element types a safetensors file may hold. F32, F16, BF16, U8, I16, I32 and I64 are the
// ones occult's formats use; the others are parsed so real checkpoints open.
enum class DType : std::uint8_t { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool };

// The safetensors spelling of a dtype ("F32", "BF16", ...).
std::string_view dtype_name(DType dtype);
// Bytes per element.
std::size_t dtype_size(DType dtype);
// Parses a safetensors dtype string; nullopt when it is not one.
std::optional<DType> dtype_from_name(std::string_view name);
// True for the integer dtypes (I*, U*, BOOL).
bool dtype_is_integer(DType dtype);

// One tensor's header entry. Offsets are relative to the start of the data buffer.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t data_begin = 0;
  std::uint64_t data_end = 0;

  // Product of the shape (1 for a scalar).
  std::int64_t numel() const;
};

// A validated, read-only safetensors file. Opening checks the whole header (length within the
// file, JSON, known dtypes, shapes matching byte counts, offsets inside the buffer and not
// overlapping); every error names the file and, where it applies, the tensor.
class SafetensorsReader {
 public:
  // Memory-maps `path` and validates it. Throws occult::Error on any malformed input.
  static SafetensorsReader open(const std::string& path);
  // Parses an in-memory image (used by tests and the fuzzer); `source` names it in errors.
  static SafetensorsReader from_bytes(std::vector<std::byte> bytes, std::string source);

  SafetensorsReader(SafetensorsReader&&) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&&) noexcept;
  ~SafetensorsReader();

  // The path (or source name) this reader was opened from.
  const std::string& source() const;
  // All tensors, in ascending data offset order.
  const std::vector<TensorInfo>& tensors() const;
  // The tensor called `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const;
  // The tensor called `name`; throws naming the file and the tensor when absent.
  const TensorInfo& at(std::string_view name) const;
  // The `__metadata__` strings (empty when absent).
  const std::map<std::string, std::string>& metadata() const;

  // The raw little-endian bytes of a tensor.
  std::span<const std::byte> raw(const TensorInfo& info) const;

  // Converting reads. read_f32 accepts F32, F16, BF16 and F64; read_i64/read_i32 accept every
  // integer dtype (read_i32 throws if a value does not fit). Errors name file and tensor.
  std::vector<float> read_f32(std::string_view name) const;
  // read_f32 into `out`, which must hold exactly the tensor's element count (throws naming the
  // file and tensor otherwise): loaders fill their own buffers without a temporary copy.
  void read_f32_into(std::string_view name, std::span<float> out) const;
  std::vector<std::int64_t> read_i64(std::string_view name) const;
  std::vector<std::int32_t> read_i32(std::string_view name) const;

  // Drops the pages that hold only tensor `name`'s bytes from this process's resident set (a
  // loader that has copied a tensor out calls it, so a mapped checkpoint does not count twice);
  // reading the tensor again reads the file again. No-op for in-memory images.
  void release(std::string_view name) const;

  // Throws unless tensor `name` has exactly `shape` (-1 in `shape` matches any extent).
  void expect_shape(std::string_view name, std::span<const std::int64_t> shape) const;

 private:
  struct Impl;
  explicit SafetensorsReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Builds a safetensors file in memory and writes it. The header is padded with spaces so the
// data buffer starts 8-byte aligned; tensors are laid out widest dtype first (insertion order
// within a width), so each starts at a multiple of its element size with no gaps between them,
// as the Hugging Face reader requires.
class SafetensorsWriter {
 public:
  // Adds a `__metadata__` entry.
  void set_metadata(std::string key, std::string value);
  // Adds a tensor, copying `data`; throws if the byte count does not match dtype and shape or
  // the name is taken.
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape,
           std::span<const std::byte> data);
  // Typed conveniences. add_f16/add_bf16 convert from float.
  void add_f32(std::string name, std::vector<std::int64_t> shape, std::span<const float> data);
  void add_f16(std::string name, std::vector<std::int64_t> shape, std::span<const float> data);
  void add_bf16(std::string name, std::vector<std::int64_t> shape, std::span<const float> data);
  void add_i64(std::string name, std::vector<std::int64_t> shape, std::span<const std::int64_t> data);
  void add_i32(std::string name, std::vector<std::int64_t> shape, std::span<const std::int32_t> data);
  void add_i16(std::string name, std::vector<std::int64_t> shape, std::span<const std::int16_t> data);
  void add_u8(std::string name, std::vector<std::int64_t> shape, std::span<const std::uint8_t> data);

  // The complete file image.
  std::vector<std::byte> to_bytes() const;
  // Writes the file atomically (temporary file + rename); throws naming the path on failure.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace occult
