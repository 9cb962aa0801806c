// Expert placements: which device holds each expert, per layer (DESIGN.md, "Placement").
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "occult/routing/replicas.h"

namespace occult {

// One layer's placement. expert_to_device[e] is the device (rank) that holds expert e's
// primary copy; device_experts, when not empty, lists for every device all the experts it holds
// (primaries and replicas), so an expert may live on several devices.
struct LayerPlacement {
  LayerPlacement() = default;
  // A layer from its fields, in member order.
  LayerPlacement(int layer_index, std::vector<int> primary, nlohmann::json layer_metrics = nlohmann::json::object(),
                 std::vector<float> layer_similarity = {}, std::vector<std::vector<int>> holders = {})
      : layer(layer_index),
        expert_to_device(std::move(primary)),
        metrics(std::move(layer_metrics)),
        similarity(std::move(layer_similarity)),
        device_experts(std::move(holders)) {}

  int layer = 0;
  std::vector<int> expert_to_device;
  nlohmann::json metrics = nlohmann::json::object();  // as written by `occult place`
  std::vector<float> similarity;                      // optional E x E expert similarity
  std::vector<std::vector<int>> device_experts;       // [D][<= S] or empty (primaries only)
};

// A placement for every MoE layer of a model. Devices [n*D/N, (n+1)*D/N) form node n.
struct Placement {
  int num_experts = 0;
  int num_devices = 0;
  int num_nodes = 1;
  int slots_per_device = 0;  // S: experts a device may hold; 0 when the file has no slots
  std::string strategy;
  std::vector<LayerPlacement> layers;

  // True when some layer holds an expert on more than one device.
  bool has_replicas() const;

  // The placement of MoE layer `layer`; throws naming the layer when there is none.
  const LayerPlacement& layer(int layer) const;
  // The node that holds `device`.
  int node_of_device(int device) const { return device * num_nodes / num_devices; }
};

// Throws occult::Error naming `source` unless: E >= 1, D >= 1, 1 <= N <= D with D % N == 0,
// every layer has E entries in [0, D), and every device holds floor(E/D) or ceil(E/D) primaries;
// similarity, when present, is E x E. With slots (S > 0): ceil(E/D) <= S, D <= 64, and each
// layer's device_experts (when present) has D lists of at most S distinct ids in [0, E) in which
// every expert appears at least once, its primary device among its holders.
void validate_placement(const Placement& placement, const std::string& source);

// Whether a reader accepts placements with replicas.
enum class ReplicaPolicy {
  kRefuse,  // the MoE layer, training and inference run placements without replicas
  kAllow,   // placement metrics and pruning route tokens to any holder
};

// Reads a placement JSON ("format": "occult-placement/1"); validates it. Under kRefuse a
// placement with replicas is an error naming the file and its slots_per_device.
Placement load_placement(const std::string& path, ReplicaPolicy replicas = ReplicaPolicy::kRefuse);
// Parses an already-read placement document; `path` names it in errors. Validates it.
Placement placement_from_json(const nlohmann::json& doc, const std::string& path);
// The JSON document of DESIGN.md; "similarity", when present, is written as E rows of E.
nlohmann::json placement_to_json(const Placement& placement);
// Writes the JSON (pretty, one layer per block).
void save_placement(const Placement& placement, const std::string& path);

// The holders of `layer` of `placement`: its device_experts when present, else every expert on
// its primary device only. Throws when the placement spans more than 64 devices.
ExpertHolders layer_holders(const Placement& placement, const LayerPlacement& layer);

// Expert e on device floor(e*D/E): the contiguous baseline, for `num_layers` layers.
Placement contiguous_placement(int num_experts, int num_devices, int num_layers);

}  // namespace occult
