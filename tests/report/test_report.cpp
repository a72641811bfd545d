// The study report's content: leaderboard order, Pareto fronts, lineage, rank correlations, escaping,
// self-containment, and the degenerate studies (empty, one trial, all failed).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/error.hpp"
#include "search/report.hpp"
#include "search/report_svg.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"
#include "synthetic_study.hpp"

using namespace linarch;
using namespace linarch::report_test;
using testkit::error_of;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string url_of(const testkit::TempDir& dir) { return "sqlite:///" + (dir / "search.db").string(); }

std::vector<int64_t> numbers(const nlohmann::json& array, const char* key = nullptr) {
    std::vector<int64_t> out;
    for (const auto& item : array) out.push_back(key ? item.at(key).get<int64_t>() : item.get<int64_t>());
    return out;
}

// The text of the first element that `marker` (an attribute, say) is in, up to its closing tag.
std::string element_after(const std::string& html, const std::string& marker, const std::string& close) {
    const size_t begin = html.find(marker);
    if (begin == std::string::npos) return "";
    return html.substr(begin, html.find(close, begin) - begin);
}
}  // namespace

TEST(ParetoFront, HandCases) {
    // Both minimised: (1,5) (2,3) (4,1) trade off; (3,4) loses to (2,3); (5,5) to all.
    const std::vector<double> x = {1, 2, 3, 4, 5}, y = {5, 3, 4, 1, 5};
    EXPECT_EQ(pareto_front(x, true, y, true), (std::vector<bool>{true, true, false, true, false}));
    // y maximised instead: (1,5) beats everything with more x and no more y; (5,5) is dominated by (1,5).
    EXPECT_EQ(pareto_front(x, true, y, false), (std::vector<bool>{true, false, false, false, false}));
    // Both maximised: (5,5) alone.
    EXPECT_EQ(pareto_front(x, false, y, false), (std::vector<bool>{false, false, false, false, true}));
    // x maximised, y minimised: (4,1) is best on y and (5,5) on x.
    EXPECT_EQ(pareto_front(x, false, y, true), (std::vector<bool>{false, false, false, true, true}));
    // Equal points are all on the front; one better in only one objective dominates its equal-y twin.
    const std::vector<double> tx = {1, 1, 2}, ty = {2, 2, 2};
    EXPECT_EQ(pareto_front(tx, true, ty, true), (std::vector<bool>{true, true, false}));
    // NaN points are never on the front and never dominate.
    const std::vector<double> nx = {kNaN, 2, 3}, ny = {0, kNaN, 1};
    EXPECT_EQ(pareto_front(nx, true, ny, true), (std::vector<bool>{false, false, true}));
    EXPECT_TRUE(pareto_front(std::vector<double>{}, true, std::vector<double>{}, true).empty());
    EXPECT_THROW(pareto_front(x, true, tx, true), Error);
}

TEST(ReportSvg, FormatsEscapesAndDrawsAxes) {
    EXPECT_EQ(html_escape("a<b>&\"c\"'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;");
    EXPECT_EQ(format_number(kNaN), "—");
    EXPECT_EQ(format_number(0), "0");
    EXPECT_EQ(format_number(1.23456), "1.235");
    EXPECT_EQ(format_number(9999), "9999");
    EXPECT_EQ(format_number(12500), "12.5k");
    EXPECT_EQ(format_number(1.2e6), "1.2M");
    EXPECT_EQ(format_number(999999), "1M");
    EXPECT_EQ(format_number(-3.4e9), "-3.4G");
    EXPECT_EQ(format_number(2e-5), "2.000e-05");
    EXPECT_TRUE(spans_decades(std::vector<double>{1e4, 5e5, kNaN, 2e6}));
    EXPECT_FALSE(spans_decades(std::vector<double>{1, 15}));
    EXPECT_FALSE(spans_decades(std::vector<double>{-1, 1000}));

    Chart chart;
    chart.title = "loss <by> size";
    chart.x = {"parameters", true};
    chart.y = {"val_bpb", false};
    ChartSeries points;
    points.label = "trials";
    points.x = {1e4, 1e5, 2e6};
    points.y = {2.0, 1.5, 1.0};
    points.marker_radius = 3;
    chart.series.push_back(points);
    const std::string svg = chart_svg(chart);
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find("loss &lt;by&gt; size"), std::string::npos);
    EXPECT_NE(svg.find("parameters (log)"), std::string::npos);
    for (const char* tick : {">10k<", ">100k<", ">1M<", ">10M<"}) EXPECT_NE(svg.find(tick), std::string::npos) << tick;
    size_t circles = 0;
    for (size_t at = svg.find("<circle"); at != std::string::npos; at = svg.find("<circle", at + 1)) ++circles;
    EXPECT_EQ(circles, 4u);  // three points and the legend's marker

    Chart empty;
    empty.title = "nothing";
    EXPECT_NE(chart_svg(empty).find("no data"), std::string::npos);
}

TEST(Report, ShowsTheSyntheticStudy) {
    testkit::TempDir dir;
    auto db = open_database(url_of(dir));
    const int64_t study = write_synthetic_study(*db);
    EXPECT_EQ(find_study(*db, ""), study);
    const StudyReport report = build_study_report(*db, study);
    const std::string& html = report.html;
    const nlohmann::json& summary = report.summary;

    // Header: escaped name, URL, counts, search space.
    EXPECT_NE(html.find("mixers &lt;b&gt;&amp;&lt;/b&gt;"), std::string::npos);
    EXPECT_EQ(html.find("<b>&</b>"), std::string::npos);
    EXPECT_NE(html.find(html_escape(url_of(dir))), std::string::npos);
    EXPECT_NE(html.find("6 done, 1 failed, 1 running, 1 queued"), std::string::npos);
    EXPECT_NE(html.find("model.d_model = [64, 128]"), std::string::npos);
    EXPECT_EQ(summary["counts"]["done"], 6);
    EXPECT_EQ(summary["counts"]["queued"], 1);

    // Leaderboard: fitness first, val_bpb breaking the 0.6 tie, the trial without fitness last.
    const std::vector<int64_t> order = {3, 1, 6, 4, 0, 5};
    EXPECT_EQ(numbers(summary["leaderboard"], "trial"), order);
    size_t previous = 0;
    for (const int64_t number : order) {
        const size_t at = html.find(fmt::format("<tr id=\"trial-{}\"", number));
        ASSERT_NE(at, std::string::npos) << number;
        EXPECT_GT(at, previous) << "trial " << number << " out of order";
        previous = at;
    }
    EXPECT_EQ(summary["leaderboard"][0]["rank"], 1);
    EXPECT_EQ(summary["leaderboard"][0]["fitness"], 0.8);
    EXPECT_EQ(numbers(summary["leaderboard"][3]["parents"]), (std::vector<int64_t>{3, 0}));
    const std::string row_4 = element_after(html, "<tr id=\"trial-4\"", "</tr>");
    EXPECT_NE(row_4.find("#3, #0"), std::string::npos) << row_4;
    EXPECT_NE(row_4.find("model.d_model = 32"), std::string::npos) << row_4;
    EXPECT_NE(row_4.find("model.n_layers = 3"), std::string::npos) << row_4;
    EXPECT_NE(row_4.find("model.init_std = 0.003<"), std::string::npos) << row_4;  // as written, not 0.0030000000000000001
    EXPECT_EQ(row_4.find("<code>model.mixer"), std::string::npos) << "unchanged keys are not listed";
    EXPECT_NE(row_4.find("50k"), std::string::npos) << row_4;  // parameters
    EXPECT_NE(element_after(html, "<tr id=\"trial-0\"", "</tr>").find("baseline"), std::string::npos);

    // The failed trial, its error escaped.
    ASSERT_EQ(summary["failed"].size(), 1u);
    EXPECT_EQ(summary["failed"][0]["trial"], 2);
    EXPECT_EQ(summary["failed"][0]["error"], kError);
    EXPECT_NE(html.find(html_escape(kError)), std::string::npos);
    EXPECT_EQ(html.find("<script>alert"), std::string::npos);

    // Pareto fronts, in order of the x axis.
    EXPECT_EQ(numbers(summary["pareto"]["val_bpb vs parameters"]), (std::vector<int64_t>{4, 6, 1, 3}));
    EXPECT_EQ(numbers(summary["pareto"]["val_bpb vs train_flops_per_token"]), (std::vector<int64_t>{4, 6, 1, 3}));
    // MQAR accuracy (higher better) against parameters: #4 is smallest, #0 beats #6, #1 the most accurate.
    EXPECT_EQ(numbers(summary["pareto"]["mqar_accuracy vs parameters"]), (std::vector<int64_t>{4, 0, 1}));
    EXPECT_NE(html.find("val_bpb vs parameters (6 trials, 4 on the front)"), std::string::npos);
    EXPECT_NE(html.find("parameters ← better (log)"), std::string::npos);

    // Lineage of the best five: #3 from #1, #4 crossed from #3 and #0, #6 from #1; not #5 or #2.
    std::map<int64_t, std::vector<int64_t>> lineage;
    for (const auto& node : summary["lineage"]) lineage[node["trial"]] = numbers(node["parents"]);
    EXPECT_EQ(lineage, (std::map<int64_t, std::vector<int64_t>>{{0, {}}, {1, {}}, {3, {1}}, {4, {3, 0}}, {6, {1}}}));
    EXPECT_NE(html.find("#3 ★1"), std::string::npos);

    // Learning curves: one chart per numeric key, not for the text one.
    EXPECT_NE(html.find("aria-label=\"train_loss\""), std::string::npos);
    EXPECT_NE(html.find("aria-label=\"val_bpb\""), std::string::npos);
    EXPECT_EQ(html.find("aria-label=\"note\""), std::string::npos);
    EXPECT_NE(html.find("#3 (rank 1)"), std::string::npos);

    // Proxies: synflow ranks exactly like val_bpb (over the 5 trials that have it), and with one tie
    // in fitness, τ-b = 9/√90; grad_norm has 2 discordant pairs of 15.
    ASSERT_EQ(summary["proxies"].size(), 2u);
    const nlohmann::json& grad_norm = summary["proxies"][0];
    const nlohmann::json& synflow = summary["proxies"][1];
    EXPECT_EQ(synflow["proxy"], "synflow");
    EXPECT_EQ(synflow["n_val_bpb"], 5);
    EXPECT_EQ(grad_norm["n_val_bpb"], 6);
    EXPECT_EQ(grad_norm["n_fitness"], 5);  // #5 has no fitness
    EXPECT_NEAR(synflow["kendall_tau_val_bpb"].get<double>(), -1, 1e-12);
    EXPECT_NEAR(synflow["spearman_rho_val_bpb"].get<double>(), -1, 1e-12);
    EXPECT_NEAR(synflow["kendall_tau_fitness"].get<double>(), 9 / std::sqrt(90.0), 1e-12);
    EXPECT_NEAR(grad_norm["kendall_tau_val_bpb"].get<double>(), 11.0 / 15.0, 1e-12);
    EXPECT_NEAR(grad_norm["spearman_rho_val_bpb"].get<double>(), 1 - 24.0 / 210.0, 1e-12);
    // Columns: val_bpb, mqar_accuracy, fitness (τ, ρ, n each).
    EXPECT_NE(html.find("<tr><td>synflow</td><td>-1.000</td><td>-1.000</td><td>5</td><td>"), std::string::npos);
    EXPECT_NE(html.find("<td>+0.949</td>"), std::string::npos);
    EXPECT_TRUE(synflow.contains("kendall_tau_mqar_accuracy"));
    EXPECT_NE(html.find("<tr><td>grad_norm</td><td>+0.733</td><td>+0.886</td><td>6</td>"), std::string::npos);
    const std::string chart = element_after(html, "aria-label=\"synflow vs val_bpb\"", "</svg>");
    EXPECT_NE(chart.find("τ = -1.000, ρ = -1.000, n = 5"), std::string::npos) << chart;

    // Self-contained: nothing to fetch, no script.
    for (const char* outside : {"src=", "<link", "<script", "url(", "@import", "http://", "https://", "<img"})
        EXPECT_EQ(html.find(outside), std::string::npos) << outside;
    EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
    EXPECT_NE(html.find("</html>"), std::string::npos);
}

TEST(Report, ProxyCorrelationsLeaveOutTrialsStoppedEarly) {
    testkit::TempDir dir;
    auto db = open_database(url_of(dir));
    const int64_t study = db->open_study("halving", "");
    // proxy = 1, 2, 3, 4; val_bpb falls with it except for the pruned trial (measured at a low rung).
    const std::vector<std::map<std::string, double>> metrics = {
        {{"val_bpb", 2.0}}, {{"val_bpb", 1.9}}, {{"val_bpb", 1.8}}, {{"val_bpb", 3.0}, {"pruned_at_step", 10}}};
    for (size_t i = 0; i < metrics.size(); ++i) {
        const int64_t id = db->enqueue(study, {"[model]\n", fmt::format("hash-{}", i), {}}).trial_id;
        db->record_proxies(id, {{"snip", double(i + 1)}});
        const std::optional<Claim> claim = db->claim_next(study, "w", 60);
        ASSERT_TRUE(claim);
        db->complete(claim->lease, metrics[i]);
    }
    const nlohmann::json row = build_study_report(*db, study).summary["proxies"][0];
    EXPECT_EQ(row["n_val_bpb"], 3);
    EXPECT_NEAR(row["kendall_tau_val_bpb"].get<double>(), -1, 1e-12);
}

TEST(Report, HandlesEmptyOneTrialAndAllFailedStudies) {
    testkit::TempDir dir;
    auto db = open_database(url_of(dir));
    EXPECT_NE(error_of([&] { find_study(*db, ""); }).find("holds no study"), std::string::npos);

    const int64_t empty = db->open_study("empty", "");
    StudyReport report = build_study_report(*db, empty);
    EXPECT_NE(report.html.find("0 done, 0 failed, 0 running, 0 queued"), std::string::npos);
    EXPECT_NE(report.html.find("No finished trials yet"), std::string::npos);
    EXPECT_NE(report.html.find("no data"), std::string::npos);
    EXPECT_TRUE(report.summary["leaderboard"].empty());

    const int64_t single = db->open_study("single", "");
    db->enqueue(single, {"[model]\nd_model = 64\n", "single-0", {}});
    std::optional<Claim> claim = db->claim_next(single, "w", 60);
    ASSERT_TRUE(claim);
    db->report_intermediate(claim->lease, 5, {{"train_loss", 2.5}});
    db->record_proxies(claim->trial.id, {{"synflow", 3}});
    db->complete(claim->lease, {{"val_bpb", 2.0}, {"fitness", 0.5}, {"parameters", 1000}});
    report = build_study_report(*db, single);
    EXPECT_EQ(numbers(report.summary["leaderboard"], "trial"), std::vector<int64_t>{0});
    EXPECT_EQ(numbers(report.summary["pareto"]["val_bpb vs parameters"]), std::vector<int64_t>{0});
    EXPECT_TRUE(report.summary["proxies"][0]["kendall_tau_val_bpb"].is_null());  // one pair: NaN → null
    EXPECT_NE(report.html.find("τ = —"), std::string::npos);

    const int64_t failed = db->open_study("failed", "");
    for (int i = 0; i < 2; ++i) {
        db->enqueue(failed, {"not toml at all [", fmt::format("failed-{}", i), {}});
        std::optional<Claim> c = db->claim_next(failed, "w", 60);
        ASSERT_TRUE(c);
        db->fail_trial(c->lease, fmt::format("error {}", i));
    }
    report = build_study_report(*db, failed);
    EXPECT_EQ(report.summary["failed"].size(), 2u);
    EXPECT_NE(report.html.find("error 1"), std::string::npos);
    EXPECT_NE(report.html.find("No finished trials yet"), std::string::npos);

    // Several studies: the name picks one, none is an error naming them all.
    EXPECT_EQ(find_study(*db, "failed"), failed);
    const std::string several = error_of([&] { find_study(*db, ""); });
    EXPECT_NE(several.find("\"empty\", \"single\", \"failed\""), std::string::npos) << several;
    EXPECT_NE(several.find("--study"), std::string::npos) << several;
    EXPECT_NE(error_of([&] { find_study(*db, "nope"); }).find("no study named \"nope\""), std::string::npos);
}
