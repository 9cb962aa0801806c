// Checkpoints: a directory holding model.safetensors (every weight in Hugging Face naming,
// experts gathered from their owning ranks), config.json, optimizer.safetensors (AdamW moments
// under "exp_avg." / "exp_avg_sq." + the weight's name) and trainer_state.json (step, data
// position, seed, schedule), so that a resumed run continues exactly.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "occult/model/config.h"
#include "occult/model/model.h"
#include "occult/model/optimizer.h"

namespace occult {

// Collective. Writes the checkpoint into `dir` (created if needed; rank 0 writes, files are
// replaced atomically). `optimizer` may be null (weights only). Errors throw on every rank.
void save_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer,
                     const nlohmann::json& trainer_state);

// "\"key\" is X in the checkpoint but Y in the model" for the first differing config key.
std::string describe_config_difference(const ModelConfig& checkpoint, const ModelConfig& model);

// Reads `dir`/config.json; throws naming the directory when it is not a checkpoint.
ModelConfig load_checkpoint_config(const std::string& dir);

// Collective. Loads the weights this rank holds (and the optimizer moments and step when
// `optimizer` is not null) from `dir`; returns trainer_state.json (empty object if absent).
// Throws on every rank, naming the checkpoint and the first differing key or tensor, when the
// checkpoint's config is not the model's architecture.
nlohmann::json load_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer);

}  // namespace occult
