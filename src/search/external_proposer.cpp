#include "search/external_proposer.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "core/error.hpp"

namespace linarch {

namespace {

nlohmann::json field_json(const FieldDomain& field) {
    nlohmann::json out = {{"key", field.key}};
    if (field.is_range()) {
        out["min"] = field.min;
        out["max"] = field.max;
        out["integer"] = field.integer;
        out["log"] = field.log;
    } else {
        nlohmann::json choices = nlohmann::json::array();
        for (const std::string& literal : field.choices) choices.push_back(nlohmann::json::parse(literal, nullptr, false));
        out["choices"] = choices;
    }
    return out;
}

// A TOML literal as JSON: numbers, booleans and strings parse as the same JSON text.
nlohmann::json literal_json(const std::string& literal) {
    nlohmann::json value = nlohmann::json::parse(literal, nullptr, false);
    return value.is_discarded() ? nlohmann::json(literal) : value;
}

std::string json_to_literal(const std::string& key, const nlohmann::json& value) {
    if (value.is_string()) return toml_literal(value.get<std::string>());
    if (value.is_boolean()) return toml_literal(value.get<bool>());
    if (value.is_number_integer()) return toml_literal(value.get<int64_t>());
    if (value.is_number_float()) return toml_literal(value.get<double>());
    fail("{}: expected a string, number or boolean, got {}", key, value.dump());
}

ProposedCandidate candidate_of(const nlohmann::json& item, const SearchSpace& space, const std::string& where) {
    LINARCH_CHECK(item.is_object(), "{}: expected an object with \"assignment\" or \"spec\", got {}", where,
                  item.dump().substr(0, 80));
    ProposedCandidate candidate;
    if (item.contains("spec")) {
        LINARCH_CHECK(item["spec"].is_string(), "{}: \"spec\" must be a string of TOML", where);
        candidate.spec = parse_spec(item["spec"].get<std::string>(), where);
    } else {
        LINARCH_CHECK(item.contains("assignment") && item["assignment"].is_object(),
                      "{}: expected \"assignment\": {{key: value}} or \"spec\": \"TOML\"", where);
        Assignment assignment;
        for (const auto& [key, value] : item["assignment"].items()) {
            space.field(key);  // a key the space does not vary is an error naming the space's keys
            assignment[key] = json_to_literal(key, value);
        }
        candidate.spec = space.realise(assignment);
    }
    if (item.contains("parents")) {
        LINARCH_CHECK(item["parents"].is_array(), "{}: \"parents\" must be an array of trial numbers", where);
        for (const auto& parent : item["parents"]) {
            LINARCH_CHECK(parent.is_number_integer(), "{}: parent {} is not a trial number", where, parent.dump());
            candidate.parent_numbers.push_back(parent.get<int64_t>());
        }
    }
    return candidate;
}

}  // namespace

nlohmann::json proposer_input(const std::string& study, const SearchSpace& space, const std::vector<Trial>& trials,
                              int64_t count) {
    nlohmann::json fields = nlohmann::json::array();
    for (const FieldDomain& field : space.fields()) fields.push_back(field_json(field));
    std::map<int64_t, int64_t> number_of;
    for (const Trial& t : trials) number_of[t.id] = t.number;
    nlohmann::json listed = nlohmann::json::array();
    for (const Trial& t : trials) {
        nlohmann::json parents = nlohmann::json::array();
        for (int64_t id : t.parent_ids) parents.push_back(number_of.at(id));
        nlohmann::json assignment = nlohmann::json::object();
        for (const auto& [key, literal] : space.assignment_of(parse_spec(t.spec_toml, "trial spec")))
            assignment[key] = literal_json(literal);
        nlohmann::json entry = {{"number", t.number},    {"status", status_name(t.status)}, {"parents", parents},
                                {"spec", t.spec_toml},   {"assignment", assignment},
                                {"metrics", t.final_metrics}, {"proxies", t.proxies}};
        if (!t.error.empty()) entry["error"] = t.error;
        listed.push_back(entry);
    }
    return {{"study", study},
            {"space", space.source()},
            {"base_spec", spec_to_toml(space.base())},
            {"fields", fields},
            {"count", count},
            {"trials", listed}};
}

ProposerOutput parse_proposer_output(const std::string& output, const SearchSpace& space) {
    ProposerOutput parsed;
    std::vector<std::pair<std::string, nlohmann::json>> items;  // (where, item)
    const nlohmann::json whole = nlohmann::json::parse(output, nullptr, false);
    if (!whole.is_discarded() && whole.is_array()) {
        for (size_t i = 0; i < whole.size(); ++i) items.emplace_back(fmt::format("candidate {}", i + 1), whole[i]);
    } else {
        std::istringstream lines(output);
        std::string line;
        for (int number = 1; std::getline(lines, line); ++number) {
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            const nlohmann::json item = nlohmann::json::parse(line, nullptr, false);
            if (item.is_discarded()) {
                parsed.rejected.push_back(fmt::format("line {}: not JSON: {}", number, line.substr(0, 80)));
                continue;
            }
            items.emplace_back(fmt::format("line {}", number), item);
        }
    }
    for (const auto& [where, item] : items) {
        try {
            parsed.candidates.push_back(candidate_of(item, space, where));
        } catch (const std::exception& e) {
            parsed.rejected.push_back(std::string(e.what()).starts_with(where) ? e.what()
                                                                                : where + ": " + e.what());
        }
    }
    return parsed;
}

std::string run_proposer_command(const std::string& command, const std::string& input) {
    // The input goes through a file: a pipe both ways would need a second thread to avoid deadlock.
    char path[] = "/tmp/linarch-proposer-XXXXXX";
    const int fd = mkstemp(path);
    LINARCH_CHECK(fd >= 0, "external proposer: cannot create a temporary file for its input");
    const std::string input_path = path;
    FILE* file = fdopen(fd, "w");
    const bool written = file != nullptr && std::fwrite(input.data(), 1, input.size(), file) == input.size();
    if (file != nullptr) std::fclose(file);
    struct Remove {
        std::string path;
        ~Remove() { std::filesystem::remove(path); }
    } remove_input{input_path};
    LINARCH_CHECK(written, "external proposer: cannot write its input to {}", input_path);

    FILE* pipe = popen(fmt::format("{} < {}", command, input_path).c_str(), "r");
    LINARCH_CHECK(pipe != nullptr, "external proposer: cannot run \"{}\"", command);
    std::string output;
    char buffer[4096];
    for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
    const int status = pclose(pipe);
    LINARCH_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "external proposer \"{}\" failed ({}); its output: {}", command,
                  WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status)) : std::string("killed"),
                  output.substr(0, 400));
    return output;
}

}  // namespace linarch
