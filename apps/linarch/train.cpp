#include <fmt/core.h>

#include "commands.hpp"
#include "core/spec.hpp"
#include "train/trainer.hpp"

namespace linarch::cli {

void add_train_command(CLI::App& app) {
    struct Options {
        std::string config, out;
        std::vector<std::string> overrides;
        int64_t steps = 0;
        bool resume = false;
        std::string device = "cpu";
        std::string precision = "fp32";
    };
    auto options = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("train", "Train a model from a TOML spec");
    cmd->add_option("--config,-c", options->config, "Spec file (TOML)")->required()->check(CLI::ExistingFile);
    cmd->add_option("--steps", options->steps, "Override run.steps");
    cmd->add_option("--set", options->overrides, "Override a spec field: dotted.key=value (repeatable)");
    cmd->add_option("--out,-o", options->out, "Run directory (checkpoints, metrics.jsonl); default runs/<config name>");
    cmd->add_flag("--resume", options->resume, "Continue the run in --out from its latest checkpoint");
    cmd->add_option("--device", options->device,
                    "Where to train: cpu, or cuda (the first GPU; parameters, activations and optimizer state there)")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    cmd->add_option("--precision", options->precision,
                    "fp32 (exact), or bf16 with --device cuda: mixed precision, bf16 operands on the tensor cores and "
                    "fp32 weights, activations and optimizer state")
        ->check(CLI::IsMember({"fp32", "bf16"}));
    cmd->callback([options] {
        std::vector<std::string> overrides = options->overrides;
        if (options->steps > 0) overrides.push_back(fmt::format("run.steps={}", options->steps));
        const Spec spec = load_spec(options->config, overrides);
        TrainOptions train_options;
        train_options.out_dir = options->out.empty()
                                    ? std::filesystem::path("runs") / std::filesystem::path(options->config).stem()
                                    : std::filesystem::path(options->out);
        train_options.resume = options->resume;
        train_options.device = options->device == "cuda" ? Device::cuda : Device::cpu;
        train_options.precision = ops::precision_from_name(options->precision);
        const TrainResult result = train(spec, train_options);
        if (result.interrupted) {
            fmt::print("interrupted at step {}; resume with --resume --out {}\n", result.steps_done,
                       train_options.out_dir.string());
            return;
        }
        fmt::print("trained {} steps; checkpoint {}\n", result.steps_done, result.checkpoint.string());
        fmt::print("val_loss={:.4f}\n", result.val_loss);
        if (spec.data.task == "corpus")
            fmt::print("val_bpb={:.4f}\n", result.val_bpb);
        else
            fmt::print("val_accuracy={:.4f}\n", result.val_accuracy);
    });
}

}  // namespace linarch::cli
