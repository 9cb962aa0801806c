// Draws a Chart (chart.h) into a PNG by running gnuplot on the generated script.
#pragma once

#include <string>

#include "occult/plot/chart.h"

namespace occult::plot {

// Writes `chart` as a PNG at `out_path` (parent folders created) by running `gnuplot` from PATH
// on gnuplot_script's text. Throws occult::Error when gnuplot is not on PATH (naming the Debian
// package), when it fails (with its own message), or when it leaves no PNG at `out_path`.
void render_png(const Chart& chart, const std::string& out_path);

}  // namespace occult::plot
