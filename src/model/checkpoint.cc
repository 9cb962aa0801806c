#include "occult/model/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/model/arch.h"
#include "occult/model/model_dir.h"

namespace occult {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "occult-checkpoint/1";

// Every tensor of the whole model in checkpoint order, paired with where this rank keeps it.
// Expert tensors are gathered with one all-reduce per layer: the owner contributes its values,
// every other rank zeros, so the sum is exact.
struct Gathered {
  std::vector<std::string> names;
  std::vector<std::vector<std::int64_t>> shapes;
  std::vector<std::vector<float>> values;
};

// `source(i)` gives the span of model.tensors()[i] to gather (values, exp_avg or exp_avg_sq).
template <typename Source>
Gathered gather(MoeTransformer& model, Source source) {
  const auto& c = model.config();
  const auto& tensors = model.tensors();
  Gathered g;
  const int L = c.num_hidden_layers, E = c.num_experts;
  const std::int64_t FH = static_cast<std::int64_t>(c.moe_intermediate_size) * c.hidden_size;
  // Dense tensors: identical on every rank; take the local copy.
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].expert) continue;
    const auto s = source(i);
    g.names.push_back(tensors[i].name);
    g.shapes.push_back(tensors[i].shape);
    g.values.emplace_back(s.begin(), s.end());
  }
  for (int l = 0; l < L; ++l) {
    if (!c.is_moe_layer(l)) continue;
    std::vector<float> buffer(static_cast<std::size_t>(E) * 3 * FH, 0.0f);  // [E,3,F*H]
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      if (!t.expert || t.layer != l) continue;
      const auto s = source(i);
      std::copy(s.begin(), s.end(), buffer.begin() + (static_cast<std::int64_t>(t.expert_id) * 3 + t.expert_kind) * FH);
    }
    model.comm().all_reduce_sum(std::span<float>(buffer));
    for (int e = 0; e < E; ++e) {
      for (int kind = 0; kind < 3; ++kind) {
        g.names.push_back(expert_tensor_name(c, l, e, kind));
        g.shapes.push_back(kind < 2 ? std::vector<std::int64_t>{c.moe_intermediate_size, c.hidden_size}
                                    : std::vector<std::int64_t>{c.hidden_size, c.moe_intermediate_size});
        const auto begin = buffer.begin() + (static_cast<std::int64_t>(e) * 3 + kind) * FH;
        g.values.emplace_back(begin, begin + FH);
      }
    }
  }
  return g;
}

void write_text(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    OCCULT_CHECK(out.good(), "cannot write {}", tmp.string());
    out << text;
    OCCULT_CHECK(out.good(), "cannot write {}", tmp.string());
  }
  fs::rename(tmp, path);
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  OCCULT_CHECK(in.good(), "cannot read {}", path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::parse_error& e) {
    OCCULT_FAIL("{}: not valid JSON ({})", path.string(), e.what());
  }
}

}  // namespace

// The first key where the checkpoint's config differs from the model's, for the mismatch error.
std::string describe_config_difference(const ModelConfig& checkpoint, const ModelConfig& model) {
  const auto jc = model_config_to_json(checkpoint), jm = model_config_to_json(model);
  for (auto it = jc.begin(); it != jc.end(); ++it) {
    if (!jm.contains(it.key()) || jm.at(it.key()) != it.value()) {
      return fmt::format("\"{}\" is {} in the checkpoint but {} in the model", it.key(), it.value().dump(),
                         jm.contains(it.key()) ? jm.at(it.key()).dump() : "absent");
    }
  }
  return "(no key differs)";
}


void save_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer,
                     const nlohmann::json& trainer_state) {
  const auto& tensors = model.tensors();
  const Gathered weights = gather(model, [&](std::size_t i) { return std::span<const float>(tensors[i].value); });
  std::optional<Gathered> m, v;
  if (optimizer != nullptr) {
    m = gather(model, [&](std::size_t i) { return std::span<const float>(optimizer->exp_avg(i)); });
    v = gather(model, [&](std::size_t i) { return std::span<const float>(optimizer->exp_avg_sq(i)); });
  }
  agree_on_errors(model.comm(), [&] {
    if (model.comm().rank() != 0) return;
    std::error_code ec;
    fs::create_directories(dir, ec);
    OCCULT_CHECK(!ec && fs::is_directory(dir), "cannot create checkpoint directory {}: {}", dir, ec.message());
    SafetensorsWriter writer;
    writer.set_metadata("format", kFormat);
    writer.set_metadata("step", std::to_string(optimizer != nullptr ? optimizer->step_count() : 0));
    for (std::size_t i = 0; i < weights.names.size(); ++i) {
      writer.add_f32(weights.names[i], weights.shapes[i], weights.values[i]);
    }
    writer.write((fs::path(dir) / "model.safetensors").string());
    if (optimizer != nullptr) {
      SafetensorsWriter opt;
      opt.set_metadata("format", kFormat);
      opt.set_metadata("step", std::to_string(optimizer->step_count()));
      for (std::size_t i = 0; i < m->names.size(); ++i) {
        opt.add_f32("exp_avg." + m->names[i], m->shapes[i], m->values[i]);
        opt.add_f32("exp_avg_sq." + v->names[i], v->shapes[i], v->values[i]);
      }
      opt.write((fs::path(dir) / "optimizer.safetensors").string());
    }
    write_text(fs::path(dir) / "config.json", model_config_to_json(model.config()).dump(2) + "\n");
    write_text(fs::path(dir) / "trainer_state.json", trainer_state.dump(2) + "\n");
  });
}

ModelConfig load_checkpoint_config(const std::string& dir) {
  OCCULT_CHECK(fs::is_directory(dir), "model directory {} does not exist or is not a directory", dir);
  const fs::path path = fs::path(dir) / "config.json";
  OCCULT_CHECK(fs::exists(path), "{} is not a model directory: it has no config.json", dir);
  return parse_model_config(read_json(path), path.string());
}

nlohmann::json load_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer) {
  nlohmann::json state = nlohmann::json::object();
  agree_on_errors(model.comm(), [&] {
    const ModelConfig saved = load_checkpoint_config(dir);
    OCCULT_CHECK(same_architecture(saved, model.config()),
                 "checkpoint {} was trained with another model config: {}", dir,
                 describe_config_difference(saved, model.config()));
    const ModelWeights weights = ModelWeights::open(dir);
    for (const auto& t : model.tensors()) {
      if (t.value_bf16.empty()) {
        weights.read(t.name, t.shape, t.value);
      } else {
        weights.read_bf16(t.name, t.shape, t.value_bf16);
      }
    }
    if (optimizer != nullptr) {
      const fs::path opt_path = fs::path(dir) / "optimizer.safetensors";
      OCCULT_CHECK(fs::exists(opt_path), "checkpoint {} has no optimizer.safetensors: it cannot be resumed", dir);
      const auto opt = SafetensorsReader::open(opt_path.string());
      const auto& tensors = model.tensors();
      for (std::size_t i = 0; i < tensors.size(); ++i) {
        const auto m = opt.read_f32("exp_avg." + tensors[i].name);
        const auto v = opt.read_f32("exp_avg_sq." + tensors[i].name);
        OCCULT_CHECK(static_cast<std::int64_t>(m.size()) == tensors[i].numel &&
                         static_cast<std::int64_t>(v.size()) == tensors[i].numel,
                     "{}: optimizer moments of {} have the wrong size", opt_path.string(), tensors[i].name);
        optimizer->exp_avg(i) = m;
        optimizer->exp_avg_sq(i) = v;
      }
      const auto it = opt.metadata().find("step");
      OCCULT_CHECK(it != opt.metadata().end(), "{}: metadata has no step", opt_path.string());
      optimizer->set_step_count(std::stoi(it->second));
    }
    const fs::path state_path = fs::path(dir) / "trainer_state.json";
    if (fs::exists(state_path)) state = read_json(state_path);
  });
  return state;
}

}  // namespace occult
