// Inline SVG charts for the search report: scatter and line plots with ticked axes (linear, or
// logarithmic where a quantity spans decades), per-point tooltips and labels, and a legend. The
// report is one self-contained HTML page, so the charts are drawn as SVG text here rather than
// linked images or a JavaScript plotting library.
#pragma once
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace linarch {

// Text made safe inside HTML (and SVG) elements and attribute values: & < > " ' escaped.
std::string html_escape(std::string_view text);

// A compact number for tables and tick labels: 4 significant digits, SI suffixes from 10⁴ on
// (12.5k, 1.2M, 3.4G), scientific below 10⁻³, "—" for NaN.
std::string format_number(double value);

// Whether a positive quantity spans enough orders of magnitude (max/min ≥ 20) for a log axis.
bool spans_decades(std::span<const double> values);

// Okabe-Ito colours (distinguishable with colour-blindness), cycled by series index.
const char* palette_colour(size_t index);

struct ChartSeries {
    std::string label;                 // in the legend; empty: left out of it
    std::vector<double> x, y;          // same length; non-finite points are skipped (and break the line)
    std::vector<std::string> tips;     // per point: a tooltip (SVG <title>); empty or same length
    std::vector<std::string> tags;     // per point: a short text beside the marker; empty or same length
    std::string colour = "#0072b2";
    double line_width = 0;             // 0: no line
    double marker_radius = 0;          // 0: no markers
    double opacity = 1;
};

struct ChartAxis {
    std::string label;
    bool log = false;  // base-10 ticks; non-positive values are skipped
};

struct Chart {
    std::string title;
    std::string subtitle;  // a second, smaller line under the title; empty: none
    ChartAxis x, y;
    std::vector<ChartSeries> series;  // drawn in order: later ones on top
    int width = 470, height = 320;    // the plot and its axes; a legend adds a column on the right
};

// The chart as an <svg> element (all text escaped). No finite point: the axes frame says so.
std::string chart_svg(const Chart& chart);

}  // namespace linarch
