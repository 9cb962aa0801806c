#include "occult/model/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
      if (!t.expert || t.layer != l || !t.primary) continue;  // one copy of a replicated expert
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

// Writes `bytes` to `path` and fsyncs it; throws naming the file (a full disk, a read-only folder).
void write_synced(const fs::path& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  OCCULT_CHECK(f != nullptr, "cannot create {}: {}", path.string(), std::strerror(errno));
  const std::size_t written = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool synced = std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const int err = errno;
  const bool closed = std::fclose(f) == 0;
  OCCULT_CHECK(written == bytes.size() && synced && closed, "writing {} bytes to {} failed: {}", bytes.size(),
               path.string(), std::strerror(err != 0 ? err : errno));
}

// fsyncs a directory, so the names of the files renamed into it survive a crash.
void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  OCCULT_CHECK(fd >= 0, "cannot open directory {} to sync it: {}", dir.string(), std::strerror(errno));
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  OCCULT_CHECK(ok, "cannot sync directory {}: {}", dir.string(), std::strerror(err));
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

// `dir` without a trailing separator, so that DIR.partial is a sibling and not a child.
fs::path normalized(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p;
}

fs::path partial_of(const fs::path& target) { return fs::path(target.string() + ".partial"); }

// Test hook for the reliability suite: OCCULT_TEST_SAVE_FAULT=FILE ends the process at once (as a
// kill would) right after a save wrote FILE into DIR.partial; FILE "rename" ends it just before
// the rename that publishes the checkpoint.
void save_fault_point(const std::string& file) {
  const char* fault = std::getenv("OCCULT_TEST_SAVE_FAULT");
  if (fault != nullptr && file == fault) std::_Exit(86);
}

// The files a save writes, in the order it writes them; the manifest comes last.
constexpr const char* kCheckpointFiles[] = {kModelWeightsFile, "optimizer.safetensors", "config.json",
                                            "trainer_state.json"};

bool is_checkpoint_file(const std::string& name) {
  if (name == kCheckpointManifestFile) return true;
  for (const char* f : kCheckpointFiles) {
    if (name == f) return true;
  }
  return false;
}

// A directory a save may replace: absent, empty, or an occult checkpoint (one with a manifest,
// or with the trainer_state.json every training save writes).
bool replaceable(const fs::path& dir) {
  if (!fs::exists(dir)) return true;
  if (!fs::is_directory(dir)) return false;
  return fs::is_empty(dir) || fs::exists(dir / kCheckpointManifestFile) || fs::exists(dir / "trainer_state.json");
}

// Puts the complete directory `partial` at `target`, replacing a previous checkpoint there in one
// atomic exchange where the file system supports it (else two renames; a crash between them
// leaves the previous checkpoint in TARGET.old).
void publish(const fs::path& partial, const fs::path& target) {
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  save_fault_point("rename");
  if (!fs::exists(target)) {
    fs::rename(partial, target);
  } else if (::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(partial);  // now the previous checkpoint
  } else {
    const fs::path old = fs::path(target.string() + ".old");
    fs::remove_all(old);
    fs::rename(target, old);
    fs::rename(partial, target);
    fs::remove_all(old);
  }
  sync_directory(parent);
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


std::uint64_t file_checksum(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  OCCULT_CHECK(f != nullptr, "cannot read {}: {}", path, std::strerror(errno));
  std::uint64_t hash = 0xcbf29ce484222325ull;
  std::vector<unsigned char> buffer(1 << 20);
  std::size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0) {
    for (std::size_t i = 0; i < n; ++i) hash = (hash ^ buffer[i]) * 0x100000001b3ull;
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  OCCULT_CHECK(!failed, "error reading {}", path);
  return hash;
}

void check_checkpoint_destination(const std::string& flag, const std::string& dir) {
  OCCULT_CHECK(!dir.empty(), "{} needs a directory", flag);
  const fs::path target = normalized(dir);
  OCCULT_CHECK(!fs::exists(target) || fs::is_directory(target),
               "{} {} is a file, not a directory: a checkpoint is a directory", flag, dir);
  OCCULT_CHECK(replaceable(target),
               "{} {} is a non-empty directory that is not an occult checkpoint (it has no {}); a save "
               "replaces the whole directory, so choose a new one",
               flag, dir, kCheckpointManifestFile);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  OCCULT_CHECK(!ec && fs::is_directory(parent), "{} {}: cannot create the folder {}: {}", flag, dir, parent.string(),
               ec ? ec.message() : "a file of that name exists");
  const fs::path probe = parent / fmt::format(".occult-write-test.{}", ::getpid());
  std::FILE* f = std::fopen(probe.c_str(), "wb");
  const int err = errno;
  OCCULT_CHECK(f != nullptr, "{} {}: cannot write in {}: {}", flag, dir, parent.string(), std::strerror(err));
  std::fclose(f);
  fs::remove(probe, ec);
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
    check_checkpoint_destination("checkpoint directory", dir);
    const fs::path target = normalized(dir);
    // A DIR.partial left by a save that was killed is never a checkpoint: start it afresh.
    const fs::path partial = partial_of(target);
    fs::remove_all(partial);
    fs::create_directory(partial);
    // A save that fails (a full disk) removes its partial directory; a killed one leaves it.
    struct RemoveOnFailure {
      fs::path path;
      bool done = false;
      ~RemoveOnFailure() {
        std::error_code ignored;
        if (!done) fs::remove_all(path, ignored);
      }
    } cleanup{partial};
    const int step = trainer_state.is_object() && trainer_state.contains("step") && trainer_state.at("step").is_number_integer()
                         ? trainer_state.at("step").get<int>()
                         : (optimizer != nullptr ? optimizer->step_count() : 0);
    SafetensorsWriter writer;
    writer.set_metadata("format", kFormat);
    writer.set_metadata("step", std::to_string(optimizer != nullptr ? optimizer->step_count() : 0));
    for (std::size_t i = 0; i < weights.names.size(); ++i) {
      writer.add_f32(weights.names[i], weights.shapes[i], weights.values[i]);
    }
    writer.write((partial / kModelWeightsFile).string());
    save_fault_point(kModelWeightsFile);
    if (optimizer != nullptr) {
      SafetensorsWriter opt;
      opt.set_metadata("format", kFormat);
      opt.set_metadata("step", std::to_string(optimizer->step_count()));
      for (std::size_t i = 0; i < m->names.size(); ++i) {
        opt.add_f32("exp_avg." + m->names[i], m->shapes[i], m->values[i]);
        opt.add_f32("exp_avg_sq." + v->names[i], v->shapes[i], v->values[i]);
      }
      opt.write((partial / "optimizer.safetensors").string());
      save_fault_point("optimizer.safetensors");
    }
    write_synced(partial / "config.json", model_config_to_json(model.config()).dump(2) + "\n");
    save_fault_point("config.json");
    write_synced(partial / "trainer_state.json", trainer_state.dump(2) + "\n");
    save_fault_point("trainer_state.json");
    nlohmann::json files = nlohmann::json::object();
    for (const char* name : kCheckpointFiles) {
      const fs::path path = partial / name;
      if (!fs::exists(path)) continue;
      files[name] = {{"bytes", fs::file_size(path)}, {"fnv1a64", fmt::format("{:016x}", file_checksum(path.string()))}};
    }
    // Files of the previous directory that a checkpoint does not write (a tokenizer.json) stay.
    if (fs::is_directory(target)) {
      for (const auto& entry : fs::directory_iterator(target)) {
        const std::string name = entry.path().filename().string();
        if (entry.is_regular_file() && !is_checkpoint_file(name)) fs::copy_file(entry.path(), partial / name);
      }
    }
    const nlohmann::json manifest{{"format", kFormat}, {"step", step}, {"files", files}};
    write_synced(partial / kCheckpointManifestFile, manifest.dump(2) + "\n");
    save_fault_point(kCheckpointManifestFile);
    sync_directory(partial);
    publish(partial, target);
    cleanup.done = true;
  });
}

bool verify_checkpoint_manifest(const std::string& dir) {
  const fs::path path = fs::path(dir) / kCheckpointManifestFile;
  if (!fs::exists(path)) return false;
  const nlohmann::json manifest = read_json(path);
  OCCULT_CHECK(manifest.is_object() && manifest.contains("files") && manifest.at("files").is_object() &&
                   !manifest.at("files").empty(),
               "{}: expected an object with a non-empty \"files\" object (file -> bytes, fnv1a64)", path.string());
  for (const auto& [name, entry] : manifest.at("files").items()) {
    OCCULT_CHECK(entry.is_object() && entry.contains("bytes") && entry.at("bytes").is_number_unsigned() &&
                     entry.contains("fnv1a64") && entry.at("fnv1a64").is_string() &&
                     name.find('/') == std::string::npos && name != "..",
                 "{}: files[\"{}\"] must be {{\"bytes\": N, \"fnv1a64\": \"hex\"}} for a file of the directory",
                 path.string(), name);
    const fs::path file = fs::path(dir) / name;
    OCCULT_CHECK(fs::is_regular_file(file),
                 "checkpoint {} is incomplete: {} is missing, but {} lists it (a save was interrupted or a file was "
                 "removed)",
                 dir, name, kCheckpointManifestFile);
    const auto bytes = entry.at("bytes").get<std::uint64_t>();
    const auto actual = static_cast<std::uint64_t>(fs::file_size(file));
    OCCULT_CHECK(actual == bytes,
                 "checkpoint {} is torn: {} has {} bytes but {} says {} (a save was interrupted, or the file comes "
                 "from another save)",
                 dir, name, actual, kCheckpointManifestFile, bytes);
    const std::string sum = fmt::format("{:016x}", file_checksum(file.string()));
    OCCULT_CHECK(sum == entry.at("fnv1a64").get<std::string>(),
                 "checkpoint {} is torn or mixed: the checksum of {} is {} but {} says {} (the file was altered or "
                 "comes from another save)",
                 dir, name, sum, kCheckpointManifestFile, entry.at("fnv1a64").get<std::string>());
  }
  return true;
}

ModelConfig load_checkpoint_config(const std::string& dir) {
  OCCULT_CHECK(!fs::exists(dir) || fs::is_directory(dir), "{} is a file, not a model directory", dir);
  OCCULT_CHECK(fs::exists(dir) || !fs::exists(partial_of(normalized(dir))),
               "model directory {} does not exist: {} is what an interrupted save left, not a checkpoint", dir,
               partial_of(normalized(dir)).string());
  OCCULT_CHECK(fs::is_directory(dir), "model directory {} does not exist", dir);
  const fs::path path = fs::path(dir) / "config.json";
  OCCULT_CHECK(fs::exists(path), "{} is not a model directory: it has no config.json", dir);
  return parse_model_config(read_json(path), path.string());
}

nlohmann::json load_checkpoint(const std::string& dir, MoeTransformer& model, AdamW* optimizer) {
  nlohmann::json state = nlohmann::json::object();
  agree_on_errors(model.comm(), [&] {
    const ModelConfig saved = load_checkpoint_config(dir);
    const bool verified = verify_checkpoint_manifest(dir);
    OCCULT_CHECK(verified || optimizer == nullptr,
                 "checkpoint {} has no {}, so it cannot be verified for resuming (a save that did not finish, or "
                 "a directory not written by occult train)",
                 dir, kCheckpointManifestFile);
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
      int step = -1;
      const auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), step);
      OCCULT_CHECK(ec == std::errc() && end == it->second.data() + it->second.size() && step >= 0,
                   "{}: metadata \"step\" must be a non-negative integer, got \"{}\"", opt_path.string(), it->second);
      optimizer->set_step_count(step);
    }
    const fs::path state_path = fs::path(dir) / "trainer_state.json";
    if (fs::exists(state_path)) state = read_json(state_path);
  });
  return state;
}

}  // namespace occult
