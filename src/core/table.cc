#include "occult/core/table.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "occult/core/error.h"

namespace occult {

namespace {
// Numbers (and "-") right-align so columns of figures line up on the decimal point.
bool looks_numeric(const std::string& cell) {
  if (cell.empty() || cell == "-") return false;
  for (char c : cell) {
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+' ||
          c == 'e' || c == 'x' || c == '%' || c == ',')) {
      return false;
    }
  }
  return true;
}
}  // namespace

TextTable::TextTable(std::vector<std::string> header) : header_(std::move(header)) {}

void TextTable::add_row(std::vector<std::string> cells) {
  OCCULT_CHECK(cells.size() == header_.size(), "table row has {} cells, the header has {}",
               cells.size(), header_.size());
  rows_.push_back(std::move(cells));
}

void TextTable::add_rule() { rows_.emplace_back(); }

std::string TextTable::render() const {
  std::vector<std::size_t> width(header_.size());
  for (std::size_t c = 0; c < header_.size(); ++c) width[c] = header_[c].size();
  for (const auto& row : rows_) {
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::size_t total = 0;
  for (std::size_t w : width) total += w + 2;
  const std::string rule(total > 2 ? total - 2 : 0, '-');

  // A header sits over its column's figures: right-aligned when the column holds any number.
  std::vector<bool> numeric_column(header_.size(), false);
  for (const auto& row : rows_) {
    for (std::size_t c = 0; c < row.size(); ++c) {
      if (looks_numeric(row[c])) numeric_column[c] = true;
    }
  }

  auto render_row = [&](const std::vector<std::string>& row, bool header) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const bool right = header ? numeric_column[c] : looks_numeric(row[c]);
      const std::string pad(width[c] - row[c].size(), ' ');
      line += right ? pad + row[c] : row[c] + pad;
      if (c + 1 < row.size()) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    return line + "\n";
  };

  std::string out = render_row(header_, true) + rule + "\n";
  for (const auto& row : rows_) out += row.empty() ? rule + "\n" : render_row(row, false);
  return out;
}

std::string human_bytes(double bytes) {
  if (bytes >= 1e9) return fmt::format("{:.2f} GB", bytes / 1e9);
  if (bytes >= 1e6) return fmt::format("{:.2f} MB", bytes / 1e6);
  if (bytes >= 1e3) return fmt::format("{:.1f} kB", bytes / 1e3);
  return fmt::format("{:.0f} B", bytes);
}

}  // namespace occult
