#include "occult/model/model_dir.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "occult/core/error.h"

namespace occult {

namespace fs = std::filesystem;

namespace {

// Throws the error for a tensor `name` that model directory `dir` lacks, naming the file that
// should have listed it; `expected` ends the tensor's description (" (expected shape [4, 8])").
[[noreturn]] void fail_missing(const std::string& dir,
                               const std::vector<std::shared_ptr<SafetensorsReader>>& files,
                               const std::string& name, const std::string& expected) {
  const fs::path index_path = fs::path(dir) / kModelIndexFile;
  if (!fs::exists(index_path)) {
    OCCULT_FAIL("{} has no tensor \"{}\"{}", (fs::path(dir) / kModelWeightsFile).string(), name,
                expected);
  }
  // A tensor that a shard holds but the index does not list is a broken index, not a missing
  // weight: say which.
  for (const auto& file : files) {
    OCCULT_CHECK(file->find(name) == nullptr,
                 "{}: the weight_map does not list tensor \"{}\"{}, although shard {} holds it",
                 index_path.string(), name, expected, fs::path(file->source()).filename().string());
  }
  OCCULT_FAIL("{}: tensor \"{}\"{} is in neither the weight_map nor any of its {} shards",
              index_path.string(), name, expected, files.size());
}

}  // namespace

ModelWeights ModelWeights::open(const std::string& dir) {
  OCCULT_CHECK(fs::is_directory(dir), "model directory {} does not exist or is not a directory",
               dir);
  ModelWeights w;
  w.dir_ = dir;
  const fs::path index_path = fs::path(dir) / kModelIndexFile;
  const fs::path single_path = fs::path(dir) / kModelWeightsFile;
  if (!fs::exists(index_path)) {
    if (!fs::exists(single_path)) {
      // Shards without their index are the usual way to get here: name them.
      std::vector<std::string> found;
      for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().extension() == ".safetensors") {
          found.push_back(entry.path().filename().string());
        }
      }
      std::sort(found.begin(), found.end());
      std::string hint;
      if (!found.empty()) {
        const std::size_t shown = std::min<std::size_t>(3, found.size());
        hint = fmt::format(
            " (it has {}{}: is the index missing?)",
            fmt::join(found.begin(), found.begin() + shown, ", "),
            found.size() > shown ? fmt::format(" and {} more", found.size() - shown) : "");
      }
      OCCULT_FAIL("model directory {} has neither {} nor {}{}", dir, kModelWeightsFile,
                  kModelIndexFile, hint);
    }
    w.files_.push_back(
        std::make_shared<SafetensorsReader>(SafetensorsReader::open(single_path.string())));
    for (const TensorInfo& info : w.files_[0]->tensors()) w.where_[info.name] = 0;
    return w;
  }
  std::ifstream in(index_path);
  OCCULT_CHECK(in.good(), "cannot read {}", index_path.string());
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    OCCULT_FAIL("{}: not valid JSON ({})", index_path.string(), e.what());
  }
  OCCULT_CHECK(
      index.is_object() && index.contains("weight_map") && index.at("weight_map").is_object(),
      "{}: expected an object with a \"weight_map\" object (tensor name -> shard file)",
      index_path.string());
  std::map<std::string, std::size_t> shard_of_file;
  for (const auto& [name, file] : index.at("weight_map").items()) {
    OCCULT_CHECK(file.is_string(), "{}: weight_map[\"{}\"] must be a shard file name, got {}",
                 index_path.string(), name, file.dump());
    const std::string shard = file.get<std::string>();
    OCCULT_CHECK(shard.find('/') == std::string::npos && shard != ".." && !shard.empty(),
                 "{}: weight_map[\"{}\"] = \"{}\" must name a file inside the model directory",
                 index_path.string(), name, shard);
    auto it = shard_of_file.find(shard);
    if (it == shard_of_file.end()) {
      const fs::path shard_path = fs::path(dir) / shard;
      OCCULT_CHECK(fs::exists(shard_path),
                   "{}: tensor \"{}\" is in shard {}, which does not exist in {}",
                   index_path.string(), name, shard, dir);
      w.files_.push_back(
          std::make_shared<SafetensorsReader>(SafetensorsReader::open(shard_path.string())));
      it = shard_of_file.emplace(shard, w.files_.size() - 1).first;
    }
    OCCULT_CHECK(w.files_[it->second]->find(name) != nullptr,
                 "{}: the index puts tensor \"{}\" in shard {}, which has no such tensor",
                 index_path.string(), name, shard);
    w.where_[name] = it->second;
  }
  return w;
}

bool ModelWeights::contains(const std::string& name) const {
  return where_.count(name) != 0;
}

std::vector<std::string> ModelWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const std::string& ModelWeights::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) fail_missing(dir_, files_, name, "");
  return files_[it->second]->source();
}

namespace {

[[noreturn]] void fail_non_finite(const SafetensorsReader& file, const std::string& name, float value, std::size_t i) {
  OCCULT_FAIL("{}: tensor \"{}\" holds a non-finite value ({}) at element {}: the weights are unusable "
              "(saved from a diverged run, or corrupted)",
              file.source(), name, value, i);
}

}  // namespace

const SafetensorsReader& ModelWeights::file_with(const std::string& name,
                                                 std::span<const std::int64_t> shape) const {
  const auto it = where_.find(name);
  if (it == where_.end()) {
    fail_missing(dir_, files_, name, fmt::format(" (expected shape [{}])", fmt::join(shape, ", ")));
  }
  const SafetensorsReader& file = *files_[it->second];
  file.expect_shape(name, shape);
  return file;
}

void ModelWeights::read(const std::string& name, std::span<const std::int64_t> shape,
                        std::span<float> out) const {
  const SafetensorsReader& file = file_with(name, shape);
  file.read_f32_into(name, out);
  file.release(name);
  // A diverged run's NaN would otherwise surface far away (a gating error, a "null" loss).
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) fail_non_finite(file, name, out[i], i);
  }
}

void ModelWeights::read_bf16(const std::string& name, std::span<const std::int64_t> shape,
                             std::span<std::uint16_t> out) const {
  const SafetensorsReader& file = file_with(name, shape);
  const TensorInfo& info = file.at(name);
  OCCULT_CHECK(out.size() == static_cast<std::size_t>(info.numel()), "{}: tensor '{}' has {} elements, the buffer {}",
               file.source(), name, info.numel(), out.size());
  if (info.dtype == DType::kBF16) {
    const auto bytes = file.raw(info);
    // safetensors is little-endian, as is every host occult builds for.
    std::memcpy(out.data(), bytes.data(), bytes.size());
  } else {
    std::vector<float> wide(out.size());
    file.read_f32_into(name, wide);
    for (std::size_t i = 0; i < wide.size(); ++i) out[i] = float_to_bf16(wide[i]);
  }
  file.release(name);
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(bf16_to_float(out[i]))) fail_non_finite(file, name, bf16_to_float(out[i]), i);
  }
}

DType ModelWeights::dtype_of(const std::string& name) const {
  const auto it = where_.find(name);
  OCCULT_CHECK(it != where_.end(), "model directory {} has no tensor {}", dir_, name);
  return files_[it->second]->at(name).dtype;
}

std::int64_t ModelWeights::stored_bytes() const {
  std::int64_t total = 0;
  for (const auto& [name, index] : where_) {
    const TensorInfo& info = files_[index]->at(name);
    total += static_cast<std::int64_t>(info.data_end - info.data_begin);
  }
  return total;
}

}  // namespace occult
