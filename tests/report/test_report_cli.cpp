// `linarch report` end to end: help, the page and JSON it writes, and how it picks the study.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "search/database.hpp"
#include "support/process.hpp"
#include "synthetic_study.hpp"

using namespace linarch;
using namespace linarch::testkit;

namespace {
const std::string kCli = LINARCH_CLI;
}

TEST(ReportCli, HelpShowsTheOptionsAndAnExample) {
    const CommandResult result = run_command({kCli, "report", "--help"});
    EXPECT_EQ(result.exit_code, 0) << result.output;
    for (const char* text : {"--db", "--study", "--out", "--json", "Example:", "linarch report --db sqlite:///"})
        EXPECT_NE(result.output.find(text), std::string::npos) << text << "\n" << result.output;
}

TEST(ReportCli, WritesTheReportAndPicksTheStudy) {
    TempDir dir;
    const std::string url = "sqlite:///" + (dir / "search.db").string();
    const auto out = dir / "report.html", json = dir / "report.json";
    {
        auto db = open_database(url);
        EXPECT_NE(run_command({kCli, "report", "--db", url, "--out", out.string()}).output.find("holds no study"),
                  std::string::npos);
        report_test::write_synthetic_study(*db, "first");
    }
    CommandResult result = run_command({kCli, "report", "--db", url, "--out", out.string(), "--json", json.string()});
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("study \"first\" (6 done, 1 failed)"), std::string::npos) << result.output;
    const std::string html = read_text(out);
    EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
    EXPECT_NE(html.find("Search study “first”"), std::string::npos);
    const nlohmann::json summary = nlohmann::json::parse(read_text(json));
    EXPECT_EQ(summary["study"], "first");
    EXPECT_EQ(summary["leaderboard"][0]["trial"], 3);
    EXPECT_EQ(summary["counts"]["failed"], 1);

    // "--json -": the JSON on stdout (the one-line note goes to stderr).
    result = run_command({kCli, "report", "--db", url, "--out", out.string(), "--json", "-"});
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("\"leaderboard\": ["), std::string::npos) << result.output;

    // A second study: no --study is an error naming both; --study picks one.
    {
        auto db = open_database(url);
        report_test::write_synthetic_study(*db, "second");
    }
    result = run_command({kCli, "report", "--db", url, "--out", (dir / "other.html").string()});
    EXPECT_NE(result.exit_code, 0);
    EXPECT_NE(result.output.find("2 studies (\"first\", \"second\"); pick one with --study"), std::string::npos)
        << result.output;
    EXPECT_FALSE(std::filesystem::exists(dir / "other.html"));
    result = run_command({kCli, "report", "--db", url, "--study", "second", "--out", (dir / "other.html").string()});
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(read_text(dir / "other.html").find("Search study “second”"), std::string::npos);
    result = run_command({kCli, "report", "--db", url, "--study", "third", "--out", (dir / "other.html").string()});
    EXPECT_NE(result.exit_code, 0);
    EXPECT_NE(result.output.find("no study named \"third\""), std::string::npos) << result.output;
}
