#include "occult/model/model_dir.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "occult/core/error.h"

namespace occult {

namespace fs = std::filesystem;

ModelWeights ModelWeights::open(const std::string& dir) {
  OCCULT_CHECK(fs::is_directory(dir), "model directory {} does not exist or is not a directory", dir);
  ModelWeights w;
  w.dir_ = dir;
  const fs::path index_path = fs::path(dir) / kModelIndexFile;
  const fs::path single_path = fs::path(dir) / kModelWeightsFile;
  if (!fs::exists(index_path)) {
    OCCULT_CHECK(fs::exists(single_path), "model directory {} has neither {} nor {}", dir, kModelWeightsFile,
                 kModelIndexFile);
    w.files_.push_back(std::make_shared<SafetensorsReader>(SafetensorsReader::open(single_path.string())));
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
  OCCULT_CHECK(index.is_object() && index.contains("weight_map") && index.at("weight_map").is_object(),
               "{}: expected an object with a \"weight_map\" object (tensor name -> shard file)",
               index_path.string());
  std::map<std::string, std::size_t> shard_of_file;
  for (const auto& [name, file] : index.at("weight_map").items()) {
    OCCULT_CHECK(file.is_string(), "{}: weight_map[\"{}\"] must be a shard file name, got {}", index_path.string(),
                 name, file.dump());
    const std::string shard = file.get<std::string>();
    OCCULT_CHECK(shard.find('/') == std::string::npos && shard != ".." && !shard.empty(),
                 "{}: weight_map[\"{}\"] = \"{}\" must name a file inside the model directory", index_path.string(),
                 name, shard);
    auto it = shard_of_file.find(shard);
    if (it == shard_of_file.end()) {
      const fs::path shard_path = fs::path(dir) / shard;
      OCCULT_CHECK(fs::exists(shard_path), "{}: tensor \"{}\" is in shard {}, which does not exist in {}",
                   index_path.string(), name, shard, dir);
      w.files_.push_back(std::make_shared<SafetensorsReader>(SafetensorsReader::open(shard_path.string())));
      it = shard_of_file.emplace(shard, w.files_.size() - 1).first;
    }
    OCCULT_CHECK(w.files_[it->second]->find(name) != nullptr,
                 "{}: the index puts tensor \"{}\" in shard {}, which has no such tensor", index_path.string(),
                 name, shard);
    w.where_[name] = it->second;
  }
  return w;
}

bool ModelWeights::contains(const std::string& name) const { return where_.count(name) != 0; }

std::vector<std::string> ModelWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const std::string& ModelWeights::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  OCCULT_CHECK(it != where_.end(), "model directory {} has no tensor \"{}\"", dir_, name);
  return files_[it->second]->source();
}

void ModelWeights::read(const std::string& name, std::span<const std::int64_t> shape, std::span<float> out) const {
  const auto it = where_.find(name);
  OCCULT_CHECK(it != where_.end(), "model directory {} has no tensor \"{}\" (expected shape [{}])", dir_, name,
               fmt::join(shape, ", "));
  const SafetensorsReader& file = *files_[it->second];
  file.expect_shape(name, shape);
  const std::vector<float> values = file.read_f32(name);
  OCCULT_CHECK(values.size() == out.size(), "{}: tensor \"{}\" has {} elements, expected {}", file.source(), name,
               values.size(), out.size());
  std::copy(values.begin(), values.end(), out.begin());
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
