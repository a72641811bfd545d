#include "search/report_lineage.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "search/report_svg.hpp"

namespace linarch {

std::vector<LineageNode> lineage_of(const std::vector<Trial>& trials, const std::vector<int64_t>& leaves) {
    std::map<int64_t, const Trial*> by_id;
    for (const Trial& t : trials) by_id[t.id] = &t;

    // Generation = 1 + the deepest parent's, memoised; `visiting` guards against a cycle a damaged
    // database could hold (the schema makes parents older than children, so there should be none).
    std::map<int64_t, int> generation;
    std::map<int64_t, bool> visiting;
    const std::function<int(int64_t)> generation_of = [&](int64_t id) -> int {
        if (const auto it = generation.find(id); it != generation.end()) return it->second;
        if (visiting[id]) return 0;
        visiting[id] = true;
        int g = 0;
        for (const int64_t parent : by_id.at(id)->parent_ids)
            if (by_id.count(parent)) g = std::max(g, generation_of(parent) + 1);
        visiting[id] = false;
        return generation[id] = g;
    };
    for (const int64_t leaf : leaves)
        if (by_id.count(leaf)) generation_of(leaf);

    std::vector<LineageNode> nodes;
    for (const auto& [id, g] : generation) {
        const Trial& trial = *by_id.at(id);
        LineageNode node;
        node.trial_id = id;
        node.number = trial.number;
        node.generation = g;
        for (const int64_t parent : trial.parent_ids)
            if (by_id.count(parent)) node.parent_ids.push_back(parent);
        const auto fitness = trial.final_metrics.find("fitness");
        node.fitness = fitness == trial.final_metrics.end() ? std::numeric_limits<double>::quiet_NaN()
                                                            : fitness->second;
        const auto leaf = std::find(leaves.begin(), leaves.end(), id);
        node.rank = leaf == leaves.end() ? 0 : int(leaf - leaves.begin()) + 1;
        nodes.push_back(node);
    }
    std::sort(nodes.begin(), nodes.end(), [](const LineageNode& a, const LineageNode& b) {
        return std::pair(a.generation, a.number) < std::pair(b.generation, b.number);
    });
    return nodes;
}

std::string lineage_svg(const std::vector<LineageNode>& nodes) {
    if (nodes.empty()) return "";
    constexpr double box_width = 92, box_height = 36, column = 108, row = 72, margin = 12;

    // Rows by generation; within a row, nodes ordered by their parents' mean column (the barycentre
    // heuristic of layered graph drawing), which keeps most edges short and uncrossed.
    std::map<int, std::vector<const LineageNode*>> rows;
    for (const LineageNode& node : nodes) rows[node.generation].push_back(&node);
    size_t widest = 0;
    for (const auto& [g, members] : rows) widest = std::max(widest, members.size());
    std::map<int64_t, std::pair<double, double>> centre;  // trial id → box centre
    for (auto& [g, members] : rows) {
        std::map<int64_t, double> barycentre;
        for (const LineageNode* node : members) {
            double sum = 0;
            int count = 0;
            for (const int64_t parent : node->parent_ids)
                if (const auto it = centre.find(parent); it != centre.end()) sum += it->second.first, ++count;
            barycentre[node->trial_id] = count ? sum / count : 0;
        }
        std::stable_sort(members.begin(), members.end(), [&](const LineageNode* a, const LineageNode* b) {
            return barycentre[a->trial_id] < barycentre[b->trial_id];
        });
        const double offset = margin + (double(widest) - double(members.size())) * column / 2;
        for (size_t i = 0; i < members.size(); ++i)
            centre[members[i]->trial_id] = {offset + column * (double(i) + 0.5), margin + row * g + box_height / 2};
    }

    const double width = 2 * margin + column * double(widest);
    const double height = 2 * margin + row * double(rows.rbegin()->first) + box_height;
    std::string svg = fmt::format(
        "<svg class=\"lineage\" width=\"{0:.0f}\" height=\"{1:.0f}\" viewBox=\"0 0 {0:.0f} {1:.0f}\" role=\"img\" "
        "aria-label=\"lineage of the best trials\" font-family=\"sans-serif\" font-size=\"11\">\n",
        width, height);
    for (const LineageNode& node : nodes)
        for (const int64_t parent : node.parent_ids) {
            const auto [px, py] = centre.at(parent);
            const auto [cx, cy] = centre.at(node.trial_id);
            const double from = py + box_height / 2, to = cy - box_height / 2, bend = (to - from) / 2;
            svg += fmt::format("<path d=\"M{:.1f} {:.1f} C{:.1f} {:.1f} {:.1f} {:.1f} {:.1f} {:.1f}\" fill=\"none\" "
                               "stroke=\"#999\" stroke-width=\"1.2\"/>\n",
                               px, from, px, from + bend, cx, to - bend, cx, to);
        }
    for (const LineageNode& node : nodes) {
        const auto [cx, cy] = centre.at(node.trial_id);
        const bool leaf = node.rank > 0;
        const std::string fitness = std::isnan(node.fitness) ? "no fitness" : fmt::format("f {:.4f}", node.fitness);
        svg += fmt::format("<g class=\"node\"><title>{}</title>", html_escape(fmt::format(
                                                                     "trial {}{}: {}", node.number,
                                                                     leaf ? fmt::format(" (rank {})", node.rank) : "",
                                                                     fitness)));
        svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{}\" height=\"{}\" rx=\"5\" fill=\"{}\" "
                           "stroke=\"{}\" stroke-width=\"{}\"/>",
                           cx - box_width / 2, cy - box_height / 2, box_width, box_height,
                           leaf ? "#fde7c2" : node.number == 0 ? "#dcebf7" : "#f3f3f3", leaf ? "#e69f00" : "#888",
                           leaf ? 2 : 1);
        svg += fmt::format("<text x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"middle\" font-weight=\"bold\">#{2}{3}</text>"
                           "<text x=\"{0:.1f}\" y=\"{4:.1f}\" text-anchor=\"middle\">{5}</text></g>\n",
                           cx, cy - 3, node.number, leaf ? fmt::format(" ★{}", node.rank) : "", cy + 11, fitness);
    }
    svg += "</svg>\n";
    return svg;
}

}  // namespace linarch
