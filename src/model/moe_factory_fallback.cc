// Used only while the expert-parallel MoE layer (occult_moe) is not part of the build: the
// single-process block, at one rank.
#include "model/moe_block.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/model/model.h"

namespace occult {

std::unique_ptr<MoeBlock> make_moe_block(const ModelConfig& config, Communicator& comm,
                                         const ParallelOptions& options, int layer,
                                         std::span<const int> expert_to_device) {
  OCCULT_CHECK(comm.size() == 1, "this build has no expert-parallel MoE layer (occult_moe); run at 1 rank");
  OCCULT_CHECK(options.prune_devices == 0, "this build has no expert-parallel MoE layer: pruning is unavailable");
  return make_local_moe_block(config);
}

}  // namespace occult
