#include <fmt/core.h>

#include "commands.hpp"
#include "core/error.hpp"

int main(int argc, char** argv) {
    CLI::App app{"linarch: design, train and run linear-attention language models"};
    app.set_version_flag("--version", std::string("linarch ") + LINARCH_VERSION);
    app.require_subcommand(1);
    linarch::cli::add_train_command(app);
    linarch::cli::add_generate_command(app);
    linarch::cli::add_data_command(app);
    linarch::cli::add_eval_command(app);
    linarch::cli::add_search_command(app);
    linarch::cli::add_report_command(app);
    linarch::cli::add_tokenizer_command(app);
    linarch::cli::add_serve_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const linarch::Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
    return 0;
}
