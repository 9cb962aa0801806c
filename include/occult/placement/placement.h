// Expert placements: which device holds each expert, per layer (DESIGN.md, "Placement").
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace occult {

// One layer's placement. expert_to_device[e] is the device (rank) that holds expert e.
struct LayerPlacement {
  int layer = 0;
  std::vector<int> expert_to_device;
  nlohmann::json metrics = nlohmann::json::object();  // as written by `occult place`
  std::vector<float> similarity;                      // optional E x E expert similarity
};

// A placement for every MoE layer of a model. Devices [n*D/N, (n+1)*D/N) form node n.
struct Placement {
  int num_experts = 0;
  int num_devices = 0;
  int num_nodes = 1;
  std::string strategy;
  std::vector<LayerPlacement> layers;

  // The placement of MoE layer `layer`; throws naming the layer when there is none.
  const LayerPlacement& layer(int layer) const;
  // The node that holds `device`.
  int node_of_device(int device) const { return device * num_nodes / num_devices; }
};

// Throws occult::Error naming `source` unless: E >= 1, D >= 1, 1 <= N <= D with D % N == 0,
// every layer has E entries in [0, D), and every device holds floor(E/D) or ceil(E/D) experts;
// similarity, when present, is E x E.
void validate_placement(const Placement& placement, const std::string& source);

// Reads a placement JSON ("format": "occult-placement/1"); validates it.
Placement load_placement(const std::string& path);
// Parses an already-read placement document; `path` names it in errors. Validates it.
Placement placement_from_json(const nlohmann::json& doc, const std::string& path);
// The JSON document of DESIGN.md; "similarity", when present, is written as E rows of E.
nlohmann::json placement_to_json(const Placement& placement);
// Writes the JSON (pretty, one layer per block).
void save_placement(const Placement& placement, const std::string& path);

// Expert e on device floor(e*D/E): the contiguous baseline, for `num_layers` layers.
Placement contiguous_placement(int num_experts, int num_devices, int num_layers);

}  // namespace occult
