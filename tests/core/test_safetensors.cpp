#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/safetensors.hpp"
#include "support/process.hpp"
#include "support/testkit.hpp"

using namespace linarch;
using testkit::TempDir;
using testkit::error_of;
using testkit::expect_contains;
namespace fs = std::filesystem;

namespace {

std::string raw_bytes(const Tensor& t) {
    const Tensor c = t.contiguous();
    return c.nbytes() ? std::string(static_cast<const char*>(c.raw_data()), c.nbytes()) : std::string();
}

// A file with this exact header text (padded to 8) and data; `length` overrides the length field.
void write_raw(const fs::path& path, std::string header, const std::string& data, int64_t length = -1) {
    header.append((8 - header.size() % 8) % 8, ' ');
    const uint64_t n = length >= 0 ? uint64_t(length) : header.size();
    std::string bytes(reinterpret_cast<const char*>(&n), 8);
    write_file_atomic(path, bytes + header + data);
}

std::vector<std::string> temp_files_in(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) {
        const std::string name = entry.path().filename().string();
        if (name.find(".tmp-") != std::string::npos) names.push_back(name);
    }
    return names;
}

const DType kAllDtypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16};

}  // namespace

TEST(SafetensorsRoundTrip, EveryDtypeAndShapeWithMetadata) {
    TempDir dir;
    const std::vector<Shape> shapes = {{}, {0}, {3, 0, 2}, {1}, {7}, {2, 3}, {4, 5, 6}, {1, 1, 2, 1}};
    std::vector<NamedTensor> tensors;
    uint64_t stream = 1;
    for (DType dtype : kAllDtypes)
        for (const Shape& shape : shapes)
            tensors.push_back({fmt::format("layers.{}.{}", dtype_name(dtype), shape_string(shape)),
                               testkit::random_normal(shape, dtype, stream++)});
    const std::map<std::string, std::string> metadata = {
        {"format", "linarch"}, {"spec", "[model]\nd_model = 64\n"}, {"empty", ""}, {"ünï \"q\"", "\\"}};
    const fs::path path = dir.path() / "model.safetensors";
    save_safetensors(path, tensors, metadata);

    const SafetensorsFile file = load_safetensors(path);
    EXPECT_EQ(file.path, path);
    EXPECT_EQ(file.metadata, metadata);
    ASSERT_EQ(file.tensors.size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const NamedTensor& loaded = file.tensors[i];
        SCOPED_TRACE(loaded.name);
        EXPECT_EQ(loaded.name, tensors[i].name);  // file order is the order given
        EXPECT_EQ(loaded.tensor.dtype(), tensors[i].tensor.dtype());
        EXPECT_EQ(loaded.tensor.shape(), tensors[i].tensor.shape());
        EXPECT_TRUE(loaded.tensor.is_contiguous());
        EXPECT_EQ(raw_bytes(loaded.tensor), raw_bytes(tensors[i].tensor));
        EXPECT_TRUE(file.contains(loaded.name));
        EXPECT_EQ(file.at(loaded.name).to_vector(), tensors[i].tensor.to_vector());
    }
    EXPECT_FALSE(file.contains("nope"));
    expect_contains(error_of([&] { file.at("nope"); }), {path.string(), "\"nope\""});
}

TEST(SafetensorsRoundTrip, NonContiguousTensorsAndEmptyFiles) {
    TempDir dir;
    const Tensor base = testkit::random_normal({4, 6, 5}, DType::f32, 40);
    const std::vector<NamedTensor> views = {{"transposed", base.transpose(0, 2)},
                                            {"narrowed", base.narrow(1, 2, 3)},
                                            {"selected", base.select(2, 4)}};
    const fs::path path = dir.path() / "views.safetensors";
    save_safetensors(path, views);
    const SafetensorsFile file = load_safetensors(path);
    EXPECT_TRUE(file.metadata.empty());
    for (const NamedTensor& view : views) {
        EXPECT_EQ(file.at(view.name).shape(), view.tensor.shape()) << view.name;
        EXPECT_EQ(file.at(view.name).to_vector(), view.tensor.to_vector()) << view.name;
    }

    save_safetensors(dir.path() / "empty.safetensors", {});
    const SafetensorsFile empty = load_safetensors(dir.path() / "empty.safetensors");
    EXPECT_TRUE(empty.tensors.empty());
    EXPECT_TRUE(empty.metadata.empty());
}

TEST(SafetensorsFormat, HeaderLayoutFollowsTheSpec) {
    TempDir dir;
    const std::vector<NamedTensor> tensors = {
        {"z.first", testkit::random_normal({3, 5}, DType::f32, 50)},
        {"a.second", testkit::random_normal({7}, DType::bf16, 51)},
        {"m.third", testkit::random_normal({}, DType::f64, 52)},
        {"b.fourth", testkit::random_normal({2, 0}, DType::f16, 53)},
        {"c.fifth", testkit::random_normal({3}, DType::f16, 54)},
    };
    const fs::path path = dir.path() / "layout.safetensors";
    save_safetensors(path, tensors, {{"step", "12"}});
    const std::string bytes = read_file(path);

    ASSERT_GE(bytes.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[size_t(i)]);  // little-endian
    ASSERT_LE(8 + n, bytes.size());
    EXPECT_EQ((8 + n) % 8, 0u);
    const std::string header_text = bytes.substr(8, n);
    const size_t json_end = header_text.find_last_not_of(' ') + 1;
    EXPECT_EQ(header_text.substr(0, json_end).back(), '}');
    EXPECT_LT(header_text.size() - json_end, 8u);  // at most 7 spaces of padding
    const auto header = nlohmann::ordered_json::parse(header_text);
    ASSERT_TRUE(header.is_object());
    EXPECT_EQ(header["__metadata__"], nlohmann::ordered_json({{"step", "12"}}));

    // Entries in the order given, with offsets laid end to end from 0 to the end of the file.
    std::vector<std::string> names;
    for (const auto& [name, value] : header.items())
        if (name != "__metadata__") names.push_back(name);
    ASSERT_EQ(names.size(), tensors.size());
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
        const auto& entry = header[tensors[i].name];
        EXPECT_EQ(names[i], tensors[i].name);
        EXPECT_EQ(entry["dtype"], std::string(dtype_name(tensors[i].tensor.dtype())));
        EXPECT_EQ(entry["shape"].get<Shape>(), tensors[i].tensor.shape());
        const auto offsets = entry["data_offsets"].get<std::vector<uint64_t>>();
        ASSERT_EQ(offsets.size(), 2u);
        EXPECT_EQ(offsets[0], offset);
        EXPECT_EQ(offsets[1] - offsets[0], tensors[i].tensor.nbytes());
        EXPECT_EQ(bytes.substr(8 + n + offsets[0], offsets[1] - offsets[0]), raw_bytes(tensors[i].tensor));
        offset = offsets[1];
    }
    EXPECT_EQ(8 + n + offset, bytes.size());
    EXPECT_EQ(std::string(dtype_name(DType::bf16)), "BF16");
}

TEST(SafetensorsCorruption, ShortFilesAndBadHeadersNameTheFile) {
    TempDir dir;
    const fs::path path = dir.path() / "bad.safetensors";
    const std::string file = path.string();
    auto load_error = [&] { return error_of([&] { load_safetensors(path); }); };

    write_file_atomic(path, "abc");
    expect_contains(load_error(), {file, "3 bytes", "shorter than the 8-byte header length"});

    write_raw(path, "{}", "", 1000);
    expect_contains(load_error(), {file, "header length 1000", "beyond the end of the file (16 bytes)"});

    write_raw(path, "{\"a\": {\"dtype\": ", "");
    expect_contains(load_error(), {file, "invalid JSON header"});

    write_raw(path, "[1, 2]", "");
    expect_contains(load_error(), {file, "not a JSON object"});

    write_raw(path, R"({"__metadata__": {"k": 3}})", "");
    expect_contains(load_error(), {file, "__metadata__", "\"k\"", "expected a string"});

    expect_contains(error_of([&] { load_safetensors(dir.path() / "missing.safetensors"); }),
                    {(dir.path() / "missing.safetensors").string(), "No such file or directory"});
}

TEST(SafetensorsCorruption, BadTensorEntriesNameFileAndTensor) {
    TempDir dir;
    const fs::path path = dir.path() / "bad.safetensors";
    const std::string file = path.string();
    const std::string eight_bytes(8, '\x01');
    struct Case {
        std::string header;
        std::vector<std::string> expected;
    };
    const Case cases[] = {
        {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", {"tensor \"w\"", "missing \"dtype\""}},
        {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", {"tensor \"w\"", "missing \"shape\""}},
        {R"({"w": {"dtype": "F32", "shape": [2]}})", {"tensor \"w\"", "missing \"data_offsets\""}},
        {R"({"w": 5})", {"tensor \"w\"", "expected an object"}},
        {R"({"w": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})",
         {"tensor \"w\"", "unsupported dtype \"I32\""}},
        {R"({"w": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}})", {"tensor \"w\"", "\"dtype\""}},
        {R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})",
         {"tensor \"w\"", "\"shape\"", "non-negative integers"}},
        {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})",
         {"tensor \"w\"", "\"data_offsets\"", "2 non-negative integers"}},
        {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})",
         {"tensor \"w\"", "data_offsets [0, 4] span 4 bytes but shape [2] of F32 needs 8 bytes"}},
        {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", {"tensor \"w\"", "out of order"}},
        {R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}})",
         {"tensor \"w\"", "too large"}},
        {R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
         {"tensor \"w\": data ends at byte 88 but the file has only 80 bytes"}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})",
         {"tensor \"b\"", "overlaps tensor \"a\""}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
         {"tensor \"a\"", "starts at offset 4", "gaps"}},
        {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
         {"4 bytes after the last tensor's data"}},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.header);
        write_raw(path, c.header, eight_bytes);
        const std::string message = error_of([&] { load_safetensors(path); });
        expect_contains(message, {file});
        for (const std::string& part : c.expected) expect_contains(message, {part});
    }
}

TEST(SafetensorsCorruption, TruncatedFileNamesTheTensorWhoseDataIsMissing) {
    TempDir dir;
    const fs::path path = dir.path() / "cut.safetensors";
    save_safetensors(path, {{"first", testkit::random_normal({4}, DType::f32, 60)},
                            {"second", testkit::random_normal({3}, DType::f64, 61)}});
    const uint64_t full = fs::file_size(path);
    fs::resize_file(path, full - 5);
    expect_contains(error_of([&] { load_safetensors(path); }),
                    {path.string(), fmt::format("tensor \"second\": data ends at byte {} but the file has only {} bytes",
                                                full, full - 5)});
}

TEST(SafetensorsAtomic, FailedSavesLeaveTheTargetAndNoTemporaryFiles) {
    TempDir dir;
    const fs::path path = dir.path() / "ckpt.safetensors";
    const Tensor a = testkit::random_normal({3, 4}, DType::f32, 70);
    const Tensor b = testkit::random_normal({5}, DType::bf16, 71);
    save_safetensors(path, {{"a", a}});
    const std::string before = read_file(path);

    // Invalid requests are refused before anything is written.
    expect_contains(error_of([&] { save_safetensors(path, {{"a", a}, {"a", b}}); }),
                    {path.string(), "tensor \"a\" is given twice"});
    expect_contains(error_of([&] { save_safetensors(path, {{"", a}}); }), {path.string(), "invalid tensor name"});
    expect_contains(error_of([&] { save_safetensors(path, {{"undefined", Tensor()}}); }),
                    {path.string(), "\"undefined\" is undefined"});
    EXPECT_EQ(read_file(path), before);

    // A write into a missing directory fails and creates nothing.
    const fs::path missing = dir.path() / "missing" / "ckpt.safetensors";
    expect_contains(error_of([&] { save_safetensors(missing, {{"a", a}}); }),
                    {missing.string(), "No such file or directory"});
    EXPECT_FALSE(fs::exists(dir.path() / "missing"));
    EXPECT_TRUE(temp_files_in(dir.path()).empty());

    // A successful save replaces the old content.
    save_safetensors(path, {{"b", b}}, {{"step", "2"}});
    const SafetensorsFile file = load_safetensors(path);
    ASSERT_EQ(file.tensors.size(), 1u);
    EXPECT_EQ(file.tensors[0].name, "b");
    EXPECT_EQ(raw_bytes(file.tensors[0].tensor), raw_bytes(b));
    EXPECT_EQ(file.metadata.at("step"), "2");
    EXPECT_TRUE(temp_files_in(dir.path()).empty());
}
