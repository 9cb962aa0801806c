#include "occult/placement/placement.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "occult/core/error.h"
#include "occult/routing/replicas.h"

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

bool Placement::has_replicas() const {
  for (const LayerPlacement& lp : layers) {
    std::size_t held = 0;
    for (const std::vector<int>& experts : lp.device_experts) held += experts.size();
    if (held > lp.expert_to_device.size()) return true;
  }
  return false;
}

namespace {

// Throws naming `source` and the layer unless device_experts lists D devices of at most S
// distinct experts in [0, E), every expert held somewhere and by its primary device.
void validate_device_experts(const Placement& placement, const LayerPlacement& lp,
                             const std::string& source) {
  const int e = placement.num_experts;
  const int d = placement.num_devices;
  const int s = placement.slots_per_device;
  OCCULT_CHECK(s > 0, "{}: layer {} has \"device_experts\" but the placement has no \"slots_per_device\"",
               source, lp.layer);
  OCCULT_CHECK(static_cast<int>(lp.device_experts.size()) == d,
               "{}: layer {}: device_experts has {} lists, expected one per device (num_devices = {})",
               source, lp.layer, lp.device_experts.size(), d);
  std::vector<int> holders(e, 0);
  for (int dev = 0; dev < d; ++dev) {
    const std::vector<int>& experts = lp.device_experts[dev];
    OCCULT_CHECK(static_cast<int>(experts.size()) <= s,
                 "{}: layer {}: device {} holds {} experts, over slots_per_device = {}", source,
                 lp.layer, dev, experts.size(), s);
    std::vector<bool> seen(e, false);
    for (int x : experts) {
      OCCULT_CHECK(x >= 0 && x < e,
                   "{}: layer {}: device {} holds expert {}, outside [0, num_experts = {}) (replicas "
                   "made for another number of experts?)",
                   source, lp.layer, dev, x, e);
      OCCULT_CHECK(!seen[x], "{}: layer {}: device {} lists expert {} twice", source, lp.layer, dev, x);
      seen[x] = true;
      ++holders[x];
    }
  }
  for (int x = 0; x < e; ++x) {
    OCCULT_CHECK(holders[x] > 0, "{}: layer {}: expert {} is on no device in device_experts", source,
                 lp.layer, x);
    const std::vector<int>& primary = lp.device_experts[lp.expert_to_device[x]];
    OCCULT_CHECK(std::find(primary.begin(), primary.end(), x) != primary.end(),
                 "{}: layer {}: expert {}'s primary device {} (expert_to_device) does not list it in "
                 "device_experts",
                 source, lp.layer, x, lp.expert_to_device[x]);
  }
}

}  // namespace

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
  const int s = placement.slots_per_device;
  OCCULT_CHECK(s >= 0, "{}: slots_per_device must be >= 1, got {}", source, s);
  if (s > 0) {
    OCCULT_CHECK(s >= ceil_count,
                 "{}: slots_per_device = {} cannot hold {} experts on {} devices (needs >= ceil(E/D) "
                 "= {})",
                 source, s, e, d, ceil_count);
    OCCULT_CHECK(d <= kMaxReplicaDevices, "{}: placements with slots_per_device span at most {} devices, got {}",
                 source, kMaxReplicaDevices, d);
  }
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
    if (!lp.device_experts.empty()) validate_device_experts(placement, lp, source);
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
  if (placement.slots_per_device > 0) doc["slots_per_device"] = placement.slots_per_device;
  nlohmann::json layers = nlohmann::json::array();
  const std::size_t e = static_cast<std::size_t>(placement.num_experts);
  for (const LayerPlacement& lp : placement.layers) {
    nlohmann::json entry;
    entry["layer"] = lp.layer;
    entry["expert_to_device"] = lp.expert_to_device;
    if (!lp.device_experts.empty()) entry["device_experts"] = lp.device_experts;
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
  if (doc.contains("slots_per_device")) {
    placement.slots_per_device = json_int(doc, "slots_per_device", "the placement", path);
    OCCULT_CHECK(placement.slots_per_device >= 1, "{}: slots_per_device must be >= 1, got {}", path,
                 placement.slots_per_device);
  }
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
    if (entry.contains("device_experts")) {
      const nlohmann::json& lists = entry["device_experts"];
      OCCULT_CHECK(lists.is_array(), "{}: {}: \"device_experts\" must be a list of expert-id lists, one per device",
                   path, layer_context);
      for (std::size_t dev = 0; dev < lists.size(); ++dev) {
        OCCULT_CHECK(lists[dev].is_array(), "{}: {}: device_experts[{}] must be a list of expert ids", path,
                     layer_context, dev);
        std::vector<int> experts;
        for (const nlohmann::json& v : lists[dev]) {
          OCCULT_CHECK(v.is_number_integer(), "{}: {}: device_experts[{}] holds {}, expected integer expert ids",
                       path, layer_context, dev, v.dump());
          experts.push_back(v.get<int>());
        }
        lp.device_experts.push_back(std::move(experts));
      }
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

Placement load_placement(const std::string& path, ReplicaPolicy replicas) {
  std::ifstream in(path);
  OCCULT_CHECK(in.good(), "cannot open placement file {}", path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    OCCULT_FAIL("{}: not valid JSON ({})", path, e.what());
  }
  Placement placement = placement_from_json(doc, path);
  OCCULT_CHECK(replicas == ReplicaPolicy::kAllow || !placement.has_replicas(),
               "placement {} has replicas (slots_per_device {}); the MoE layer runs placements without "
               "replicas",
               path, placement.slots_per_device);
  return placement;
}

void save_placement(const Placement& placement, const std::string& path) {
  validate_placement(placement, path);
  const nlohmann::json doc = placement_to_json(placement);
  // One layer per block: the document header, then each layer on its own lines, with the
  // expert_to_device list on one line so a diff shows which experts moved.
  std::ostringstream out;
  out << "{\n";
  for (const char* key : {"format", "num_experts", "num_devices", "num_nodes", "slots_per_device", "strategy"}) {
    if (!doc.contains(key)) continue;
    out << "  " << nlohmann::json(key).dump() << ": " << doc[key].dump() << ",\n";
  }
  out << "  \"layers\": [";
  const nlohmann::json& layers = doc["layers"];
  for (std::size_t i = 0; i < layers.size(); ++i) {
    out << (i == 0 ? "\n" : ",\n") << "    {";
    bool first = true;
    for (const char* key : {"layer", "expert_to_device", "device_experts", "metrics", "similarity"}) {
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

ExpertHolders layer_holders(const Placement& placement, const LayerPlacement& layer) {
  if (layer.device_experts.empty()) return holders_from_primary(layer.expert_to_device, placement.num_devices);
  return holders_from_device_experts(layer.device_experts, layer.expert_to_device);
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
