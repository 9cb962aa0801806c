// poke_tensor FILE TENSOR VALUE: overwrites the first element of F32 tensor TENSOR in safetensors
// FILE, in place, with VALUE ("nan", "inf" or a number): the corruption a diverged run or a bad
// disk leaves, for the reliability suite. Reads the header itself so that it does not share code
// with the reader it tests.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: poke_tensor FILE TENSOR VALUE\n");
    return 2;
  }
  std::fstream file(argv[1], std::ios::in | std::ios::out | std::ios::binary);
  if (!file) {
    std::fprintf(stderr, "poke_tensor: cannot open %s\n", argv[1]);
    return 1;
  }
  unsigned char length_bytes[8];
  file.read(reinterpret_cast<char*>(length_bytes), 8);
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  std::string header(header_length, '\0');
  file.read(header.data(), static_cast<std::streamsize>(header_length));
  const nlohmann::json j = nlohmann::json::parse(header);
  if (!j.contains(argv[2]) || j.at(argv[2]).at("dtype") != "F32") {
    std::fprintf(stderr, "poke_tensor: %s has no F32 tensor %s\n", argv[1], argv[2]);
    return 1;
  }
  const std::uint64_t offset = 8 + header_length + j.at(argv[2]).at("data_offsets").at(0).get<std::uint64_t>();
  const float value = std::strtof(argv[3], nullptr);
  file.seekp(static_cast<std::streamoff>(offset));
  file.write(reinterpret_cast<const char*>(&value), sizeof value);
  return file.good() ? 0 : 1;
}
