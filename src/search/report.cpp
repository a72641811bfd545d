#include "search/report.hpp"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "core/error.hpp"
#include "search/rank_correlation.hpp"
#include "search/report_lineage.hpp"
#include "search/report_svg.hpp"

namespace linarch {

std::vector<bool> pareto_front(std::span<const double> x, bool minimise_x, std::span<const double> y,
                               bool minimise_y) {
    LINARCH_CHECK(x.size() == y.size(), "pareto_front: {} x values but {} y values", x.size(), y.size());
    // Turn both objectives into "smaller is better"; O(n²) is plenty for a study's trials.
    const auto gain = [](double value, bool minimise) { return minimise ? value : -value; };
    std::vector<bool> front(x.size(), false);
    for (size_t i = 0; i < x.size(); ++i) {
        if (std::isnan(x[i]) || std::isnan(y[i])) continue;
        const double xi = gain(x[i], minimise_x), yi = gain(y[i], minimise_y);
        bool dominated = false;
        for (size_t j = 0; j < x.size() && !dominated; ++j) {
            if (j == i || std::isnan(x[j]) || std::isnan(y[j])) continue;
            const double xj = gain(x[j], minimise_x), yj = gain(y[j], minimise_y);
            dominated = xj <= xi && yj <= yi && (xj < xi || yj < yi);
        }
        front[i] = !dominated;
    }
    return front;
}

int64_t find_study(ExperimentDatabase& db, const std::string& name) {
    const std::vector<StudyInfo> studies = db.studies();
    if (name.empty() && studies.size() == 1) return studies.front().id;
    std::vector<std::string> names;
    for (const StudyInfo& study : studies) {
        if (!name.empty() && study.name == name) return study.id;
        names.push_back("\"" + study.name + "\"");
    }
    LINARCH_CHECK(!studies.empty(), "{}: the database holds no study yet (linarch search creates one)", db.url());
    LINARCH_CHECK(!name.empty(), "{}: the database holds {} studies ({}); pick one with --study", db.url(),
                  studies.size(), fmt::join(names, ", "));
    fail("{}: no study named \"{}\"; the database holds {}", db.url(), name, fmt::join(names, ", "));
}

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// The best candidates traced in the lineage and highlighted in the learning curves.
constexpr size_t kTop = 5;
// Final metrics with their own leaderboard column; any other metric gets a column after them.
const std::set<std::string> kKnownMetrics = {"fitness",    "val_bpb",          "mqar_accuracy", "parameters",
                                             "train_flops_per_token", "train_tokens_per_second"};

double metric(const Trial& trial, const std::string& name) {
    const auto it = trial.final_metrics.find(name);
    return it == trial.final_metrics.end() ? kNaN : it->second;
}

double proxy(const Trial& trial, const std::string& name) {
    const auto it = trial.proxies.find(name);
    return it == trial.proxies.end() ? kNaN : it->second;
}

std::string fixed(double value, int digits) {
    return std::isnan(value) ? "—" : fmt::format("{:.{}f}", value, digits);
}

// NaN (a missing value, a correlation of too few trials) as JSON null, as it is written out.
nlohmann::json json_number(double value) { return std::isnan(value) ? nlohmann::json(nullptr) : nlohmann::json(value); }

std::string signed_fixed(double value) { return std::isnan(value) ? "—" : fmt::format("{:+.3f}", value); }

std::string utc_time(double unix_seconds) {
    const std::time_t seconds = std::time_t(unix_seconds);
    std::tm parts{};
    gmtime_r(&seconds, &parts);
    char text[64];
    std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &parts);
    return text;
}

std::string duration_text(double seconds) {
    if (std::isnan(seconds) || seconds < 0) return "—";
    if (seconds < 120) return fmt::format("{:.0f} s", seconds);
    if (seconds < 7200) return fmt::format("{:.1f} min", seconds / 60);
    return fmt::format("{:.1f} h", seconds / 3600);
}

// A spec's keys as dotted names with their TOML values; nothing when the text is not TOML.
std::optional<std::map<std::string, std::string>> flatten_spec(const std::string& text) {
    toml::table root;
    try {
        root = toml::parse(text);
    } catch (const toml::parse_error&) {
        return std::nullopt;
    }
    std::map<std::string, std::string> flat;
    const auto walk = [&flat](const auto& self, const toml::table& table, const std::string& prefix) -> void {
        for (auto&& [key, node] : table) {
            const std::string name = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
            if (const toml::table* sub = node.as_table()) {
                self(self, *sub, name);
                continue;
            }
            if (const auto* number = node.as_floating_point()) {
                flat[name] = fmt::format("{}", number->get());  // shortest round trip: 0.003, not 0.0030000000000000001
                continue;
            }
            std::ostringstream value;
            node.visit([&value](auto&& v) { value << v; });
            flat[name] = value.str();
        }
    };
    walk(walk, root, "");
    return flat;
}

// Everything the sections read, gathered once. Not copyable: `ranked`, `failed` and `by_id` point
// into `trials` (a move keeps them valid).
struct Study {
    Study() = default;
    Study(Study&&) = default;
    Study(const Study&) = delete;
    Study& operator=(const Study&) = delete;

    std::string url, name, config;
    double created_at = 0;
    StudyCounts counts;
    std::vector<Trial> trials;          // enqueue order
    std::vector<const Trial*> ranked;   // done, best first
    std::vector<const Trial*> failed;
    std::map<int64_t, const Trial*> by_id;
    std::map<int64_t, std::vector<IntermediateValue>> curves;  // trial id → values by step
    const Trial* baseline = nullptr;    // trial 0: the search space's base spec

    bool any_metric(const std::string& name) const {
        return std::any_of(ranked.begin(), ranked.end(), [&](const Trial* t) { return !std::isnan(metric(*t, name)); });
    }
    std::string parents_text(const Trial& trial) const {
        std::vector<std::string> parts;
        for (const int64_t id : trial.parent_ids) {
            const auto it = by_id.find(id);
            parts.push_back(it == by_id.end() ? fmt::format("id {}", id) : fmt::format("#{}", it->second->number));
        }
        return parts.empty() ? "—" : fmt::format("{}", fmt::join(parts, ", "));
    }
    std::vector<int64_t> parent_numbers(const Trial& trial) const {
        std::vector<int64_t> numbers;
        for (const int64_t id : trial.parent_ids)
            if (const auto it = by_id.find(id); it != by_id.end()) numbers.push_back(it->second->number);
        return numbers;
    }
};

// Better first: higher fitness, then lower val_bpb, then the older trial; NaN after any number.
bool ranks_before(const Trial* a, const Trial* b) {
    const auto key = [](double value, bool higher_is_better) {
        return std::isnan(value) ? INFINITY : higher_is_better ? -value : value;
    };
    const double fa = key(metric(*a, "fitness"), true), fb = key(metric(*b, "fitness"), true);
    if (fa != fb) return fa < fb;
    const double va = key(metric(*a, "val_bpb"), false), vb = key(metric(*b, "val_bpb"), false);
    if (va != vb) return va < vb;
    return a->number < b->number;
}

Study read_study(ExperimentDatabase& db, int64_t study_id) {
    Study study;
    study.url = db.url();
    for (const StudyInfo& info : db.studies())
        if (info.id == study_id) {
            study.name = info.name;
            study.created_at = info.created_at;
        }
    study.config = db.study_config(study_id);
    study.counts = db.counts(study_id);
    study.trials = db.trials(study_id);
    for (const Trial& t : study.trials) {
        study.by_id[t.id] = &t;
        if (t.number == 0) study.baseline = &t;
        if (t.status == TrialStatus::done) study.ranked.push_back(&t);
        if (t.status == TrialStatus::failed) study.failed.push_back(&t);
        if (std::vector<IntermediateValue> values = db.intermediate_values(t.id); !values.empty())
            study.curves[t.id] = std::move(values);
    }
    std::stable_sort(study.ranked.begin(), study.ranked.end(), ranks_before);
    return study;
}

std::string header_section(const Study& study) {
    double first = study.created_at, last = study.created_at;
    for (const Trial& t : study.trials) {
        first = std::min(first, t.created_at);
        for (const auto& time : {t.started_at, t.finished_at})
            if (time) last = std::max(last, *time);
    }
    std::string html = fmt::format("<header><h1>Search study “{}”</h1>\n<table class=\"facts\">\n",
                                   html_escape(study.name));
    html += fmt::format("<tr><th>database</th><td><code>{}</code></td></tr>\n", html_escape(study.url));
    const StudyCounts& c = study.counts;
    html += fmt::format("<tr><th>trials</th><td id=\"counts\">{} done, {} failed, {} running, {} queued</td></tr>\n",
                        c.done, c.failed, c.running, c.queued);
    html += fmt::format("<tr><th>time span</th><td>{} → {} ({})</td></tr>\n", utc_time(first), utc_time(last),
                        duration_text(last - first));
    if (!study.ranked.empty()) {
        const Trial& best = *study.ranked.front();
        html += fmt::format("<tr><th>best</th><td>trial #{}: fitness {}, val_bpb {}</td></tr>\n", best.number,
                            fixed(metric(best, "fitness"), 4), fixed(metric(best, "val_bpb"), 4));
    }
    html += "</table>\n";
    html += fmt::format("<details><summary>search space</summary><pre>{}</pre></details>\n</header>\n",
                        html_escape(study.config.empty() ? "(none recorded)" : study.config));
    return html;
}

std::string leaderboard_section(const Study& study, nlohmann::json& summary) {
    std::string html = "<section id=\"leaderboard\"><h2>Leaderboard</h2>\n";
    std::set<std::string> extra;
    for (const Trial* t : study.ranked)
        for (const auto& [name, value] : t->final_metrics)
            if (!kKnownMetrics.count(name)) extra.insert(name);
    const bool throughput = study.any_metric("train_tokens_per_second");
    std::optional<std::map<std::string, std::string>> base_spec;
    if (study.baseline) base_spec = flatten_spec(study.baseline->spec_toml);

    summary["leaderboard"] = nlohmann::json::array();
    if (study.ranked.empty()) {
        html += "<p class=\"empty\">No finished trials yet.</p>\n";
    } else {
        html += "<p>Done trials, best first: fitness is ASI-Arch's score against the baseline (trial #0, 0.5; "
                "higher is better), ties broken by val_bpb (lower is better). Changes are the spec keys that "
                "differ from the baseline's.</p>\n";
        html += "<table class=\"board\"><thead><tr><th>rank</th><th>trial</th><th>fitness</th><th>val_bpb</th>"
                "<th>mqar_accuracy</th><th>parameters</th><th>FLOPs/token</th>";
        if (throughput) html += "<th>tokens/s</th>";
        for (const std::string& name : extra) html += "<th>" + html_escape(name) + "</th>";
        html += "<th>time</th><th>parents</th><th>changes vs baseline</th></tr></thead>\n<tbody>\n";
        for (size_t rank = 0; rank < study.ranked.size(); ++rank) {
            const Trial& t = *study.ranked[rank];
            html += fmt::format("<tr id=\"trial-{}\"{}><td>{}</td><td>#{}</td><td>{}</td><td>{}</td><td>{}</td>"
                                "<td>{}</td><td>{}</td>",
                                t.number, &t == study.baseline ? " class=\"baseline\"" : "", rank + 1, t.number,
                                fixed(metric(t, "fitness"), 4), fixed(metric(t, "val_bpb"), 4),
                                fixed(metric(t, "mqar_accuracy"), 3), format_number(metric(t, "parameters")),
                                format_number(metric(t, "train_flops_per_token")));
            if (throughput) html += "<td>" + format_number(metric(t, "train_tokens_per_second")) + "</td>";
            for (const std::string& name : extra) html += "<td>" + format_number(metric(t, name)) + "</td>";
            const double seconds = t.started_at && t.finished_at ? *t.finished_at - *t.started_at : kNaN;
            html += fmt::format("<td>{}</td><td>{}</td><td>", duration_text(seconds), study.parents_text(t));
            const auto spec = flatten_spec(t.spec_toml);
            if (&t == study.baseline) {
                html += "baseline";
            } else if (base_spec && spec) {
                std::vector<std::string> changes;
                for (const auto& [key, value] : *spec)
                    if (const auto it = base_spec->find(key); it == base_spec->end() || it->second != value)
                        changes.push_back(key + " = " + value);
                for (const auto& [key, value] : *base_spec)
                    if (!spec->count(key)) changes.push_back(key + " unset");
                for (const std::string& change : changes) html += "<code>" + html_escape(change) + "</code><br>";
                if (changes.empty()) html += "none";
            }
            html += fmt::format("<details><summary>spec</summary><pre>{}</pre></details></td></tr>\n",
                                html_escape(t.spec_toml));
            nlohmann::json row = {{"rank", rank + 1}, {"trial", t.number}, {"parents", study.parent_numbers(t)}};
            for (const auto& [name, value] : t.final_metrics) row[name] = json_number(value);
            summary["leaderboard"].push_back(row);
        }
        html += "</tbody></table>\n";
    }

    summary["failed"] = nlohmann::json::array();
    if (!study.failed.empty()) {
        html += "<h3>Failed trials</h3>\n<table class=\"failed\"><thead><tr><th>trial</th><th>attempts</th>"
                "<th>worker</th><th>error</th></tr></thead>\n<tbody>\n";
        for (const Trial* t : study.failed) {
            html += fmt::format("<tr id=\"trial-{}\"><td>#{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>\n",
                                t->number, t->number, t->attempts, html_escape(t->worker), html_escape(t->error));
            summary["failed"].push_back({{"trial", t->number}, {"error", t->error}});
        }
        html += "</tbody></table>\n";
    }
    return html + "</section>\n";
}

ChartSeries styled(std::string label, std::string colour, double line_width, double marker_radius,
                   double opacity = 1) {
    ChartSeries series;
    series.label = std::move(label);
    series.colour = std::move(colour);
    series.line_width = line_width;
    series.marker_radius = marker_radius;
    series.opacity = opacity;
    return series;
}

struct Objective {
    std::string metric, label;
    bool minimise = true;
};

// One Pareto chart of the done trials: all of them grey, the baseline blue, the front in orange.
std::string pareto_chart(const Study& study, const Objective& x, const Objective& y, nlohmann::json& fronts) {
    std::vector<const Trial*> points;
    std::vector<double> xs, ys;
    for (const Trial* t : study.ranked) {
        const double vx = metric(*t, x.metric), vy = metric(*t, y.metric);
        if (std::isnan(vx) || std::isnan(vy)) continue;
        points.push_back(t);
        xs.push_back(vx);
        ys.push_back(vy);
    }
    const std::vector<bool> on_front = pareto_front(xs, x.minimise, ys, y.minimise);
    ChartSeries all = styled("trials", "#9a9a9a", 0, 3.5, 0.8), base = styled("baseline", "#0072b2", 0, 5),
                front = styled("Pareto front", "#d55e00", 1.5, 4.5);
    std::vector<size_t> front_order;
    for (size_t i = 0; i < points.size(); ++i) {
        const std::string tip = fmt::format("trial #{}: {} {}, {} {}", points[i]->number, x.metric,
                                            format_number(xs[i]), y.metric, format_number(ys[i]));
        all.x.push_back(xs[i]), all.y.push_back(ys[i]), all.tips.push_back(tip);
        if (points[i] == study.baseline) base.x.push_back(xs[i]), base.y.push_back(ys[i]), base.tips.push_back(tip);
        if (on_front[i]) front_order.push_back(i);
    }
    std::sort(front_order.begin(), front_order.end(),
              [&](size_t a, size_t b) { return std::pair(xs[a], ys[a]) < std::pair(xs[b], ys[b]); });
    nlohmann::json members = nlohmann::json::array();
    for (const size_t i : front_order) {
        front.x.push_back(xs[i]), front.y.push_back(ys[i]);
        front.tips.push_back(all.tips[i]);
        front.tags.push_back(fmt::format("#{}", points[i]->number));
        members.push_back(points[i]->number);
    }
    fronts[y.metric + " vs " + x.metric] = members;

    Chart chart;
    chart.title = fmt::format("{} vs {} ({} trials, {} on the front)", y.label, x.label, points.size(),
                              front_order.size());
    chart.x = {x.label + (x.minimise ? " ← better" : " → better"), spans_decades(xs)};
    chart.y = {y.label + (y.minimise ? " ↓ better" : " ↑ better"), spans_decades(ys)};
    chart.series = {all};
    if (!base.x.empty()) chart.series.push_back(base);
    chart.series.push_back(front);
    return chart_svg(chart);
}

std::string pareto_section(const Study& study, nlohmann::json& summary) {
    std::string html = "<section id=\"pareto\"><h2>Pareto fronts</h2>\n<p>Trials no other trial beats on both "
                       "axes at once; the front's points are labelled with their trial numbers.</p>\n<div class=\"charts\">\n";
    nlohmann::json fronts = nlohmann::json::object();
    const Objective bpb{"val_bpb", "val_bpb", true}, parameters{"parameters", "parameters", true};
    html += pareto_chart(study, parameters, bpb, fronts);
    if (study.any_metric("train_tokens_per_second"))
        html += pareto_chart(study, {"train_tokens_per_second", "training tokens/s", false}, bpb, fronts);
    else
        html += pareto_chart(study, {"train_flops_per_token", "training FLOPs/token", true}, bpb, fronts);
    if (study.any_metric("mqar_accuracy"))
        html += pareto_chart(study, parameters, {"mqar_accuracy", "MQAR accuracy", false}, fronts);
    summary["pareto"] = fronts;
    return html + "</div></section>\n";
}

std::string lineage_section(const Study& study, nlohmann::json& summary) {
    std::vector<int64_t> leaves;
    for (size_t i = 0; i < study.ranked.size() && i < kTop; ++i) leaves.push_back(study.ranked[i]->id);
    const std::vector<LineageNode> nodes = lineage_of(study.trials, leaves);
    summary["lineage"] = nlohmann::json::array();
    for (const LineageNode& node : nodes) {
        std::vector<int64_t> parents;
        for (const int64_t id : node.parent_ids) parents.push_back(study.by_id.at(id)->number);
        summary["lineage"].push_back({{"trial", node.number}, {"parents", parents}, {"rank", node.rank}});
    }
    std::string html = fmt::format("<section id=\"lineage\"><h2>Lineage of the best {}</h2>\n", leaves.size());
    if (nodes.empty()) return html + "<p class=\"empty\">No finished trials yet.</p></section>\n";
    html += "<p>Each best candidate (★rank, orange) with every trial it was mutated or crossed from, back to the "
            "roots; one row per generation, f = fitness.</p>\n";
    return html + "<div class=\"scroll\">" + lineage_svg(nodes) + "</div></section>\n";
}

std::string curves_section(const Study& study) {
    std::set<std::string> keys;
    for (const auto& [id, values] : study.curves)
        for (const IntermediateValue& value : values)
            if (value.metrics.is_object())
                for (const auto& [key, entry] : value.metrics.items())
                    if (entry.is_number()) keys.insert(key);
    std::string html = "<section id=\"curves\"><h2>Learning curves</h2>\n";
    if (keys.empty()) return html + "<p class=\"empty\">No intermediate values recorded.</p></section>\n";
    html += fmt::format("<p>Every trial's reported values by step; the best {} in colour.</p>\n<div class=\"charts\">\n",
                        std::min(kTop, study.ranked.size()));
    for (const std::string& key : keys) {
        Chart chart;
        chart.title = key;
        std::vector<ChartSeries> others;
        std::map<size_t, ChartSeries> top;  // by rank
        std::vector<double> all_y;
        for (const auto& [id, values] : study.curves) {
            const Trial& trial = *study.by_id.at(id);
            ChartSeries series;
            for (const IntermediateValue& value : values) {
                if (!value.metrics.is_object() || !value.metrics.contains(key) || !value.metrics[key].is_number())
                    continue;
                series.x.push_back(double(value.step));
                series.y.push_back(value.metrics[key].get<double>());
                series.tips.push_back(fmt::format("trial #{} step {}: {}", trial.number, value.step,
                                                  format_number(series.y.back())));
            }
            if (series.x.empty()) continue;
            all_y.insert(all_y.end(), series.y.begin(), series.y.end());
            const auto rank = std::find(study.ranked.begin(), study.ranked.end(), &trial) - study.ranked.begin();
            if (size_t(rank) < kTop) {
                series.label = fmt::format("#{} (rank {})", trial.number, rank + 1);
                series.colour = palette_colour(size_t(rank));
                series.line_width = 2;
                series.marker_radius = series.x.size() == 1 ? 3 : 0;
                top[size_t(rank)] = std::move(series);
            } else {
                series.colour = "#b0b0b0";
                series.line_width = 1;
                series.marker_radius = series.x.size() == 1 ? 2 : 0;
                series.opacity = 0.7;
                others.push_back(std::move(series));
            }
        }
        if (!others.empty()) others.front().label = "other trials";
        chart.series = std::move(others);
        for (auto& [rank, series] : top) chart.series.push_back(std::move(series));
        chart.x = {"step", false};
        chart.y = {key, spans_decades(all_y)};
        html += chart_svg(chart);
    }
    return html + "</div></section>\n";
}

std::string proxies_section(const Study& study, nlohmann::json& summary) {
    std::set<std::string> names;
    for (const Trial* t : study.ranked)
        for (const auto& [name, value] : t->proxies) names.insert(name);
    summary["proxies"] = nlohmann::json::array();
    std::string html = "<section id=\"proxies\"><h2>Zero-cost proxies against results</h2>\n";
    if (names.empty()) return html + "<p class=\"empty\">No proxies recorded for finished trials.</p></section>\n";
    html += "<p>Rank correlation of each proxy (measured at initialisation) with the trained result over the done "
            "trials that ran their whole budget (trials stopped early by successive halving were measured at fewer "
            "steps): Kendall's τ-b and Spearman's ρ, n = trials with both values. A proxy that ranks like val_bpb "
            "has τ near −1 (lower val_bpb is better) and near +1 against MQAR accuracy and fitness.</p>\n";
    std::vector<const Trial*> full;
    for (const Trial* t : study.ranked)
        if (!t->final_metrics.contains("pruned_at_step")) full.push_back(t);
    std::vector<std::pair<std::string, std::vector<double>>> targets;
    for (const char* target : {"val_bpb", "mqar_accuracy", "fitness"}) {
        std::vector<double> results;
        for (const Trial* t : full) results.push_back(metric(*t, target));
        if (std::ranges::any_of(results, [](double v) { return !std::isnan(v); }))
            targets.emplace_back(target, std::move(results));
    }
    std::string table = "<table class=\"proxies\"><thead><tr><th>proxy</th>";
    for (const auto& [target, results] : targets)
        table += fmt::format("<th>τ ({0})</th><th>ρ ({0})</th><th>n</th>", target);
    table += "</tr></thead>\n<tbody>\n";
    std::string charts = "<div class=\"charts\">\n";
    for (const std::string& name : names) {
        std::vector<double> values;
        for (const Trial* t : full) values.push_back(proxy(*t, name));
        nlohmann::json row = {{"proxy", name}};
        table += "<tr><td>" + html_escape(name) + "</td>";
        for (const auto& [target, results] : targets) {
            const std::vector<double>* result = &results;
            const double tau = kendall_tau(values, *result), rho = spearman_rho(values, *result);
            size_t n = 0;
            for (size_t i = 0; i < values.size(); ++i) n += !std::isnan(values[i]) && !std::isnan((*result)[i]);
            table += fmt::format("<td>{}</td><td>{}</td><td>{}</td>", signed_fixed(tau), signed_fixed(rho), n);
            row[fmt::format("kendall_tau_{}", target)] = json_number(tau);
            row[fmt::format("spearman_rho_{}", target)] = json_number(rho);
            row[fmt::format("n_{}", target)] = n;

            Chart chart;
            chart.title = fmt::format("{} vs {}", name, target);
            chart.subtitle = fmt::format("τ = {}, ρ = {}, n = {}", signed_fixed(tau), signed_fixed(rho), n);
            ChartSeries points = styled("", "#0072b2", 0, 3.5, 0.85);
            for (size_t i = 0; i < values.size(); ++i) {
                points.x.push_back(values[i]);
                points.y.push_back((*result)[i]);
                points.tips.push_back(fmt::format("trial #{}: {} {}, {} {}", full[i]->number, name,
                                                  format_number(values[i]), target, format_number((*result)[i])));
            }
            chart.series = {points};
            chart.x = {name, spans_decades(values)};
            chart.y = {target, false};
            chart.width = 400;
            chart.height = 290;
            charts += chart_svg(chart);
        }
        table += "</tr>\n";
        summary["proxies"].push_back(row);
    }
    return html + table + "</tbody></table>\n" + charts + "</div></section>\n";
}

const char* const kStyle = R"(
body { font-family: sans-serif; margin: 1.5em 2em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
thead th { background: #f0f0f0; }
table.board td:nth-child(-n+7) { text-align: right; white-space: nowrap; }
tr.baseline { background: #eef5fb; }
table.facts th { background: #f7f7f7; }
pre { margin: 0.2em 0; white-space: pre-wrap; font-size: 0.9em; }
table.failed pre { color: #a00; max-width: 60em; }
details summary { cursor: pointer; color: #0060a0; }
code { font-size: 0.85em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.scroll { overflow-x: auto; }
.empty { color: #888; font-style: italic; }
)";

}  // namespace

StudyReport build_study_report(ExperimentDatabase& db, int64_t study_id) {
    const Study study = read_study(db, study_id);
    StudyReport report;
    nlohmann::json& summary = report.summary;
    summary["study"] = study.name;
    summary["database"] = study.url;
    summary["counts"] = {{"done", study.counts.done},
                         {"failed", study.counts.failed},
                         {"running", study.counts.running},
                         {"queued", study.counts.queued}};
    const std::string body = header_section(study) + leaderboard_section(study, summary) +
                             pareto_section(study, summary) + lineage_section(study, summary) +
                             curves_section(study) + proxies_section(study, summary);
    report.html = fmt::format(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>linarch report: {}</title>\n"
        "<style>{}</style>\n</head>\n<body>\n<nav><a href=\"#leaderboard\">leaderboard</a><a href=\"#pareto\">Pareto "
        "fronts</a><a href=\"#lineage\">lineage</a><a href=\"#curves\">learning curves</a><a href=\"#proxies\">"
        "proxies</a></nav>\n{}<footer><p>Written by linarch {}.</p></footer>\n</body>\n</html>\n",
        html_escape(study.name), kStyle, body, LINARCH_VERSION);
    return report;
}

}  // namespace linarch
