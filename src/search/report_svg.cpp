#include "search/report_svg.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>

#include <fmt/format.h>

#include "eval/plot.hpp"

namespace linarch {

std::string html_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '\'': out += "&#39;"; break;
            default: out += c;
        }
    return out;
}

std::string format_number(double value) {
    if (std::isnan(value)) return "—";
    if (std::isinf(value)) return value > 0 ? "∞" : "−∞";
    const double magnitude = std::abs(value);
    if (magnitude >= 1e4 && magnitude < 1e18) {
        const char* suffixes[] = {"k", "M", "G", "T", "P"};
        int power = std::min(4, int(std::floor(std::log10(magnitude) / 3)) - 1);
        double scaled = value / std::pow(1000.0, power + 1);
        // 999.96k rounds to "1000k": move it to the next unit.
        if (std::abs(scaled) >= 999.95 && power < 4) scaled = value / std::pow(1000.0, ++power + 1);
        return fmt::format("{:.4g}{}", scaled, suffixes[power]);
    }
    if (magnitude >= 1e18 || (magnitude != 0 && magnitude < 1e-3)) return fmt::format("{:.3e}", value);
    return fmt::format("{:.4g}", value);
}

bool spans_decades(std::span<const double> values) {
    double low = INFINITY, high = -INFINITY;
    for (const double v : values) {
        if (std::isnan(v)) continue;
        if (!(v > 0) || std::isinf(v)) return false;
        low = std::min(low, v);
        high = std::max(high, v);
    }
    return high >= low && high / low >= 20;
}

const char* palette_colour(size_t index) {
    static const char* const colours[] = {"#0072b2", "#e69f00", "#009e73", "#cc79a7",
                                          "#56b4e9", "#d55e00", "#8a7a00", "#000000"};
    return colours[index % std::size(colours)];
}

namespace {

bool usable(double value, bool log) { return std::isfinite(value) && (!log || value > 0); }

// Maps data values on one axis to pixels; `ticks` are in data units, inside the domain.
struct Scale {
    bool log = false;
    double low = 0, high = 1;  // domain, in log10 units on a log axis
    double pixel_low = 0, pixel_high = 1;
    std::vector<double> ticks;

    double operator()(double value) const {
        const double t = ((log ? std::log10(value) : value) - low) / (high - low);
        return pixel_low + t * (pixel_high - pixel_low);
    }
};

Scale make_scale(const std::vector<double>& values, bool log, double pixel_low, double pixel_high) {
    Scale scale{log, 0, 1, pixel_low, pixel_high, {}};
    double low = INFINITY, high = -INFINITY;
    for (const double v : values) {
        if (!usable(v, log)) continue;
        low = std::min(low, log ? std::log10(v) : v);
        high = std::max(high, log ? std::log10(v) : v);
    }
    if (low > high) {  // no data: an empty frame
        low = 0;
        high = 1;
    }
    if (log) {
        // Whole decades, with 2× and 5× ticks when there are only one or two of them.
        if (high - low < 1e-9) low -= 0.5, high += 0.5;
        scale.low = std::floor(low);
        scale.high = std::ceil(high);
        for (int k = int(scale.low); k <= int(scale.high); ++k)
            for (const double factor : {1.0, 2.0, 5.0}) {
                if (factor != 1 && scale.high - scale.low > 2) continue;
                const double tick = factor * std::pow(10.0, k);
                if (std::log10(tick) <= scale.high + 1e-9) scale.ticks.push_back(tick);
            }
        return scale;
    }
    const double pad = high > low ? 0.05 * (high - low) : (low != 0 ? 0.1 * std::abs(low) : 1.0);
    scale.low = low - pad;
    scale.high = high + pad;
    scale.ticks = nice_ticks(scale.low, scale.high, 6);
    return scale;
}

std::string px(double value) { return fmt::format("{:.1f}", value); }

}  // namespace

std::string chart_svg(const Chart& chart) {
    // Plot area inside the axes' margins; the legend (if any) is a column to the right.
    constexpr double left = 64, right = 14, bottom = 44, legend_row = 16;
    const double top = chart.subtitle.empty() ? 30 : 44;
    size_t legend_entries = 0, longest_label = 0;
    for (const ChartSeries& s : chart.series)
        if (!s.label.empty()) {
            ++legend_entries;
            longest_label = std::max(longest_label, std::min<size_t>(s.label.size(), 32));
        }
    const double legend_width = legend_entries == 0 ? 0 : 34 + 6.5 * double(longest_label);
    const double width = chart.width + legend_width;
    const double height = std::max<double>(chart.height, top + legend_row * double(legend_entries) + 8);
    const double plot_left = left, plot_right = chart.width - right, plot_top = top,
                 plot_bottom = chart.height - bottom;

    std::vector<double> xs, ys;
    bool any_point = false;
    for (const ChartSeries& s : chart.series)
        for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
            if (usable(s.x[i], chart.x.log) && usable(s.y[i], chart.y.log)) {
                xs.push_back(s.x[i]);
                ys.push_back(s.y[i]);
                any_point = true;
            }
    const Scale sx = make_scale(xs, chart.x.log, plot_left, plot_right);
    const Scale sy = make_scale(ys, chart.y.log, plot_bottom, plot_top);

    std::string svg = fmt::format(
        "<svg class=\"chart\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" role=\"img\" "
        "aria-label=\"{2}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        px(width), px(height), html_escape(chart.title));
    svg += fmt::format("<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">{}</text>\n",
                       px((plot_left + plot_right) / 2), html_escape(chart.title));
    if (!chart.subtitle.empty())
        svg += fmt::format("<text x=\"{}\" y=\"33\" text-anchor=\"middle\">{}</text>\n",
                           px((plot_left + plot_right) / 2), html_escape(chart.subtitle));
    svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#fcfcfc\" stroke=\"#888\"/>\n",
                       px(plot_left), px(plot_top), px(plot_right - plot_left), px(plot_bottom - plot_top));
    // Grid lines and tick labels.
    for (const double tick : sx.ticks) {
        const double x = sx(tick);
        svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>"
                           "<text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
                           px(x), px(plot_top), px(plot_bottom), px(plot_bottom + 14), html_escape(format_number(tick)));
    }
    for (const double tick : sy.ticks) {
        const double y = sy(tick);
        svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#e4e4e4\"/>"
                           "<text x=\"{3}\" y=\"{4}\" text-anchor=\"end\">{5}</text>\n",
                           px(plot_left), px(y), px(plot_right), px(plot_left - 5), px(y + 4),
                           html_escape(format_number(tick)));
    }
    const auto axis_label = [](const ChartAxis& axis) { return axis.label + (axis.log ? " (log)" : ""); };
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", px((plot_left + plot_right) / 2),
                       px(chart.height - 10), html_escape(axis_label(chart.x)));
    svg += fmt::format("<text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                       px((plot_top + plot_bottom) / 2), html_escape(axis_label(chart.y)));
    if (!any_point)
        svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n",
                           px((plot_left + plot_right) / 2), px((plot_top + plot_bottom) / 2));

    for (const ChartSeries& s : chart.series) {
        const size_t n = std::min(s.x.size(), s.y.size());
        const auto ok = [&](size_t i) { return usable(s.x[i], chart.x.log) && usable(s.y[i], chart.y.log); };
        if (s.line_width > 0) {
            std::string path;
            bool pen_down = false;
            for (size_t i = 0; i < n; ++i) {
                if (!ok(i)) {
                    pen_down = false;
                    continue;
                }
                path += fmt::format("{}{} {} ", pen_down ? "L" : "M", px(sx(s.x[i])), px(sy(s.y[i])));
                pen_down = true;
            }
            if (!path.empty())
                svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" stroke-opacity=\"{}\" "
                                   "stroke-linejoin=\"round\"/>\n",
                                   path, s.colour, s.line_width, s.opacity);
        }
        for (size_t i = 0; i < n; ++i) {
            if (!ok(i)) continue;
            const double x = sx(s.x[i]), y = sy(s.y[i]);
            if (s.marker_radius > 0) {
                svg += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\" fill-opacity=\"{}\">", px(x), px(y),
                                   s.marker_radius, s.colour, s.opacity);
                if (i < s.tips.size()) svg += "<title>" + html_escape(s.tips[i]) + "</title>";
                svg += "</circle>\n";
            }
            if (i < s.tags.size() && !s.tags[i].empty())
                svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"{}\">{}</text>\n",
                                   px(x + s.marker_radius + 2), px(y - s.marker_radius - 1), s.colour,
                                   html_escape(s.tags[i]));
        }
    }

    double legend_y = top + 4;
    for (const ChartSeries& s : chart.series) {
        if (s.label.empty()) continue;
        const double x = chart.width + 4;
        if (s.line_width > 0)
            svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>", px(x),
                               px(legend_y), px(x + 20), px(legend_y), s.colour, std::max(1.5, s.line_width));
        if (s.marker_radius > 0)
            svg += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\"/>", px(x + 10), px(legend_y),
                               std::max(3.0, s.marker_radius), s.colour);
        std::string label = s.label;
        if (label.size() > 32) {
            size_t cut = 31;
            while (cut > 0 && (static_cast<unsigned char>(label[cut]) & 0xC0) == 0x80) --cut;  // not mid-character
            label = label.substr(0, cut) + "…";
        }
        svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", px(x + 26), px(legend_y + 4), html_escape(label));
        legend_y += legend_row;
    }
    svg += "</svg>\n";
    return svg;
}

}  // namespace linarch
