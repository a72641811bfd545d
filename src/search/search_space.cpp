#include "search/search_space.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace linarch {

std::string toml_literal(const std::string& text) {
    std::string out = "\"";
    for (char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (byte < 0x20 || byte == 0x7f) {
            out += fmt::format("\\u{:04X}", byte);
        } else {
            out += c;
        }
    }
    return out + "\"";
}

std::string toml_literal(int64_t value) { return std::to_string(value); }

std::string toml_literal(double value) {
    std::string text = fmt::format("{}", value);
    if (text.find_first_of(".eni") == std::string::npos) text += ".0";
    return text;
}

std::string toml_literal(bool value) { return value ? "true" : "false"; }

namespace {

constexpr std::string_view kValidTopLevel =
    "valid top-level keys: base (a spec file or an inline [base] spec), [vary], [[enqueue]]";

// The literal of a scalar TOML value; empty for arrays, tables and dates (not spec values).
std::string literal_of(const toml::node& node) {
    if (auto s = node.as_string()) return toml_literal(s->get());
    if (auto i = node.as_integer()) return toml_literal(i->get());
    if (auto f = node.as_floating_point()) return toml_literal(f->get());
    if (auto b = node.as_boolean()) return toml_literal(b->get());
    return "";
}

std::string where(const std::string& source, const toml::node& node) {
    const auto line = node.source().begin.line;
    return line == 0 ? source : fmt::format("{}:{}", source, line);
}

// The node at a dotted path of nested tables ("model.layers.0.decay"), or nullptr.
const toml::node* find_node(const toml::table& root, const std::string& dotted) {
    const toml::node* node = &root;
    for (size_t start = 0; node != nullptr;) {
        const size_t dot = dotted.find('.', start);
        const std::string part = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        const toml::table* table = node->as_table();
        node = table == nullptr ? nullptr : table->get(part);
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    return node;
}

// True when `message` is parse_spec's complaint about one --set override itself (unknown key,
// wrong type, out of range): those messages start with "--set key=value", while conflicts between
// keys start with the spec's source name.
bool names_the_override(const std::string& message) { return message.starts_with("--set "); }

class SpaceReader {
public:
    // `base_text` (named `base_name` in messages) is the base spec every choice is checked against.
    SpaceReader(std::string source, const std::string& base_text, const std::string& base_name)
        : source_(std::move(source)), base_text_(base_text), base_name_(base_name) {}

    // Reads the [vary] table at `path` ("" for [vary] itself) into `fields`, in key order.
    void read_vary(const toml::node& node, const std::string& path, std::vector<FieldDomain>& fields) const {
        const toml::table* table = node.as_table();
        if (table == nullptr)
            fail("{}: {}: expected a table of spec keys, got {}", where(source_, node),
                 path.empty() ? "vary" : "vary." + path, literal_of(node));
        for (auto&& [key, value] : *table) {
            const std::string dotted = path.empty() ? std::string(key.str()) : fmt::format("{}.{}", path, key.str());
            const toml::table* sub = value.as_table();
            const bool is_range = sub != nullptr && (sub->contains("min") || sub->contains("max"));
            if (sub != nullptr && !is_range) {
                read_vary(value, dotted, fields);  // a table of keys: [vary.model.mixer] or model.mixer.x = ...
                continue;
            }
            if (value.is_array()) {
                fields.push_back(read_choices(*value.as_array(), dotted));
            } else if (is_range) {
                fields.push_back(read_range(*sub, dotted));
            } else {
                fail("{}: vary.{}: expected a list of choices [a, b, ...] or a range {{ min = a, max = b }}, got {}",
                     where(source_, value), dotted, literal_of(value));
            }
            check_values(fields.back(), value);
        }
    }

private:
    FieldDomain read_choices(const toml::array& array, const std::string& key) const {
        FieldDomain field;
        field.key = key;
        LINARCH_CHECK(!array.empty(), "{}: vary.{}: expected at least one choice, got an empty list",
                      where(source_, array), key);
        for (const toml::node& element : array) {
            std::string literal = literal_of(element);
            LINARCH_CHECK(!literal.empty(), "{}: vary.{}: each choice must be a string, number or boolean",
                          where(source_, element), key);
            for (const std::string& earlier : field.choices)
                LINARCH_CHECK(earlier != literal, "{}: vary.{}: choice {} is listed twice", where(source_, element),
                              key, literal);
            field.choices.push_back(std::move(literal));
        }
        return field;
    }

    FieldDomain read_range(const toml::table& table, const std::string& key) const {
        FieldDomain field;
        field.key = key;
        for (auto&& [name, value] : table)
            LINARCH_CHECK(name.str() == "min" || name.str() == "max" || name.str() == "log",
                          "{}: vary.{}: unknown range key \"{}\" (valid: min, max, log)", where(source_, value), key,
                          name.str());
        const toml::node* min = table.get("min");
        const toml::node* max = table.get("max");
        LINARCH_CHECK(min != nullptr && max != nullptr, "{}: vary.{}: a range needs both min and max",
                      where(source_, table), key);
        for (const toml::node* end : {min, max})
            LINARCH_CHECK(end->is_integer() || end->is_floating_point(),
                          "{}: vary.{}: a range's min and max must be numbers, got {}", where(source_, *end), key,
                          literal_of(*end));
        field.integer = min->is_integer() && max->is_integer();
        field.min = min->is_integer() ? double(min->as_integer()->get()) : min->as_floating_point()->get();
        field.max = max->is_integer() ? double(max->as_integer()->get()) : max->as_floating_point()->get();
        LINARCH_CHECK(std::isfinite(field.min) && std::isfinite(field.max) && field.min < field.max,
                      "{}: vary.{}: expected min < max (both finite), got min = {}, max = {}", where(source_, table),
                      key, literal_of(*min), literal_of(*max));
        if (const toml::node* log = table.get("log")) {
            LINARCH_CHECK(log->is_boolean(), "{}: vary.{}: log must be true or false, got {}", where(source_, *log),
                          key, literal_of(*log));
            field.log = log->as_boolean()->get();
            LINARCH_CHECK(!field.log || (!field.integer && field.min > 0),
                          "{}: vary.{}: log = true draws numbers in log space, so it needs a range of numbers "
                          "(write min or max with a decimal point) with min > 0",
                          where(source_, *log), key);
        }
        return field;
    }

    // Every choice (each end of a range) must be a value the key accepts: applied alone to the base,
    // parse_spec must not reject the override itself. Conflicts with the base's other keys are fine:
    // other varying fields may resolve them.
    void check_values(const FieldDomain& field, const toml::node& node) const {
        std::vector<std::string> values = field.choices;
        if (field.is_range()) {
            values = field.integer ? std::vector{toml_literal(int64_t(field.min)), toml_literal(int64_t(field.max))}
                                   : std::vector{toml_literal(field.min), toml_literal(field.max)};
        }
        for (const std::string& value : values) {
            try {
                parse_spec(base_text_, base_name_, {fmt::format("{}={}", field.key, value)});
            } catch (const Error& e) {
                const std::string message = e.what();
                if (names_the_override(message))
                    fail("{}: vary.{}: {} is not a value of spec key {}: {}", where(source_, node), field.key, value,
                         field.key, message);
            }
        }
    }

    std::string source_;
    const std::string& base_text_;
    const std::string& base_name_;
};

// An [[enqueue]] table as dotted key → TOML literal (model.mixer.decay = "vector" nests as tables).
void flatten_assignment(const toml::table& table, const std::string& path, Assignment& out) {
    for (auto&& [key, value] : table) {
        const std::string dotted = path.empty() ? std::string(key.str()) : fmt::format("{}.{}", path, key.str());
        if (const toml::table* sub = value.as_table())
            flatten_assignment(*sub, dotted, out);
        else
            out[dotted] = literal_of(value);
    }
}

}  // namespace

SearchSpace SearchSpace::load(const std::string& path) {
    const std::string directory = std::filesystem::path(path).parent_path().string();
    return parse(read_file(path, "search-space file"), path, directory);
}

SearchSpace SearchSpace::parse(const std::string& text, const std::string& source_name,
                               const std::string& base_directory) {
    toml::table root;
    try {
        root = toml::parse(text, std::string_view(source_name));
    } catch (const toml::parse_error& e) {
        fail("{}:{}:{}: TOML syntax error: {}", source_name, e.source().begin.line, e.source().begin.column,
             e.description());
    }
    for (auto&& [key, value] : root)
        LINARCH_CHECK(key.str() == "base" || key.str() == "vary" || key.str() == "enqueue", "{}: unknown key \"{}\" ({})",
                      where(source_name, value), key.str(), kValidTopLevel);

    SearchSpace space;
    space.source_ = source_name;
    const toml::node* base = root.get("base");
    LINARCH_CHECK(base != nullptr, "{}: missing base: name the spec the candidates start from (base = \"file.toml\", "
                  "relative to this file) or give it inline as [base.model], [base.data]...", source_name);
    if (const auto* path = base->as_string()) {
        std::filesystem::path file = path->get();
        if (file.is_relative() && !base_directory.empty()) file = std::filesystem::path(base_directory) / file;
        try {
            space.base_text_ = read_file(file, "base spec file");
        } catch (const Error& e) {
            fail("{}: base: {}", where(source_name, *base), e.what());
        }
        space.base_name_ = file.string();
    } else if (const auto* table = base->as_table()) {
        std::ostringstream text;
        text << toml::toml_formatter(*table);
        space.base_text_ = text.str();
        space.base_name_ = fmt::format("{} [base]", source_name);
    } else {
        fail("{}: base: expected a spec file name (a string) or an inline spec table [base.model]..., got {}",
             where(source_name, *base), literal_of(*base));
    }
    try {
        space.base_ = parse_spec(space.base_text_, space.base_name_);
    } catch (const Error& e) {
        fail("{}: base spec is invalid: {}", source_name, e.what());
    }

    const toml::node* vary = root.get("vary");
    LINARCH_CHECK(vary != nullptr, "{}: missing [vary]: list the spec keys that vary, e.g. "
                  "model.mixer.decay = [\"none\", \"scalar\"]", source_name);
    SpaceReader(source_name, space.base_text_, space.base_name_).read_vary(*vary, "", space.fields_);
    LINARCH_CHECK(!space.fields_.empty(), "{}: [vary] names no spec key: the space would hold only its base",
                  where(source_name, *vary));

    if (const toml::node* enqueue = root.get("enqueue")) {
        const toml::array* entries = enqueue->as_array();
        LINARCH_CHECK(entries != nullptr && entries->is_array_of_tables(),
                      "{}: enqueue: expected [[enqueue]] tables of varying keys, got {}", where(source_name, *enqueue),
                      literal_of(*enqueue));
        for (size_t i = 0; i < entries->size(); ++i) {
            const toml::node& entry = *entries->get(i);
            Assignment assignment;
            flatten_assignment(*entry.as_table(), "", assignment);
            const std::string name = fmt::format("{}: [[enqueue]] number {}", where(source_name, entry), i + 1);
            LINARCH_CHECK(!assignment.empty(), "{}: names no key", name);
            for (const auto& [key, literal] : assignment) {
                const bool varies = std::ranges::any_of(space.fields_, [&](const FieldDomain& f) { return f.key == key; });
                LINARCH_CHECK(varies, "{}: {} does not vary in [vary]: hand-picked candidates set varying keys only",
                              name, key);
            }
            try {
                space.realise(assignment);
            } catch (const Error& e) {
                fail("{}: the spec rejects it: {}", name, e.what());
            }
            space.enqueued_.push_back(std::move(assignment));
        }
    }
    return space;
}

const FieldDomain& SearchSpace::field(const std::string& key) const {
    for (const FieldDomain& domain : fields_)
        if (domain.key == key) return domain;
    fail("{}: spec key {} does not vary in this space", source_, key);
}

std::vector<std::string> SearchSpace::overrides(const Assignment& assignment) {
    std::vector<std::string> out;
    for (const auto& [key, value] : assignment) out.push_back(fmt::format("{}={}", key, value));
    return out;
}

Spec SearchSpace::realise(const Assignment& assignment) const {
    return parse_spec(base_text_, base_name_, overrides(assignment));
}

Assignment SearchSpace::assignment_of(const Spec& spec) const {
    const toml::table root = toml::parse(spec_to_toml(spec));
    Assignment out;
    for (const FieldDomain& field : fields_) {
        std::string path = field.key;
        // spec_to_toml writes [model.layers.N] only for overridden layers; the others read the
        // mixer table the layer takes.
        constexpr std::string_view kLayers = "model.layers.";
        if (path.starts_with(kLayers)) {
            const size_t dot = path.find('.', kLayers.size());
            int64_t layer = 0;  // a valid index: parse checked it against the base when reading [vary]
            (void)std::from_chars(path.data() + kLayers.size(), path.data() + dot, layer);
            if (!spec.model.layer_mixers.contains(layer)) {
                const bool hybrid = &spec.model.mixer_of_layer(layer) == &spec.model.hybrid_mixer;
                path = fmt::format("model.{}.{}", hybrid ? "hybrid_mixer" : "mixer", path.substr(dot + 1));
            }
        }
        const toml::node* node = find_node(root, path);
        LINARCH_CHECK(node != nullptr, "{}: spec key {} has no value in the spec given", source_, field.key);
        out[field.key] = literal_of(*node);
    }
    return out;
}

}  // namespace linarch
