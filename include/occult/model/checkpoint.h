// Checkpoints: a directory holding model.safetensors (every weight in Hugging Face naming,
// experts gathered from their owning ranks), config.json, optimizer.safetensors (AdamW moments
// under "exp_avg." / "exp_avg_sq." + the weight's name), trainer_state.json (step, data
// position, seed, schedule), so that a resumed run continues exactly, and occult_manifest.json
// (the step and each file's size and FNV-1a 64 checksum), written last.
//
// A checkpoint is saved as a unit: every file is written and fsynced into DIR.partial next to
// DIR, then the directory replaces DIR in one rename (the previous checkpoint stays whole until
// then). Loading verifies the manifest, so a torn or mixed directory is refused naming the file.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "occult/model/config.h"
#include "occult/model/model.h"
#include "occult/model/optimizer.h"

namespace occult {

// The manifest of a checkpoint directory, written after every other file of a save.
inline constexpr const char* kCheckpointManifestFile = "occult_manifest.json";

// Collective. Writes the checkpoint as a unit into `dir` (rank 0 writes DIR.partial, fsyncs it and
// renames it over `dir`; parent folders are created; other regular files already in `dir`, such as
// a tokenizer.json, are carried over). `optimizer` may be null (weights only). Errors throw on
// every rank and leave any previous checkpoint in `dir` as it was.
void save_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer,
                     const nlohmann::json& trainer_state);

// Checks, before any work, that a checkpoint can be saved to `dir`: its parent folders are created
// and tested for writing; `dir` must not be a file, nor a non-empty directory that is not an occult
// checkpoint (a save replaces the whole directory). Throws naming `flag` and `dir`.
void check_checkpoint_destination(const std::string& flag, const std::string& dir);

// The FNV-1a 64 checksum of a file's bytes; throws naming the file when it cannot be read.
std::uint64_t file_checksum(const std::string& path);

// Verifies `dir`'s manifest: every listed file exists with the listed size and checksum. Returns
// false when the directory has no manifest (a Hugging Face model directory); throws naming the
// file that disagrees, or the manifest when it is malformed.
bool verify_checkpoint_manifest(const std::string& dir);

// "\"key\" is X in the checkpoint but Y in the model" for the first differing config key.
std::string describe_config_difference(const ModelConfig& checkpoint, const ModelConfig& model);

// Reads `dir`/config.json; throws naming the directory when it is not a checkpoint.
ModelConfig load_checkpoint_config(const std::string& dir);

// Collective. Loads the weights this rank holds (and the optimizer moments and step when
// `optimizer` is not null) from `dir`; returns trainer_state.json (empty object if absent).
// Throws on every rank, naming the checkpoint and the first differing key or tensor, when the
// checkpoint's config is not the model's architecture, when its manifest disagrees with a file
// (verify_checkpoint_manifest; resuming, with `optimizer`, requires the manifest), or when a
// weight holds a non-finite value.
nlohmann::json load_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer);

}  // namespace occult
