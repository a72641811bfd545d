#include "synthetic_study.hpp"

#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"

namespace linarch::report_test {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Planned {
    std::string changes;           // TOML lines replacing the baseline's (a whole [model] table)
    std::vector<int64_t> parents;  // trial numbers
    std::map<std::string, double> metrics, proxies;
    bool fails = false;
};

std::string spec_text(const std::string& model_table) {
    return fmt::format("[model]\n{}\n[model.mixer]\ndecay = \"fixed\"\n", model_table);
}
}  // namespace

// Done trials, best first by fitness then val_bpb: #3 (0.8), #1 (0.7), #6 (0.6, val_bpb 1.85),
// #4 (0.6, val_bpb 1.9), #0 (0.5), #5 (no fitness). val_bpb against parameters: #4 (5e4, 1.9),
// #6 (2e5, 1.85), #1 (4e5, 1.8), #3 (1e6, 1.7) are the front; #0 (1e5, 2.0) loses to #4 and #5
// (3e6, 2.2) to all. synflow falls as val_bpb rises (τ = ρ = −1 over 5 trials; #5 has none);
// grad_norm orders them 1,3,2,5,4,6 (2 of 15 pairs discordant: τ = 11/15, ρ = 1 − 6·4/210).
int64_t write_synthetic_study(ExperimentDatabase& db, const std::string& name) {
    const int64_t study = db.open_study(name, "base = \"gated_deltanet.toml\"\n[vary]\nmodel.d_model = [64, 128]\n");
    const auto metrics = [](double fitness, double bpb, double mqar, double parameters) {
        std::map<std::string, double> m = {{"val_bpb", bpb}, {"mqar_accuracy", mqar}, {"parameters", parameters},
                                           {"train_flops_per_token", 6 * parameters}};
        if (!std::isnan(fitness)) m["fitness"] = fitness;
        return m;
    };
    const std::vector<Planned> plan = {
        {"d_model = 64\nn_layers = 2", {}, metrics(0.5, 2.0, 0.5, 1e5), {{"synflow", 10}, {"grad_norm", 4}}},
        {"d_model = 128\nn_layers = 2", {}, metrics(0.7, 1.8, 0.6, 4e5), {{"synflow", 40}, {"grad_norm", 3}}},
        {"d_model = 64\nn_layers = 4", {}, {}, {}, true},
        {"d_model = 128\nn_layers = 3", {1}, metrics(0.8, 1.7, 0.55, 1e6), {{"synflow", 50}, {"grad_norm", 1}}},
        {"d_model = 32\nn_layers = 3\ninit_std = 0.003", {3, 0}, metrics(0.6, 1.9, 0.4, 5e4), {{"synflow", 20}, {"grad_norm", 5}}},
        {"d_model = 256\nn_layers = 3", {4}, metrics(kNaN, 2.2, 0.3, 3e6), {{"grad_norm", 6}}},
        {"d_model = 96\nn_layers = 2", {1}, metrics(0.6, 1.85, 0.45, 2e5), {{"synflow", 30}, {"grad_norm", 2}}},
    };
    std::vector<int64_t> ids;
    const auto enqueue = [&](const std::string& model, const std::vector<int64_t>& parents) {
        std::vector<int64_t> parent_ids;
        for (const int64_t number : parents) parent_ids.push_back(ids.at(size_t(number)));
        const EnqueueResult added = db.enqueue(
            study, {spec_text(model), fmt::format("{}-{:02}", name, ids.size()), parent_ids});
        LINARCH_CHECK(added.inserted, "synthetic study: trial {} was not inserted", ids.size());
        ids.push_back(added.trial_id);
    };
    for (const Planned& trial : plan) enqueue(trial.changes, trial.parents);
    for (size_t number = 0; number < plan.size(); ++number) {
        const Planned& trial = plan[number];
        std::optional<Claim> claim = db.claim_next(study, "worker-a", 3600);
        LINARCH_CHECK(claim && claim->trial.id == ids[number], "synthetic study: claimed the wrong trial");
        if (trial.fails) {
            db.fail_trial(claim->lease, kError);
            continue;
        }
        db.record_proxies(claim->trial.id, trial.proxies);
        for (int step = 10; step <= 30; step += 10) {
            const double progress = step / 30.0;
            db.report_intermediate(claim->lease, step,
                                   {{"train_loss", 3.0 - progress * (3.0 - trial.metrics.at("val_bpb"))},
                                    {"val_bpb", trial.metrics.at("val_bpb") + (1 - progress) * 0.5},
                                    {"note", "not a number: left out of the curves"}});
        }
        db.complete(claim->lease, trial.metrics);
    }
    // One trial running (claimed, never completed) and one still queued.
    enqueue("d_model = 64\nn_layers = 5", {0});
    LINARCH_CHECK(db.claim_next(study, "worker-b", 3600), "synthetic study: nothing to claim");
    enqueue("d_model = 64\nn_layers = 6", {0});
    return study;
}

}  // namespace linarch::report_test
