#include "occult/placement/placement.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "occult/core/error.h"

namespace occult {

namespace {

constexpr const char* kPlacementFormat = "occult-placement/1";

// The integer field `key` of `object`; throws naming the file, the context and the field.
int json_int(const nlohmann::json& object, const char* key, const std::string& context,
             const std::string& path) {
  OCCULT_CHECK(object.contains(key), "{}: {} has no \"{}\" field", path, context, key);
  const nlohmann::json& value = object.at(key);
  OCCULT_CHECK(value.is_number_integer(), "{}: {} field \"{}\" must be an integer, got {}", path,
               context, key, value.dump());
  const auto v = value.get<std::int64_t>();
  OCCULT_CHECK(v >= std::numeric_limits<int>::min() && v <= std::numeric_limits<int>::max(),
               "{}: {} field \"{}\" = {} does not fit an int", path, context, key, v);
  return static_cast<int>(v);
}

}  // namespace

const LayerPlacement& Placement::layer(int layer) const {
  for (const LayerPlacement& lp : layers) {
    if (lp.layer == layer) return lp;
  }
  OCCULT_FAIL("the placement (strategy '{}') has no entry for MoE layer {} ({} layers present)",
              strategy, layer, layers.size());
}

void validate_placement(const Placement& placement, const std::string& source) {
  const int e = placement.num_experts;
  const int d = placement.num_devices;
  const int n = placement.num_nodes;
  OCCULT_CHECK(e >= 1, "{}: num_experts must be >= 1, got {}", source, e);
  OCCULT_CHECK(d >= 1, "{}: num_devices must be >= 1, got {}", source, d);
  OCCULT_CHECK(n >= 1 && n <= d && d % n == 0,
               "{}: num_nodes must divide num_devices ({}) and lie in [1, {}], got {}", source, d,
               d, n);
  OCCULT_CHECK(!placement.layers.empty(), "{}: the placement has no layers", source);
  const int floor_count = e / d;
  const int ceil_count = (e + d - 1) / d;
  std::set<int> seen_layers;
  for (const LayerPlacement& lp : placement.layers) {
    OCCULT_CHECK(lp.layer >= 0, "{}: layer index must be >= 0, got {}", source, lp.layer);
    OCCULT_CHECK(seen_layers.insert(lp.layer).second, "{}: layer {} appears twice", source,
                 lp.layer);
    OCCULT_CHECK(static_cast<int>(lp.expert_to_device.size()) == e,
                 "{}: layer {}: expert_to_device has {} entries, expected num_experts = {}", source,
                 lp.layer, lp.expert_to_device.size(), e);
    std::vector<int> count(d, 0);
    for (int x = 0; x < e; ++x) {
      const int dev = lp.expert_to_device[x];
      OCCULT_CHECK(dev >= 0 && dev < d,
                   "{}: layer {}: expert {} is on device {}, outside [0, {})", source, lp.layer, x,
                   dev, d);
      ++count[dev];
    }
    for (int dev = 0; dev < d; ++dev) {
      OCCULT_CHECK(count[dev] == floor_count || count[dev] == ceil_count,
                   "{}: layer {}: device {} holds {} experts; a balanced placement of {} experts "
                   "on {} devices holds {} or {} per device",
                   source, lp.layer, dev, count[dev], e, d, floor_count, ceil_count);
    }
    if (!lp.similarity.empty()) {
      OCCULT_CHECK(lp.similarity.size() == static_cast<std::size_t>(e) * e,
                   "{}: layer {}: similarity has {} values, expected {} x {}", source, lp.layer,
                   lp.similarity.size(), e, e);
    }
  }
}

nlohmann::json placement_to_json(const Placement& placement) {
  nlohmann::json doc;
  doc["format"] = kPlacementFormat;
  doc["num_experts"] = placement.num_experts;
  doc["num_devices"] = placement.num_devices;
  doc["num_nodes"] = placement.num_nodes;
  doc["strategy"] = placement.strategy;
  nlohmann::json layers = nlohmann::json::array();
  const std::size_t e = static_cast<std::size_t>(placement.num_experts);
  for (const LayerPlacement& lp : placement.layers) {
    nlohmann::json entry;
    entry["layer"] = lp.layer;
    entry["expert_to_device"] = lp.expert_to_device;
    entry["metrics"] = lp.metrics;
    if (!lp.similarity.empty()) {
      // Nested rows: readable, and the shape is explicit in the document.
      nlohmann::json rows = nlohmann::json::array();
      for (std::size_t i = 0; i < e && (i + 1) * e <= lp.similarity.size(); ++i) {
        rows.push_back(std::vector<float>(lp.similarity.begin() + i * e,
                                          lp.similarity.begin() + (i + 1) * e));
      }
      entry["similarity"] = std::move(rows);
    }
    layers.push_back(std::move(entry));
  }
  doc["layers"] = std::move(layers);
  return doc;
}

Placement placement_from_json(const nlohmann::json& doc, const std::string& path) {
  OCCULT_CHECK(doc.is_object(), "{}: a placement must be a JSON object", path);
  OCCULT_CHECK(doc.contains("format") && doc["format"].is_string(),
               "{}: no \"format\" string; expected \"{}\"", path, kPlacementFormat);
  const std::string format = doc["format"].get<std::string>();
  OCCULT_CHECK(format == kPlacementFormat, "{}: format is \"{}\", expected \"{}\"", path, format,
               kPlacementFormat);
  Placement placement;
  placement.num_experts = json_int(doc, "num_experts", "the placement", path);
  placement.num_devices = json_int(doc, "num_devices", "the placement", path);
  placement.num_nodes = doc.contains("num_nodes") ? json_int(doc, "num_nodes", "the placement", path)
                                                  : 1;
  if (doc.contains("strategy")) {
    OCCULT_CHECK(doc["strategy"].is_string(), "{}: field \"strategy\" must be a string", path);
    placement.strategy = doc["strategy"].get<std::string>();
  }
  OCCULT_CHECK(doc.contains("layers") && doc["layers"].is_array(),
               "{}: no \"layers\" array", path);
  const std::size_t e = static_cast<std::size_t>(std::max(placement.num_experts, 0));
  std::size_t position = 0;
  for (const nlohmann::json& entry : doc["layers"]) {
    const std::string context = fmt::format("layers[{}]", position++);
    OCCULT_CHECK(entry.is_object(), "{}: {} must be an object", path, context);
    LayerPlacement lp;
    lp.layer = json_int(entry, "layer", context, path);
    const std::string layer_context = fmt::format("layer {}", lp.layer);
    OCCULT_CHECK(entry.contains("expert_to_device") && entry["expert_to_device"].is_array(),
                 "{}: {} has no \"expert_to_device\" array", path, layer_context);
    for (const nlohmann::json& v : entry["expert_to_device"]) {
      OCCULT_CHECK(v.is_number_integer(),
                   "{}: {}: expert_to_device holds {}, expected integer device ids", path,
                   layer_context, v.dump());
      lp.expert_to_device.push_back(v.get<int>());
    }
    if (entry.contains("metrics")) {
      OCCULT_CHECK(entry["metrics"].is_object(), "{}: {}: \"metrics\" must be an object", path,
                   layer_context);
      lp.metrics = entry["metrics"];
    }
    if (entry.contains("similarity") && !entry["similarity"].is_null()) {
      const nlohmann::json& sim = entry["similarity"];
      OCCULT_CHECK(sim.is_array(), "{}: {}: \"similarity\" must be an array of {} rows", path,
                   layer_context, e);
      // Accept nested rows (what we write) or one flat row-major list of E*E numbers.
      const bool nested = !sim.empty() && sim.front().is_array();
      if (nested) {
        OCCULT_CHECK(sim.size() == e, "{}: {}: similarity has {} rows, expected {}", path,
                     layer_context, sim.size(), e);
        for (std::size_t i = 0; i < sim.size(); ++i) {
          OCCULT_CHECK(sim[i].is_array() && sim[i].size() == e,
                       "{}: {}: similarity row {} must hold {} numbers", path, layer_context, i, e);
          for (const nlohmann::json& v : sim[i]) {
            OCCULT_CHECK(v.is_number(), "{}: {}: similarity row {} holds {}, expected numbers",
                         path, layer_context, i, v.dump());
            lp.similarity.push_back(v.get<float>());
          }
        }
      } else {
        for (const nlohmann::json& v : sim) {
          OCCULT_CHECK(v.is_number(), "{}: {}: similarity holds {}, expected numbers", path,
                       layer_context, v.dump());
          lp.similarity.push_back(v.get<float>());
        }
      }
    }
    placement.layers.push_back(std::move(lp));
  }
  validate_placement(placement, path);
  return placement;
}

Placement load_placement(const std::string& path) {
  std::ifstream in(path);
  OCCULT_CHECK(in.good(), "cannot open placement file {}", path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    OCCULT_FAIL("{}: not valid JSON ({})", path, e.what());
  }
  return placement_from_json(doc, path);
}

void save_placement(const Placement& placement, const std::string& path) {
  validate_placement(placement, path);
  const nlohmann::json doc = placement_to_json(placement);
  // One layer per block: the document header, then each layer on its own lines, with the
  // expert_to_device list on one line so a diff shows which experts moved.
  std::ostringstream out;
  out << "{\n";
  for (const char* key : {"format", "num_experts", "num_devices", "num_nodes", "strategy"}) {
    out << "  " << nlohmann::json(key).dump() << ": " << doc[key].dump() << ",\n";
  }
  out << "  \"layers\": [";
  const nlohmann::json& layers = doc["layers"];
  for (std::size_t i = 0; i < layers.size(); ++i) {
    out << (i == 0 ? "\n" : ",\n") << "    {";
    bool first = true;
    for (const char* key : {"layer", "expert_to_device", "metrics", "similarity"}) {
      if (!layers[i].contains(key)) continue;
      out << (first ? "" : ",") << "\n      " << nlohmann::json(key).dump() << ": "
          << layers[i][key].dump();
      first = false;
    }
    out << "\n    }";
  }
  out << "\n  ]\n}\n";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream file(tmp, std::ios::trunc);
    OCCULT_CHECK(file.good(), "cannot write placement file {}", path);
    file << out.str();
    file.flush();
    OCCULT_CHECK(file.good(), "failed writing placement file {}", path);
  }
  OCCULT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename {} to {}", tmp, path);
}

Placement contiguous_placement(int num_experts, int num_devices, int num_layers) {
  OCCULT_CHECK(num_experts >= 1 && num_devices >= 1 && num_devices <= num_experts,
               "contiguous placement needs 1 <= num_devices ({}) <= num_experts ({})", num_devices,
               num_experts);
  OCCULT_CHECK(num_layers >= 1, "contiguous placement needs num_layers >= 1, got {}", num_layers);
  Placement placement;
  placement.num_experts = num_experts;
  placement.num_devices = num_devices;
  placement.num_nodes = 1;
  placement.strategy = "contiguous";
  for (int l = 0; l < num_layers; ++l) {
    LayerPlacement lp;
    lp.layer = l;
    lp.expert_to_device.resize(num_experts);
    for (int e = 0; e < num_experts; ++e) {
      lp.expert_to_device[e] =
          static_cast<int>(static_cast<std::int64_t>(e) * num_devices / num_experts);
    }
    placement.layers.push_back(std::move(lp));
  }
  return placement;
}

}  // namespace occult
