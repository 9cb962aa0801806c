// libFuzzer target for the safetensors reader: any input must either parse (and every tensor
// must then be readable) or throw occult::Error. Build with -DOCCULT_FUZZ=ON and clang, run:
//   build-fuzz/tests/fuzz/safetensors_fuzzer tests/fuzz/corpus -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = std::byte(data[i]);
  try {
    const auto reader = occult::SafetensorsReader::from_bytes(std::move(bytes), "fuzz");
    for (const occult::TensorInfo& info : reader.tensors()) {
      try {
        if (occult::dtype_is_integer(info.dtype)) {
          (void)reader.read_i64(info.name);
        } else {
          (void)reader.read_f32(info.name);
        }
      } catch (const occult::Error&) {
      }
    }
  } catch (const occult::Error&) {
  }
  return 0;
}
