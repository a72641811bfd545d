// The report rendered by a real browser: Debian's headless Chromium loads the page from a file with
// the network out of reach, must log nothing to the console, and its screenshot must show the plots.
// The console check is tested too: the same page with a deliberate script error must fail it.
// Chromium takes seconds to start on a small machine, so the suite launches it twice in all.
#include <gd.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

#include "core/atomic_file.hpp"
#include "search/report.hpp"
#include "support/process.hpp"
#include "synthetic_study.hpp"

using namespace linarch;
namespace fs = std::filesystem;

namespace {
const char* const kChromium = "/usr/bin/chromium";
constexpr int kWidth = 1280, kHeight = 3000;

struct PageRun {
    int exit_code = -1;
    std::string dom;                            // the DOM after loading (--dump-dom)
    std::vector<std::string> console_messages;  // every console line Chromium logged
    std::string log;
};

// Chromium's --enable-logging=stderr writes each console message (console.log or error, uncaught
// exception alike, all at INFO level) as "[pid:tid:time:INFO:CONSOLE:line] "message", source: ...".
// The report runs no script, so any console line at all is a failure.
std::vector<std::string> console_lines(const std::string& log) {
    std::vector<std::string> lines;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) {
        const size_t bracket = line.find(']');
        if (bracket != std::string::npos && line.compare(0, 1, "[") == 0 &&
            line.substr(0, bracket).find(":CONSOLE") != std::string::npos)
            lines.push_back(line);
    }
    return lines;
}

// Loads `page` in headless Chromium (a fresh profile under `dir`), dumping its DOM and writing a
// screenshot to `png`. `timeout` bounds a hung browser.
PageRun render(const fs::path& page, const fs::path& png, const fs::path& dir) {
    const fs::path dom = dir / (png.stem().string() + ".dom"), log = dir / (png.stem().string() + ".log");
    const std::string command = fmt::format(
        "timeout 180 {} --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars "
        "--user-data-dir='{}' --enable-logging=stderr --v=0 --window-size={},{} --dump-dom --screenshot='{}' "
        "'file://{}' >'{}' 2>'{}'",
        kChromium, (dir / "profile").string(), kWidth, kHeight, png.string(), fs::absolute(page).string(),
        dom.string(), log.string());
    PageRun run;
    run.exit_code = testkit::run_command({"/bin/sh", "-c", command}).exit_code;
    run.dom = testkit::read_text(dom);
    run.log = testkit::read_text(log);
    run.console_messages = console_lines(run.log);
    return run;
}

std::string tail(const std::string& text, size_t chars = 3000) {
    return text.size() > chars ? text.substr(text.size() - chars) : text;
}

class ReportPage : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new testkit::TempDir;
        auto db = open_database("sqlite:///" + (*dir_ / "search.db").string());
        html_ = new std::string(build_study_report(*db, report_test::write_synthetic_study(*db)).html);
    }
    static void TearDownTestSuite() {
        delete html_;
        delete dir_;
    }
    void SetUp() override {
        if (::access(kChromium, X_OK) != 0)
            GTEST_SKIP() << kChromium << " is not installed (Debian package chromium; scripts/setup installs it)";
    }
    static testkit::TempDir* dir_;
    static std::string* html_;
};
testkit::TempDir* ReportPage::dir_ = nullptr;
std::string* ReportPage::html_ = nullptr;

// Pixels within a small distance of a colour (anti-aliased edges blend into the background).
int pixels_near(gdImagePtr image, int red, int green, int blue) {
    int count = 0;
    for (int y = 0; y < gdImageSY(image); ++y)
        for (int x = 0; x < gdImageSX(image); ++x) {
            const int c = gdImageGetTrueColorPixel(image, x, y);
            count += std::abs(gdTrueColorGetRed(c) - red) + std::abs(gdTrueColorGetGreen(c) - green) +
                         std::abs(gdTrueColorGetBlue(c) - blue) <
                     40;
        }
    return count;
}
}  // namespace

TEST_F(ReportPage, ConsoleCheckCatchesAScriptError) {
    std::string broken = *html_;
    broken.insert(broken.rfind("</body>"), "<script>console.log('loaded'); undefined_report_function();</script>\n");
    const fs::path page = *dir_ / "broken.html";
    write_file_atomic(page, broken);
    const PageRun run = render(page, *dir_ / "broken.png", dir_->path());
    ASSERT_EQ(run.exit_code, 0) << tail(run.log);
    ASSERT_EQ(run.console_messages.size(), 2u) << tail(run.log);
    EXPECT_NE(run.console_messages[1].find("Uncaught ReferenceError: undefined_report_function"), std::string::npos)
        << run.console_messages[1];
}

TEST_F(ReportPage, RendersThePlotsWithoutConsoleMessages) {
    const fs::path page = *dir_ / "report.html";
    write_file_atomic(page, *html_);
    const fs::path png = *dir_ / "report.png";
    const PageRun run = render(page, png, dir_->path());
    ASSERT_EQ(run.exit_code, 0) << tail(run.log);
    EXPECT_TRUE(run.console_messages.empty()) << fmt::format("{}", fmt::join(run.console_messages, "\n"));

    // The browser parsed every section and chart (the DOM it dumps is what it built, not our text).
    for (const char* id : {"leaderboard", "pareto", "lineage", "curves", "proxies"})
        EXPECT_NE(run.dom.find(fmt::format("<section id=\"{}\"", id)), std::string::npos) << id;
    size_t charts = 0;
    for (size_t at = run.dom.find("<svg class=\"chart\""); at != std::string::npos;
         at = run.dom.find("<svg class=\"chart\"", at + 1))
        ++charts;
    EXPECT_EQ(charts, 3u + 2u + 2u * 3u);  // Pareto, learning curves, two proxies against three results
    EXPECT_NE(run.dom.find("<svg class=\"lineage\""), std::string::npos);

    // Keep the screenshot (and the page) where the test ran, for a person to look at.
    const fs::path kept = fs::current_path() / "report_screenshot.png";
    fs::copy_file(png, kept, fs::copy_options::overwrite_existing);
    fs::copy_file(page, fs::current_path() / "report_page.html", fs::copy_options::overwrite_existing);
    std::printf("report screenshot: %s\n", kept.c_str());

    FILE* file = std::fopen(png.c_str(), "rb");
    ASSERT_NE(file, nullptr) << "no screenshot written\n" << tail(run.log);
    gdImagePtr image = gdImageCreateFromPng(file);
    std::fclose(file);
    ASSERT_NE(image, nullptr) << "the screenshot is not a PNG";
    EXPECT_EQ(gdImageSX(image), kWidth);
    EXPECT_EQ(gdImageSY(image), kHeight);
    // Only the plots use these colours (the rest of the page is black, grey and link blue; the page
    // without its SVGs has none of them): the Pareto fronts' red-orange, and the orange of the
    // lineage's best candidates and of the second-best learning curve, all within the first 3000 px.
    const int front = pixels_near(image, 0xd5, 0x5e, 0x00), best = pixels_near(image, 0xe6, 0x9f, 0x00);
    std::printf("Pareto-front pixels: %d, lineage and curve pixels: %d\n", front, best);
    EXPECT_GT(front, 500);
    EXPECT_GT(best, 1000);
    gdImageDestroy(image);
}
