#include "occult/core/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "occult/core/error.h"

namespace occult {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is read in place");

namespace {

// The Hugging Face implementation refuses headers above 100 MB; a larger length is a
// corrupted file, and refusing it early avoids parsing garbage.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// The data buffer starts at a multiple of this, so in-place reads of any dtype are aligned.
constexpr std::size_t kAlignment = 8;

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  std::size_t size;
  bool integer;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8, false}, {DType::kF32, "F32", 4, false}, {DType::kF16, "F16", 2, false},
    {DType::kBF16, "BF16", 2, false}, {DType::kI64, "I64", 8, true}, {DType::kI32, "I32", 4, true},
    {DType::kI16, "I16", 2, true},  {DType::kI8, "I8", 1, true},     {DType::kU64, "U64", 8, true},
    {DType::kU32, "U32", 4, true},  {DType::kU16, "U16", 2, true},   {DType::kU8, "U8", 1, true},
    {DType::kBool, "BOOL", 1, true},
};

const DTypeEntry& entry_of(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  OCCULT_FAIL("unknown DType value {}", static_cast<int>(dtype));
}

std::string shape_string(std::span<const std::int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

template <typename T>
T load_le(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

}  // namespace

std::string_view dtype_name(DType dtype) { return entry_of(dtype).name; }
std::size_t dtype_size(DType dtype) { return entry_of(dtype).size; }
bool dtype_is_integer(DType dtype) { return entry_of(dtype).integer; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

// ---- reader ----------------------------------------------------------------------------------

struct SafetensorsReader::Impl {
  std::string source;
  std::vector<std::byte> owned;  // from_bytes keeps the image here
  void* mapping = nullptr;       // open() maps the file here
  std::size_t mapping_size = 0;
  const std::byte* file = nullptr;
  std::size_t file_size = 0;
  std::size_t buffer_begin = 0;  // 8 + header length
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, std::size_t> index;
  std::map<std::string, std::string> metadata;

  ~Impl() {
    if (mapping != nullptr) munmap(mapping, mapping_size);
  }

  void parse();
  const TensorInfo& at(std::string_view name) const;
};

namespace {

// Reads a non-negative JSON integer; rejects floats, negatives, booleans and strings.
bool json_to_u64(const nlohmann::json& value, std::uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<std::uint64_t>();
    return true;
  }
  if (value.is_number_integer()) {
    const std::int64_t v = value.get<std::int64_t>();
    if (v < 0) return false;
    out = static_cast<std::uint64_t>(v);
    return true;
  }
  return false;
}

}  // namespace

void SafetensorsReader::Impl::parse() {
  const std::string& src = source;
  OCCULT_CHECK(file_size >= 8,
               "{}: file is {} bytes, shorter than the 8-byte header length that starts a "
               "safetensors file",
               src, file_size);
  const std::uint64_t header_len = load_le<std::uint64_t>(file);
  OCCULT_CHECK(header_len <= kMaxHeaderBytes,
               "{}: header length {} is absurd (more than {} bytes); not a safetensors file or "
               "corrupted",
               src, header_len, kMaxHeaderBytes);
  OCCULT_CHECK(header_len <= file_size - 8,
               "{}: header length {} runs past the end of the file ({} bytes after the length "
               "field); the file is truncated or not safetensors",
               src, header_len, file_size - 8);
  OCCULT_CHECK(header_len >= 2, "{}: header length {} is too short for a JSON object", src,
               header_len);
  buffer_begin = 8 + static_cast<std::size_t>(header_len);
  const std::uint64_t buffer_size = file_size - buffer_begin;

  // nlohmann keeps the last of duplicate keys silently; a callback sees every key so that a
  // duplicated tensor name (or entry field) is an error, not a silently dropped tensor.
  std::string duplicate;
  std::vector<std::set<std::string>> keys_by_depth;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      if (static_cast<int>(keys_by_depth.size()) <= depth) keys_by_depth.resize(depth + 1);
      keys_by_depth[depth].clear();
    } else if (event == E::key && depth >= 1 && depth <= static_cast<int>(keys_by_depth.size())) {
      auto& seen = keys_by_depth[depth - 1];
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  const char* header_begin = reinterpret_cast<const char*>(file + 8);
  nlohmann::json header = nlohmann::json::parse(header_begin, header_begin + header_len, callback,
                                                /*allow_exceptions=*/false);
  OCCULT_CHECK(!header.is_discarded(), "{}: the {}-byte header is not valid JSON", src, header_len);
  OCCULT_CHECK(header.is_object(), "{}: the header is JSON {} but must be an object", src,
               header.type_name());
  OCCULT_CHECK(duplicate.empty(), "{}: key '{}' appears twice in the header", src, duplicate);

  tensors.clear();
  tensors.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      OCCULT_CHECK(entry.is_object(), "{}: __metadata__ is JSON {} but must be an object of strings",
                   src, entry.type_name());
      for (const auto& [key, value] : entry.items()) {
        OCCULT_CHECK(value.is_string(),
                     "{}: __metadata__ entry '{}' is JSON {} but must be a string", src, key,
                     value.type_name());
        metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    OCCULT_CHECK(!name.empty(), "{}: a tensor has an empty name", src);
    OCCULT_CHECK(entry.is_object(), "{}: tensor '{}': entry is JSON {} but must be an object", src,
                 name, entry.type_name());
    for (const auto& [key, value] : entry.items()) {
      OCCULT_CHECK(key == "dtype" || key == "shape" || key == "data_offsets",
                   "{}: tensor '{}': unexpected key '{}' (expected dtype, shape, data_offsets)", src,
                   name, key);
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      OCCULT_CHECK(entry.contains(key), "{}: tensor '{}': missing key '{}'", src, name, key);
    }
    TensorInfo info;
    info.name = name;

    const auto& dtype = entry["dtype"];
    OCCULT_CHECK(dtype.is_string(), "{}: tensor '{}': dtype is JSON {} but must be a string", src,
                 name, dtype.type_name());
    const auto parsed_dtype = dtype_from_name(dtype.get_ref<const std::string&>());
    OCCULT_CHECK(parsed_dtype.has_value(),
                 "{}: tensor '{}': unknown dtype '{}' (expected one of F64, F32, F16, BF16, I64, "
                 "I32, I16, I8, U64, U32, U16, U8, BOOL)",
                 src, name, dtype.get_ref<const std::string&>());
    info.dtype = *parsed_dtype;

    const auto& shape = entry["shape"];
    OCCULT_CHECK(shape.is_array(), "{}: tensor '{}': shape is JSON {} but must be an array", src,
                 name, shape.type_name());
    std::uint64_t numel = 1;
    for (const auto& dim : shape) {
      std::uint64_t extent = 0;
      OCCULT_CHECK(json_to_u64(dim, extent) &&
                       extent <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   "{}: tensor '{}': shape {} must hold non-negative integers", src, name,
                   shape.dump());
      OCCULT_CHECK(!__builtin_mul_overflow(numel, extent, &numel) &&
                       numel <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   "{}: tensor '{}': shape {} has more elements than fit in 64 bits", src, name,
                   shape.dump());
      info.shape.push_back(static_cast<std::int64_t>(extent));
    }
    std::uint64_t nbytes = 0;
    OCCULT_CHECK(!__builtin_mul_overflow(numel, dtype_size(info.dtype), &nbytes),
                 "{}: tensor '{}': shape {} of {} is more bytes than fit in 64 bits", src, name,
                 shape.dump(), dtype_name(info.dtype));

    const auto& offsets = entry["data_offsets"];
    std::uint64_t begin = 0, end = 0;
    OCCULT_CHECK(offsets.is_array() && offsets.size() == 2 && json_to_u64(offsets[0], begin) &&
                     json_to_u64(offsets[1], end),
                 "{}: tensor '{}': data_offsets {} must be [begin, end] with non-negative integers",
                 src, name, offsets.dump());
    OCCULT_CHECK(begin <= end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", src,
                 name, begin, end);
    OCCULT_CHECK(end - begin == nbytes,
                 "{}: tensor '{}': data_offsets [{}, {}] span {} bytes but dtype {} with shape {} "
                 "needs {}",
                 src, name, begin, end, end - begin, dtype_name(info.dtype),
                 shape_string(info.shape), nbytes);
    OCCULT_CHECK(end <= buffer_size,
                 "{}: tensor '{}': data_offsets [{}, {}] run past the end of the {}-byte data "
                 "buffer (file truncated?)",
                 src, name, begin, end, buffer_size);
    info.data_begin = begin;
    info.data_end = end;
    tensors.push_back(std::move(info));
  }

  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.data_end < b.data_end;
  });
  // Gaps are tolerated (some writers pad); overlap means two tensors alias the same bytes, which
  // is either corruption or a crafted file. Empty tensors own no bytes and cannot overlap.
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& info : tensors) {
    if (info.data_begin == info.data_end) continue;
    if (previous != nullptr) {
      OCCULT_CHECK(previous->data_end <= info.data_begin,
                   "{}: tensor '{}' (bytes [{}, {})) overlaps tensor '{}' (bytes [{}, {}))", src,
                   info.name, info.data_begin, info.data_end, previous->name, previous->data_begin,
                   previous->data_end);
    }
    previous = &info;
  }
  index.clear();
  for (std::size_t i = 0; i < tensors.size(); ++i) index.emplace(tensors[i].name, i);
}

const TensorInfo& SafetensorsReader::Impl::at(std::string_view name) const {
  auto it = index.find(std::string(name));
  OCCULT_CHECK(it != index.end(), "{}: no tensor named '{}'", source, name);
  return tensors[it->second];
}

SafetensorsReader::SafetensorsReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsReader::SafetensorsReader(SafetensorsReader&&) noexcept = default;
SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&&) noexcept = default;
SafetensorsReader::~SafetensorsReader() = default;

SafetensorsReader SafetensorsReader::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->source = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  OCCULT_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    OCCULT_FAIL("{}: cannot stat: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    OCCULT_FAIL("{}: not a regular file", path);
  }
  impl->file_size = static_cast<std::size_t>(st.st_size);
  if (impl->file_size > 0) {
    void* mapping = ::mmap(nullptr, impl->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    OCCULT_CHECK(mapping != MAP_FAILED, "{}: cannot memory-map {} bytes: {}", path, impl->file_size,
                 std::strerror(err));
    impl->mapping = mapping;
    impl->mapping_size = impl->file_size;
    impl->file = static_cast<const std::byte*>(mapping);
  } else {
    ::close(fd);
  }
  impl->parse();
  return SafetensorsReader(std::move(impl));
}

void SafetensorsReader::release(std::string_view name) const {
  if (impl_->mapping == nullptr) return;
  const TensorInfo& info = at(name);
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t begin = impl_->buffer_begin + info.data_begin, end = impl_->buffer_begin + info.data_end;
  // Only whole pages inside the tensor: a page shared with a neighbour may still be wanted.
  const std::size_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last <= first) return;
  ::madvise(static_cast<char*>(impl_->mapping) + first, last - first, MADV_DONTNEED);
}

SafetensorsReader SafetensorsReader::from_bytes(std::vector<std::byte> bytes, std::string source) {
  auto impl = std::make_unique<Impl>();
  impl->source = std::move(source);
  impl->owned = std::move(bytes);
  impl->file = impl->owned.data();
  impl->file_size = impl->owned.size();
  impl->parse();
  return SafetensorsReader(std::move(impl));
}

const std::string& SafetensorsReader::source() const { return impl_->source; }
const std::vector<TensorInfo>& SafetensorsReader::tensors() const { return impl_->tensors; }

const TensorInfo* SafetensorsReader::find(std::string_view name) const {
  auto it = impl_->index.find(std::string(name));
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorInfo& SafetensorsReader::at(std::string_view name) const { return impl_->at(name); }

const std::map<std::string, std::string>& SafetensorsReader::metadata() const {
  return impl_->metadata;
}

std::span<const std::byte> SafetensorsReader::raw(const TensorInfo& info) const {
  // Offsets were checked against the buffer on open; re-check in case `info` is not ours.
  const std::size_t buffer_size = impl_->file_size - impl_->buffer_begin;
  OCCULT_CHECK(info.data_begin <= info.data_end && info.data_end <= buffer_size,
               "{}: tensor '{}': offsets [{}, {}] are outside this file's {}-byte data buffer",
               impl_->source, info.name, info.data_begin, info.data_end, buffer_size);
  return {impl_->file + impl_->buffer_begin + info.data_begin, info.data_end - info.data_begin};
}

std::vector<float> SafetensorsReader::read_f32(std::string_view name) const {
  std::vector<float> out(static_cast<std::size_t>(at(name).numel()));
  read_f32_into(name, out);
  return out;
}

void SafetensorsReader::read_f32_into(std::string_view name, std::span<float> out) const {
  const TensorInfo& info = at(name);
  const std::byte* p = raw(info).data();
  const std::size_t n = static_cast<std::size_t>(info.numel());
  OCCULT_CHECK(out.size() == n, "{}: tensor '{}' has {} elements, but {} were expected", impl_->source, info.name,
               n, out.size());
  switch (info.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), p, n * sizeof(float));
      break;
    case DType::kF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = f16_to_float(load_le<std::uint16_t>(p + 2 * i));
      break;
    case DType::kBF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = bf16_to_float(load_le<std::uint16_t>(p + 2 * i));
      break;
    case DType::kF64:
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load_le<double>(p + 8 * i));
      break;
    default:
      OCCULT_FAIL("{}: tensor '{}' has dtype {}; expected a float dtype (F32, F16, BF16, F64)",
                  impl_->source, info.name, dtype_name(info.dtype));
  }
}

std::vector<std::int64_t> SafetensorsReader::read_i64(std::string_view name) const {
  const TensorInfo& info = at(name);
  const std::byte* p = raw(info).data();
  const std::size_t n = static_cast<std::size_t>(info.numel());
  std::vector<std::int64_t> out(n);
  auto widen = [&]<typename T>() {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::int64_t>(load_le<T>(p + sizeof(T) * i));
  };
  switch (info.dtype) {
    case DType::kI64: widen.operator()<std::int64_t>(); break;
    case DType::kI32: widen.operator()<std::int32_t>(); break;
    case DType::kI16: widen.operator()<std::int16_t>(); break;
    case DType::kI8: widen.operator()<std::int8_t>(); break;
    case DType::kU32: widen.operator()<std::uint32_t>(); break;
    case DType::kU16: widen.operator()<std::uint16_t>(); break;
    case DType::kU8:
    case DType::kBool: widen.operator()<std::uint8_t>(); break;
    case DType::kU64:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t v = load_le<std::uint64_t>(p + 8 * i);
        OCCULT_CHECK(v <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                     "{}: tensor '{}': element {} = {} does not fit in a signed 64-bit integer",
                     impl_->source, info.name, i, v);
        out[i] = static_cast<std::int64_t>(v);
      }
      break;
    default:
      OCCULT_FAIL("{}: tensor '{}' has dtype {}; expected an integer dtype", impl_->source,
                  info.name, dtype_name(info.dtype));
  }
  return out;
}

std::vector<std::int32_t> SafetensorsReader::read_i32(std::string_view name) const {
  const TensorInfo& info = at(name);
  const std::size_t n = static_cast<std::size_t>(info.numel());
  std::vector<std::int32_t> out(n);
  const std::byte* p = raw(info).data();
  // Types that always fit are converted in one pass (ids are usually U8, I16 or I32).
  auto widen = [&]<typename T>() {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::int32_t>(load_le<T>(p + sizeof(T) * i));
  };
  switch (info.dtype) {
    case DType::kI32:
      if (n > 0) std::memcpy(out.data(), p, n * sizeof(std::int32_t));
      return out;
    case DType::kU8:
    case DType::kBool: widen.operator()<std::uint8_t>(); return out;
    case DType::kI8: widen.operator()<std::int8_t>(); return out;
    case DType::kI16: widen.operator()<std::int16_t>(); return out;
    case DType::kU16: widen.operator()<std::uint16_t>(); return out;
    default: break;
  }
  const std::vector<std::int64_t> wide = read_i64(name);
  for (std::size_t i = 0; i < n; ++i) {
    OCCULT_CHECK(wide[i] >= std::numeric_limits<std::int32_t>::min() &&
                     wide[i] <= std::numeric_limits<std::int32_t>::max(),
                 "{}: tensor '{}': element {} = {} does not fit in a 32-bit integer", impl_->source,
                 info.name, i, wide[i]);
    out[i] = static_cast<std::int32_t>(wide[i]);
  }
  return out;
}

void SafetensorsReader::expect_shape(std::string_view name, std::span<const std::int64_t> shape) const {
  const TensorInfo& info = at(name);
  bool match = info.shape.size() == shape.size();
  for (std::size_t i = 0; match && i < shape.size(); ++i) {
    match = shape[i] == -1 || shape[i] == info.shape[i];
  }
  if (!match) {
    std::vector<std::string> expected;
    for (std::int64_t d : shape) expected.push_back(d == -1 ? "*" : std::to_string(d));
    OCCULT_FAIL("{}: tensor '{}' has shape {}, expected [{}]", impl_->source, info.name,
                shape_string(info.shape), fmt::join(expected, ", "));
  }
}

// ---- writer ----------------------------------------------------------------------------------

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<std::int64_t> shape,
                            std::span<const std::byte> data) {
  OCCULT_CHECK(!name.empty() && name != "__metadata__",
               "safetensors writer: '{}' is not a valid tensor name", name);
  for (const Entry& e : entries_) {
    OCCULT_CHECK(e.name != name, "safetensors writer: tensor '{}' added twice", name);
  }
  std::uint64_t numel = 1;
  for (std::int64_t d : shape) {
    OCCULT_CHECK(d >= 0, "safetensors writer: tensor '{}': shape {} has a negative extent", name,
                 shape_string(shape));
    OCCULT_CHECK(!__builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel),
                 "safetensors writer: tensor '{}': shape {} overflows", name, shape_string(shape));
  }
  const std::uint64_t expected = numel * dtype_size(dtype);
  OCCULT_CHECK(data.size() == expected,
               "safetensors writer: tensor '{}': {} bytes given but dtype {} with shape {} needs {}",
               name, data.size(), dtype_name(dtype), shape_string(shape), expected);
  entries_.push_back({std::move(name), dtype, std::move(shape), {data.begin(), data.end()}});
}

namespace {
template <typename T>
std::span<const std::byte> bytes_of(std::span<const T> data) {
  return std::as_bytes(data);
}
}  // namespace

void SafetensorsWriter::add_f32(std::string name, std::vector<std::int64_t> shape,
                                std::span<const float> data) {
  add(std::move(name), DType::kF32, std::move(shape), bytes_of(data));
}

void SafetensorsWriter::add_f16(std::string name, std::vector<std::int64_t> shape,
                                std::span<const float> data) {
  std::vector<std::uint16_t> half(data.size());
  for (std::size_t i = 0; i < data.size(); ++i) half[i] = float_to_f16(data[i]);
  add(std::move(name), DType::kF16, std::move(shape), bytes_of(std::span<const std::uint16_t>(half)));
}

void SafetensorsWriter::add_bf16(std::string name, std::vector<std::int64_t> shape,
                                 std::span<const float> data) {
  std::vector<std::uint16_t> half(data.size());
  for (std::size_t i = 0; i < data.size(); ++i) half[i] = float_to_bf16(data[i]);
  add(std::move(name), DType::kBF16, std::move(shape), bytes_of(std::span<const std::uint16_t>(half)));
}

void SafetensorsWriter::add_i64(std::string name, std::vector<std::int64_t> shape,
                                std::span<const std::int64_t> data) {
  add(std::move(name), DType::kI64, std::move(shape), bytes_of(data));
}

void SafetensorsWriter::add_i32(std::string name, std::vector<std::int64_t> shape,
                                std::span<const std::int32_t> data) {
  add(std::move(name), DType::kI32, std::move(shape), bytes_of(data));
}

void SafetensorsWriter::add_i16(std::string name, std::vector<std::int64_t> shape,
                                std::span<const std::int16_t> data) {
  add(std::move(name), DType::kI16, std::move(shape), bytes_of(data));
}

void SafetensorsWriter::add_u8(std::string name, std::vector<std::int64_t> shape,
                               std::span<const std::uint8_t> data) {
  add(std::move(name), DType::kU8, std::move(shape), bytes_of(data));
}

std::vector<std::byte> SafetensorsWriter::to_bytes() const {
  // Wider dtypes first (stable, so insertion order within a width): with power-of-two element
  // sizes every tensor then starts at a multiple of its own element size and the buffer has no
  // gaps, which the reference Hugging Face reader requires.
  std::vector<const Entry*> order;
  for (const Entry& e : entries_) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata_) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const Entry* e : order) {
    header[e->name] = {{"dtype", std::string(dtype_name(e->dtype))},
                       {"shape", e->shape},
                       {"data_offsets", {offset, offset + e->data.size()}}};
    offset += e->data.size();
  }
  std::string text = header.dump();
  // Pad with spaces (valid JSON whitespace) so the data buffer starts 8-byte aligned.
  while ((8 + text.size()) % kAlignment != 0) text.push_back(' ');

  std::vector<std::byte> out(8 + text.size() + offset);
  const std::uint64_t header_len = text.size();
  std::memcpy(out.data(), &header_len, 8);
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::size_t at = 8 + text.size();
  for (const Entry* e : order) {
    if (!e->data.empty()) std::memcpy(out.data() + at, e->data.data(), e->data.size());
    at += e->data.size();
  }
  return out;
}

void SafetensorsWriter::write(const std::string& path) const {
  const std::vector<std::byte> bytes = to_bytes();
  // Write next to the target and rename, so readers never see a half-written file and a failed
  // write leaves any previous file intact.
  const std::string temporary = fmt::format("{}.tmp.{}", path, ::getpid());
  std::FILE* f = std::fopen(temporary.c_str(), "wb");
  OCCULT_CHECK(f != nullptr, "{}: cannot create temporary file {}: {}", path, temporary,
               std::strerror(errno));
  const std::size_t written = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool flushed = std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const int err = errno;
  const bool closed = std::fclose(f) == 0;
  if (written != bytes.size() || !flushed || !closed) {
    std::remove(temporary.c_str());
    OCCULT_FAIL("{}: writing {} bytes failed: {}", path, bytes.size(), std::strerror(err));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int rename_err = errno;
    std::remove(temporary.c_str());
    OCCULT_FAIL("{}: cannot rename {} into place: {}", path, temporary, std::strerror(rename_err));
  }
}

}  // namespace occult
