#include "eval/eval_report.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "core/error.hpp"

#include "eval/plot.hpp"

namespace linarch {

nlohmann::json eval_json(const EvalRun& run) {
    nlohmann::json results = nlohmann::json::array();
    for (const Measurement& m : run.results) {
        nlohmann::json r = {{"suite", m.suite}, {"metric", m.metric}, {"value", m.value}};
        const auto coordinate = [&](const char* key, int64_t value) {
            if (value >= 0) r[key] = value;
        };
        coordinate("seq_len", m.seq_len);
        coordinate("num_kv_pairs", m.num_kv_pairs);
        coordinate("multiple", m.multiple);
        coordinate("position_begin", m.position_begin);
        coordinate("position_end", m.position_end);
        r["count"] = m.count;
        results.push_back(std::move(r));
    }
    return {{"format", "linarch-eval"}, {"version", 1},   {"checkpoint", run.checkpoint}, {"step", run.step},
            {"corpus", run.corpus},     {"suites", run.suites}, {"results", std::move(results)}};
}

namespace {
std::vector<const Measurement*> select(const EvalRun& run, const std::string& suite, const std::string& metric) {
    std::vector<const Measurement*> out;
    for (const Measurement& m : run.results)
        if (m.suite == suite && m.metric == metric) out.push_back(&m);
    return out;
}

void loss_table(const EvalRun& run, std::string& out) {
    std::string line;
    const Measurement* first = nullptr;
    for (const Measurement& m : run.results) {
        if (m.suite != "loss") continue;
        if (!first) first = &m;
        line += fmt::format("  {} {:.4f}", m.metric, m.value);
    }
    if (!first) return;
    out += fmt::format("validation (windows of {} tokens, {} tokens scored)\n{}\n\n", first->seq_len, first->count,
                       line);
}

void mqar_table(const EvalRun& run, std::string& out) {
    const auto cells = select(run, "mqar", "accuracy");
    if (cells.empty()) return;
    std::set<int64_t> lengths, pairs;
    std::map<std::pair<int64_t, int64_t>, double> accuracy;
    for (const Measurement* m : cells) {
        lengths.insert(m->seq_len);
        pairs.insert(m->num_kv_pairs);
        accuracy[{m->seq_len, m->num_kv_pairs}] = m->value;
    }
    const auto chance = select(run, "mqar", "chance");
    out += fmt::format("MQAR accuracy at the query positions ({}rows: sequence length, columns: key-value pairs)\n",
                       chance.empty() ? "" : fmt::format("chance {:.3f}; ", chance.front()->value));
    out += fmt::format("  {:>8}", "T \\ pairs");
    for (int64_t d : pairs) out += fmt::format("{:>8}", d);
    out += "\n";
    for (int64_t t : lengths) {
        out += fmt::format("  {:>8}", t);
        for (int64_t d : pairs) {
            const auto it = accuracy.find({t, d});
            out += it == accuracy.end() ? fmt::format("{:>8}", "-") : fmt::format("{:>8.3f}", it->second);
        }
        out += "\n";
    }
    out += "\n";
}

void extrapolation_table(const EvalRun& run, std::string& out) {
    const auto rows = select(run, "extrapolation", "loss");
    if (rows.empty()) return;
    std::set<int64_t> multiples;
    std::set<std::pair<int64_t, int64_t>> buckets;  // [begin, end) of every multiple, in order
    std::map<std::tuple<int64_t, int64_t, int64_t>, double> loss;
    for (const Measurement* m : rows) {
        multiples.insert(m->multiple);
        buckets.insert({m->position_begin, m->position_end});
        loss[{m->multiple, m->position_begin, m->position_end}] = m->value;
    }
    out += "loss (nats/token) by position, windows of 1x, 2x, ... the training length\n";
    out += fmt::format("  {:>15}", "positions");
    for (int64_t k : multiples) out += fmt::format("{:>10}", fmt::format("{}x", k));
    out += "\n";
    for (const auto& bucket : buckets) {
        out += fmt::format("  {:>15}", fmt::format("[{}, {})", bucket.first, bucket.second));
        for (int64_t k : multiples) {
            const auto it = loss.find({k, bucket.first, bucket.second});
            out += it == loss.end() ? fmt::format("{:>10}", "-") : fmt::format("{:>10.4f}", it->second);
        }
        out += "\n";
    }
    out += "\n";
}
}  // namespace

std::string eval_table(const EvalRun& run) {
    std::string out = fmt::format("{} (step {})\n\n", run.checkpoint, run.step);
    loss_table(run, out);
    mqar_table(run, out);
    extrapolation_table(run, out);
    return out;
}

void write_position_loss_png(const std::filesystem::path& path, const EvalRun& run) {
    std::map<int64_t, PlotSeries> series;
    int64_t train_len = 0;
    for (const Measurement* m : select(run, "extrapolation", "loss")) {
        PlotSeries& s = series[m->multiple];
        s.label = fmt::format("{}x ({} tokens)", m->multiple, m->seq_len);
        s.x.push_back(double(m->position_end));
        s.y.push_back(m->value);
        if (m->multiple == 1) train_len = m->seq_len;
    }
    LINARCH_CHECK(!series.empty(), "eval --plot: the extrapolation suite was not run (add it to --suite)");
    std::vector<PlotSeries> lines;
    for (auto& [multiple, s] : series) lines.push_back(std::move(s));
    PlotOptions options;
    options.title = fmt::format("loss by position, step {}{}", run.step,
                                train_len > 0 ? fmt::format(", trained at {} tokens", train_len) : "");
    options.x_label = "position (end of bucket)";
    options.y_label = "loss (nats/token)";
    options.log2_x = true;
    write_line_plot_png(path, lines, options);
}

}  // namespace linarch
