#include "occult/placement/graph.h"

#include <gtest/gtest.h>

#include "occult/core/error.h"
#include "occult/routing/statistics.h"
#include "test_traces.h"

namespace occult {
namespace {

using testing::make_routing;

TEST(CollaborationGraph, MergesIdenticalExpertSets) {
  // {1,0} and {0,1} are the same set; {3,2} appears once; {0,2} once.
  const LayerRouting r = make_routing(2, {{1, 0}, {3, 2}, {0, 1}, {0, 2}});
  const CollaborationGraph g = build_collaboration_graph(r, 4);
  ASSERT_EQ(g.num_edges(), 3);
  // Sorted lexicographically by ascending pin lists: {0,1}, {0,2}, {2,3}.
  EXPECT_EQ(g.pins, (std::vector<std::int32_t>{0, 1, 0, 2, 2, 3}));
  EXPECT_EQ(g.edge_weights, (std::vector<std::int64_t>{2, 1, 1}));
  EXPECT_EQ(g.load, (std::vector<std::int64_t>{3, 2, 2, 1}));
  EXPECT_EQ(g.num_tokens, 4);
  // Expert 0 is in hyperedges 0 and 1; expert 2 in 1 and 2.
  EXPECT_EQ(std::vector<std::int32_t>(g.edges_of(0).begin(), g.edges_of(0).end()),
            (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(std::vector<std::int32_t>(g.edges_of(2).begin(), g.edges_of(2).end()),
            (std::vector<std::int32_t>{1, 2}));
  EXPECT_EQ(g.edges_of(3).size(), 1u);
}

TEST(CollaborationGraph, PairwiseGraphMatchesStatisticsReference) {
  std::vector<int> groups;
  const LayerRouting r = testing::planted_routing(24, 4, 3, 500, 0.7, 11, &groups);
  const CollaborationGraph g = build_collaboration_graph(r, 24);
  EXPECT_EQ(g.coactivation, coactivation_counts(r, 24));
  EXPECT_EQ(g.load, expert_load(r, 24));
  std::int64_t total = 0;
  for (std::int64_t w : g.edge_weights) total += w;
  EXPECT_EQ(total, 500);
}

TEST(CollaborationGraph, BadRoutingIsAClearError) {
  try {
    build_collaboration_graph(make_routing(2, {{0, 1}, {2, 2}}), 4);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("token 1 selects expert 2 twice"), std::string::npos) << e.message();
  }
  EXPECT_THROW(build_collaboration_graph(make_routing(2, {{0, 4}}), 4), Error);
  EXPECT_THROW(build_collaboration_graph(make_routing(2, {{0, -1}}), 4), Error);
  LayerRouting empty;
  empty.top_k = 2;
  EXPECT_THROW(build_collaboration_graph(empty, 4), Error);
  EXPECT_THROW(build_collaboration_graph(make_routing(2, {{0, 1}}), 1), Error);  // k > E
}

}  // namespace
}  // namespace occult
