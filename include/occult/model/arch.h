// Architecture families: what a config.json `model_type` means. Each family maps its config keys
// onto ModelConfig and its Hugging Face tensor names onto the model's building blocks; adding a
// family is one file in src/model/arch/ plus one line in the registry (src/model/arch/registry.cc).
#pragma once

#include <nlohmann/json.hpp>

#include <set>
#include <string>
#include <vector>

#include "occult/model/config.h"

namespace occult {

// Reads a config object key by key for one family, remembering every key a family asked about,
// so the keys left over can be checked for misspellings. Errors name the file and the key.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& json, std::string source);
  // True when `key` is present and not null; records the key as known.
  bool has(const std::string& key);
  // The value of `key`, or `fallback` when absent or null; throws when it has the wrong type.
  int get_int(const std::string& key, int fallback);
  float get_float(const std::string& key, float fallback);
  bool get_bool(const std::string& key, bool fallback);
  std::string get_string(const std::string& key, const std::string& fallback);
  // An integer or a list of integers (eos_token_id); empty when absent or null.
  std::vector<int> get_int_list(const std::string& key);
  // Throws unless `key` is present.
  void require(const std::string& key);
  // A reader of the object under `key` (present, not null, or this throws naming the key);
  // its errors name "<source> \"<key>\"" as their source.
  ConfigReader object(const std::string& key);
  // Marks keys that are known not to change the arithmetic (read and deliberately ignored).
  void ignore(std::initializer_list<const char*> keys);
  // Throws "<source>: config key "<key>" = <value> is not supported: <why>" when `key` is
  // present, not null and its value is not one of `allowed` (JSON values; empty: any value).
  void reject_unless(const std::string& key, std::initializer_list<nlohmann::json> allowed, const std::string& why);
  // Checks the keys never asked about: one within a small edit distance of a known key is an
  // error naming both; with `strict` any unknown key is an error (occult's own configs).
  void finish(bool strict);
  const std::string& source() const { return source_; }

 private:
  const nlohmann::json& at(const std::string& key);
  const nlohmann::json& json_;
  std::string source_;
  std::set<std::string> known_;
};

// Hugging Face tensor names of one family, relative to "model.layers.{l}.".
struct ArchNames {
  std::string moe_prefix = "mlp.";                                      // router "gate.weight" and "experts." under it
  std::string expert_kinds[3] = {"gate_proj", "up_proj", "down_proj"};  // W1 (gate), W3 (up), W2 (down)
  std::string shared_prefix = "mlp.shared_experts.";                    // shared-expert MLP
  std::string shared_gate = "mlp.shared_expert_gate.weight";            // its sigmoid gate [1,H]
  std::string dense_prefix = "mlp.";                                    // dense MLP layers
};

// One architecture family.
struct ArchSpec {
  std::string model_type;    // config.json "model_type"
  std::string architecture;  // config.json "architectures"[0], e.g. OlmoeForCausalLM
  ArchNames names;
  // Reads the family's keys into `config` (shape keys common to every family are read before).
  void (*read)(ConfigReader& reader, ModelConfig& config);
  // Writes the family's keys (the common ones are written by model_config_to_json).
  void (*write)(const ModelConfig& config, nlohmann::json& json);
  // True when unknown keys are errors rather than ignored.
  bool strict = false;
};

// A float config value as the shortest double that reads back as the same float (0.02f is
// written as 0.02, not 0.019999999552965164), as the file it came from most likely had it.
double json_float(float value);

// The family of `model_type`; throws naming the type and the supported ones.
const ArchSpec& arch_spec(const std::string& model_type);
// Every supported model_type, for help text and errors.
std::vector<std::string> supported_model_types();

// Tensor names of layer `layer`: the routed expert `expert`'s W1/W3/W2 (kind 0/1/2), the router,
// the shared expert (kind 0/1/2) and its gate, the dense MLP (kind 0/1/2).
std::string expert_tensor_name(const ModelConfig& config, int layer, int expert, int kind);
std::string router_tensor_name(const ModelConfig& config, int layer);
// The router's selection bias [E] (DeepSeek-V3 "mlp.gate.e_score_correction_bias").
std::string router_bias_tensor_name(const ModelConfig& config, int layer);
std::string shared_tensor_name(const ModelConfig& config, int layer, int kind);
std::string shared_gate_tensor_name(const ModelConfig& config, int layer);
std::string dense_mlp_tensor_name(const ModelConfig& config, int layer, int kind);

}  // namespace occult
