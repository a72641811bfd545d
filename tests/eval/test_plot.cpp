// PNG line plots: the file is a PNG of the requested size whose pixels show the series' colours where
// the data lie; tick values are round; bad series are errors naming the plot.
#include <gtest/gtest.h>

#include <gd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "eval/plot.hpp"
#include "support/process.hpp"

using namespace linarch;
using testkit::TempDir;

namespace {
// Pixels of the decoded image whose colour is exactly (r, g, b).
int pixels_of_colour(gdImagePtr image, int r, int g, int b) {
    int count = 0;
    for (int y = 0; y < gdImageSY(image); ++y)
        for (int x = 0; x < gdImageSX(image); ++x) {
            const int c = gdImageGetTrueColorPixel(image, x, y);
            count += gdTrueColorGetRed(c) == r && gdTrueColorGetGreen(c) == g && gdTrueColorGetBlue(c) == b;
        }
    return count;
}
}  // namespace

TEST(Plot, WritesAPngWithEachSeriesDrawn) {
    TempDir dir;
    std::vector<PlotSeries> series(2);
    series[0].label = "1x";
    series[1].label = "4x";
    for (int i = 0; i < 8; ++i) {
        const double x = std::exp2(i + 4);
        series[0].x.push_back(x);
        series[0].y.push_back(2.0 - 0.1 * i);
        series[1].x.push_back(x);
        series[1].y.push_back(i < 6 ? 2.1 - 0.05 * i : NAN);  // gaps are skipped, not drawn
    }
    PlotOptions options;
    options.title = "loss by position";
    options.x_label = "position";
    options.y_label = "nats";
    options.log2_x = true;
    options.width = 640;
    options.height = 400;
    const auto path = dir.path() / "plot.png";
    write_line_plot_png(path, series, options);
    if (const char* keep = std::getenv("LINARCH_KEEP_PLOT")) std::filesystem::copy_file(path, keep);
    const std::string bytes = read_file(path, "plot");
    ASSERT_GT(bytes.size(), 8u);
    EXPECT_EQ(bytes.substr(1, 3), "PNG");
    gdImagePtr image = gdImageCreateFromPngPtr(int(bytes.size()), const_cast<char*>(bytes.data()));
    ASSERT_NE(image, nullptr);
    EXPECT_EQ(gdImageSX(image), 640);
    EXPECT_EQ(gdImageSY(image), 400);
    // The palette's first two colours appear (lines, dots, legend swatches).
    EXPECT_GT(pixels_of_colour(image, 0, 114, 178), 200);
    EXPECT_GT(pixels_of_colour(image, 230, 159, 0), 200);
    gdImageDestroy(image);
}

TEST(Plot, TicksAreRoundAndCoverTheRange) {
    const std::vector<double> unit = nice_ticks(0, 1, 6);
    ASSERT_EQ(unit.size(), 6u);
    for (size_t i = 0; i < unit.size(); ++i) EXPECT_NEAR(unit[i], 0.2 * double(i), 1e-12);
    for (const auto& [low, high] : {std::pair{1.37, 2.91}, {-3.0, 7.0}, {1e-4, 3e-4}, {100.0, 100000.0}}) {
        const auto ticks = nice_ticks(low, high);
        ASSERT_GE(ticks.size(), 2u) << low << " " << high;
        EXPECT_LE(ticks.size(), 8u);
        const double step = ticks[1] - ticks[0];
        const double mantissa = step / std::pow(10.0, std::floor(std::log10(step)));
        EXPECT_TRUE(std::abs(mantissa - 1) < 1e-9 || std::abs(mantissa - 2) < 1e-9 || std::abs(mantissa - 5) < 1e-9)
            << step;
        EXPECT_GE(ticks.front(), low - step);
        EXPECT_LE(ticks.back(), high + step);
    }
}

TEST(Plot, BadSeriesAreErrors) {
    TempDir dir;
    std::vector<PlotSeries> mismatched{{"a", {1, 2}, {1}}};
    EXPECT_THROW(write_line_plot_png(dir.path() / "x.png", mismatched, {}), Error);
    std::vector<PlotSeries> empty{{"a", {}, {}}};
    try {
        write_line_plot_png(dir.path() / "y.png", empty, {});
        ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no finite points"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(dir.path() / "y.png"));
}
