// Plain-text tables for command summaries: right-aligned numbers, left-aligned text.
#pragma once

#include <string>
#include <vector>

namespace occult {

// Collects rows of cells and renders them with aligned columns and a rule under the header.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header);
  // Adds a row; it must have as many cells as the header.
  void add_row(std::vector<std::string> cells);
  // Adds a horizontal rule before the next row (e.g. above a "mean" line).
  void add_rule();
  // The rendered table, ending with a newline.
  std::string render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;  // an empty row is a rule
};

// A byte count with its unit for tables and progress lines, in powers of 1000: "512 B",
// "1.5 kB", "49.40 MB", "13.84 GB".
std::string human_bytes(double bytes);

}  // namespace occult
