#include "occult/core/table.h"

#include <gtest/gtest.h>

#include "occult/core/error.h"

namespace occult {
namespace {

TEST(TextTable, AlignsNumbersRightAndTextLeft) {
  TextTable table({"layer", "strategy", "C_T"});
  table.add_row({"0", "greedy-fps", "2.50"});
  table.add_row({"12", "metis", "10.25"});
  table.add_rule();
  table.add_row({"mean", "-", "6.38"});
  EXPECT_EQ(table.render(),
            "layer  strategy      C_T\n"
            "------------------------\n"
            "    0  greedy-fps   2.50\n"
            "   12  metis       10.25\n"
            "------------------------\n"
            "mean   -            6.38\n");
}

TEST(TextTable, RejectsRowOfWrongWidth) {
  TextTable table({"a", "b"});
  EXPECT_THROW(table.add_row({"1"}), Error);
}

TEST(HumanBytes, PowersOfThousandWithTheUnit) {
  EXPECT_EQ(human_bytes(0), "0 B");
  EXPECT_EQ(human_bytes(999), "999 B");
  EXPECT_EQ(human_bytes(1500), "1.5 kB");
  EXPECT_EQ(human_bytes(49395548), "49.40 MB");
  EXPECT_EQ(human_bytes(13.84e9), "13.84 GB");
}

}  // namespace
}  // namespace occult
