#include <CLI/CLI.hpp>
#include <fmt/core.h>

int main(int argc, char** argv) {
    CLI::App app{"linarch: linear-attention language models"};
    app.set_version_flag("--version", std::string("linarch ") + LINARCH_VERSION);
    CLI11_PARSE(app, argc, argv);
    return 0;
}
