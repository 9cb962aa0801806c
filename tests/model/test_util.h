// Shared helpers of the model, inference and eval tests: tiny configs, the double-precision
// parameter copy, and the error expectation.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "occult/core/error.h"
#include "occult/model/config.h"
#include "occult/model/model.h"
#include "occult/model/reference.h"

namespace occult::testing {

// A tiny config: V=16, H=8, 2 layers, 2 heads (hs 4), E=4, k=2, F=6.
inline ModelConfig tiny_config(bool shared, bool norm_topk, bool tied) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 6;
  c.n_shared_experts = shared ? 1 : 0;
  c.norm_topk_prob = norm_topk;
  c.tie_word_embeddings = tied;
  c.router_aux_loss_coef = 0.1f;
  c.max_position_embeddings = 16;
  c.initializer_range = 0.4f;  // large enough that every nonlinearity is exercised
  return c;
}

// Every tensor of a 1-rank model (all experts local) as doubles.
inline ReferenceParams to_reference(const MoeTransformer& model) {
  ReferenceParams p;
  for (const auto& t : model.tensors()) p[t.name] = std::vector<double>(t.value.begin(), t.value.end());
  return p;
}

// The source tree (ctest sets OCCULT_SOURCE_DIR); falls back to the working directory.
inline std::string source_dir() {
  const char* dir = std::getenv("OCCULT_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

// Expects `body` to throw occult::Error whose message contains `needle`, on this rank (MPI tests
// call it on every rank, so a rank that does not fail is reported).
template <typename Body>
void expect_error(Body&& body, const std::string& needle) {
  try {
    body();
    ADD_FAILURE() << "expected an occult::Error containing \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
  }
}

}  // namespace occult::testing
