// The architecture registry, the config reader every family uses, and tensor naming.
#include <algorithm>

#include "model/arch/families.h"
#include "occult/core/error.h"
#include "occult/model/arch.h"

namespace occult {

namespace {

// Every family occult runs; one line per family.
const std::vector<const ArchSpec*>& registry() {
  static const std::vector<const ArchSpec*> specs = {&occult_moe_arch(), &olmoe_arch(),     &qwen2_moe_arch(),
                                                     &qwen3_moe_arch(),  &deepseek_arch(), &mixtral_arch(),
                                                     &deepseek_v2_arch(), &deepseek_v3_arch()};
  return specs;
}

// Levenshtein distance, for "did you mean" on misspelt keys.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

ConfigReader::ConfigReader(const nlohmann::json& json, std::string source) : json_(json), source_(std::move(source)) {
  OCCULT_CHECK(json_.is_object(), "{}: a model config must be a JSON object", source_);
}

const nlohmann::json& ConfigReader::at(const std::string& key) { return json_.at(key); }

bool ConfigReader::has(const std::string& key) {
  known_.insert(key);
  return json_.contains(key) && !json_.at(key).is_null();
}

int ConfigReader::get_int(const std::string& key, int fallback) {
  if (!has(key)) return fallback;
  const auto& v = at(key);
  OCCULT_CHECK(v.is_number_integer(), "{}: config key \"{}\" must be an integer, got {}", source_, key, v.dump());
  const auto value = v.get<std::int64_t>();
  OCCULT_CHECK(value >= -(1ll << 31) && value < (1ll << 31), "{}: config key \"{}\" = {} is out of range", source_,
               key, value);
  return static_cast<int>(value);
}

float ConfigReader::get_float(const std::string& key, float fallback) {
  if (!has(key)) return fallback;
  const auto& v = at(key);
  OCCULT_CHECK(v.is_number(), "{}: config key \"{}\" must be a number, got {}", source_, key, v.dump());
  return v.get<float>();
}

bool ConfigReader::get_bool(const std::string& key, bool fallback) {
  if (!has(key)) return fallback;
  const auto& v = at(key);
  OCCULT_CHECK(v.is_boolean(), "{}: config key \"{}\" must be true or false, got {}", source_, key, v.dump());
  return v.get<bool>();
}

std::string ConfigReader::get_string(const std::string& key, const std::string& fallback) {
  if (!has(key)) return fallback;
  const auto& v = at(key);
  OCCULT_CHECK(v.is_string(), "{}: config key \"{}\" must be a string, got {}", source_, key, v.dump());
  return v.get<std::string>();
}

std::vector<int> ConfigReader::get_int_list(const std::string& key) {
  if (!has(key)) return {};
  const auto& v = at(key);
  if (v.is_number_integer()) return {get_int(key, 0)};
  OCCULT_CHECK(v.is_array(), "{}: config key \"{}\" must be an integer or a list of integers, got {}", source_, key,
               v.dump());
  std::vector<int> out;
  for (const auto& x : v) {
    OCCULT_CHECK(x.is_number_integer() && x.get<std::int64_t>() >= 0 && x.get<std::int64_t>() < (1ll << 31),
                 "{}: config key \"{}\" must hold non-negative integers, got {}", source_, key, x.dump());
    out.push_back(x.get<int>());
  }
  return out;
}

void ConfigReader::require(const std::string& key) {
  if (has(key)) return;
  // A present key one or two edits away is most likely the required one misspelt.
  for (auto it = json_.begin(); it != json_.end(); ++it) {
    OCCULT_CHECK(edit_distance(it.key(), key) > (key.size() >= 6 ? 2u : 1u),
                 "{}: config key \"{}\" is missing; the config has \"{}\": did you mean \"{}\"?", source_, key,
                 it.key(), key);
  }
  OCCULT_FAIL("{}: config key \"{}\" is missing", source_, key);
}

ConfigReader ConfigReader::object(const std::string& key) {
  require(key);
  const auto& v = at(key);
  OCCULT_CHECK(v.is_object(), "{}: config key \"{}\" must be an object, got {}", source_, key, v.dump());
  return ConfigReader(v, fmt::format("{} \"{}\"", source_, key));
}

void ConfigReader::ignore(std::initializer_list<const char*> keys) {
  for (const char* key : keys) known_.insert(key);
}

void ConfigReader::reject_unless(const std::string& key, std::initializer_list<nlohmann::json> allowed,
                                 const std::string& why) {
  if (!has(key)) return;
  const auto& v = at(key);
  const bool ok = std::find(allowed.begin(), allowed.end(), v) != allowed.end();
  OCCULT_CHECK(ok, "{}: config key \"{}\" = {} is not supported: {}", source_, key, v.dump(), why);
}

void ConfigReader::finish(bool strict) {
  for (auto it = json_.begin(); it != json_.end(); ++it) {
    const std::string& key = it.key();
    if (known_.count(key) != 0) continue;
    for (const std::string& k : known_) {
      const std::size_t d = edit_distance(key, k);
      // Two edits on keys of 6+ characters, one on shorter ones: close enough to be a typo,
      // far enough that distinct real keys (e.g. "head_dim" / "hidden_act") are not confused.
      OCCULT_CHECK(d > (k.size() >= 6 ? 2u : 1u), "{}: unknown config key \"{}\": did you mean \"{}\"?", source_,
                   key, k);
    }
    OCCULT_CHECK(!strict, "{}: unknown config key \"{}\"", source_, key);
  }
}

double json_float(float value) { return std::stod(fmt::format("{}", value)); }

const ArchSpec& arch_spec(const std::string& model_type) {
  for (const ArchSpec* spec : registry()) {
    if (spec->model_type == model_type) return *spec;
  }
  std::string names;
  for (const auto& n : supported_model_types()) names += (names.empty() ? "" : ", ") + n;
  OCCULT_FAIL("model_type \"{}\" is not supported (supported: {})", model_type, names);
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const ArchSpec* spec : registry()) out.push_back(spec->model_type);
  return out;
}

std::string expert_tensor_name(const ModelConfig& c, int layer, int expert, int kind) {
  const ArchNames& n = arch_spec(c.model_type).names;
  return fmt::format("model.layers.{}.{}experts.{}.{}.weight", layer, n.moe_prefix, expert, n.expert_kinds[kind]);
}

std::string router_tensor_name(const ModelConfig& c, int layer) {
  return fmt::format("model.layers.{}.{}gate.weight", layer, arch_spec(c.model_type).names.moe_prefix);
}

std::string router_bias_tensor_name(const ModelConfig& c, int layer) {
  return fmt::format("model.layers.{}.{}gate.e_score_correction_bias", layer, arch_spec(c.model_type).names.moe_prefix);
}

std::string shared_tensor_name(const ModelConfig& c, int layer, int kind) {
  static const char* kinds[3] = {"gate_proj", "up_proj", "down_proj"};
  return fmt::format("model.layers.{}.{}{}.weight", layer, arch_spec(c.model_type).names.shared_prefix, kinds[kind]);
}

std::string shared_gate_tensor_name(const ModelConfig& c, int layer) {
  return fmt::format("model.layers.{}.{}", layer, arch_spec(c.model_type).names.shared_gate);
}

std::string dense_mlp_tensor_name(const ModelConfig& c, int layer, int kind) {
  static const char* kinds[3] = {"gate_proj", "up_proj", "down_proj"};
  return fmt::format("model.layers.{}.{}{}.weight", layer, arch_spec(c.model_type).names.dense_prefix, kinds[kind]);
}

}  // namespace occult
