#include "core/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace linarch {

// The format stores little-endian data and tensors are copied byte for byte.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using Json = nlohmann::ordered_json;  // keeps the header in the order the tensors were given

constexpr size_t kLengthBytes = 8;

// An open file descriptor, closed on every path out.
struct FileHandle {
    int fd;
    ~FileHandle() {
        if (fd >= 0) ::close(fd);
    }
};

// Reads exactly `bytes` at `offset`; Error naming the file otherwise.
void read_exact(const FileHandle& file, const std::string& name, void* out, size_t bytes, uint64_t offset) {
    auto* cursor = static_cast<char*>(out);
    while (bytes > 0) {
        const ssize_t got = ::pread(file.fd, cursor, bytes, static_cast<off_t>(offset));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fail("cannot read safetensors file \"{}\": {}", name, std::strerror(errno));
        if (got == 0) fail("{}: unexpected end of file at byte {}", name, offset);
        cursor += got;
        bytes -= static_cast<size_t>(got);
        offset += static_cast<uint64_t>(got);
    }
}

struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;  // byte range within the data section
};

// An array of `count` (or any number, count < 0) non-negative integers; Error naming `where`.
std::vector<uint64_t> unsigned_array(const Json& value, std::string_view where, std::string_view key,
                                     int count) {
    const bool ok = value.is_array() && (count < 0 || value.size() == size_t(count)) &&
                    std::all_of(value.begin(), value.end(), [](const Json& v) { return v.is_number_unsigned(); });
    if (!ok)
        fail("{}: \"{}\": expected an array of {}non-negative integers, got {}", where, key,
             count < 0 ? "" : fmt::format("{} ", count), value.dump());
    std::vector<uint64_t> out;
    for (const Json& v : value) out.push_back(v.get<uint64_t>());
    return out;
}

Entry parse_entry(const std::string& name, const Json& value, const std::string& file) {
    const std::string where = fmt::format("{}: tensor \"{}\"", file, name);
    if (!value.is_object())
        fail("{}: expected an object with dtype, shape and data_offsets, got {}", where, value.dump());
    for (const char* key : {"dtype", "shape", "data_offsets"})
        if (!value.contains(key)) fail("{}: missing \"{}\"", where, key);
    const Json& dtype = value["dtype"];
    if (!dtype.is_string()) fail("{}: \"dtype\": expected a string, got {}", where, dtype.dump());

    Entry entry{name, dtype_from_name(dtype.get<std::string>(), where), {}, 0, 0};
    uint64_t bytes = dtype_size(entry.dtype);
    for (uint64_t size : unsigned_array(value["shape"], where, "shape", -1)) {
        // Sizes beyond int64 (or a product beyond u64) cannot describe data in a real file.
        if (size > uint64_t(INT64_MAX) || __builtin_mul_overflow(bytes, size, &bytes))
            fail("{}: shape {} is too large", where, value["shape"].dump());
        entry.shape.push_back(static_cast<int64_t>(size));
    }
    const std::vector<uint64_t> offsets = unsigned_array(value["data_offsets"], where, "data_offsets", 2);
    entry.begin = offsets[0];
    entry.end = offsets[1];
    if (entry.begin > entry.end)
        fail("{}: data_offsets [{}, {}] are out of order (begin after end)", where, entry.begin, entry.end);
    if (entry.end - entry.begin != bytes)
        fail("{}: data_offsets [{}, {}] span {} bytes but shape {} of {} needs {} bytes", where, entry.begin,
             entry.end, entry.end - entry.begin, shape_string(entry.shape), dtype_name(entry.dtype), bytes);
    return entry;
}

}  // namespace

bool SafetensorsFile::contains(std::string_view name) const {
    return std::any_of(tensors.begin(), tensors.end(), [&](const NamedTensor& t) { return t.name == name; });
}

const Tensor& SafetensorsFile::at(std::string_view name) const {
    for (const NamedTensor& t : tensors)
        if (t.name == name) return t.tensor;
    fail("{}: no tensor named \"{}\" (the file holds {} tensors)", path.string(), name, tensors.size());
}

void save_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    const std::string file = path.string();
    Json header = Json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<Tensor> contents;
    std::set<std::string_view> names;
    uint64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
        LINARCH_CHECK(!name.empty() && name != "__metadata__", "{}: invalid tensor name \"{}\"", file, name);
        LINARCH_CHECK(names.insert(name).second, "{}: tensor \"{}\" is given twice", file, name);
        LINARCH_CHECK(tensor.defined(), "{}: tensor \"{}\" is undefined", file, name);
        LINARCH_CHECK(tensor.device() == Device::cpu, "{}: tensor \"{}\" is on {}; move it to the CPU first",
                      file, name, device_name(tensor.device()));
        contents.push_back(tensor.is_contiguous() ? tensor : tensor.contiguous());
        const uint64_t bytes = contents.back().nbytes();
        header[name] = {{"dtype", std::string(dtype_name(tensor.dtype()))},
                        {"shape", tensor.shape()},
                        {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }

    std::string json = header.dump();
    json.append((kLengthBytes - json.size() % kLengthBytes) % kLengthBytes, ' ');
    const uint64_t header_length = json.size();
    std::string out;
    out.reserve(kLengthBytes + json.size() + offset);
    out.append(reinterpret_cast<const char*>(&header_length), kLengthBytes);
    out += json;
    for (const Tensor& t : contents)
        if (t.nbytes() > 0) out.append(static_cast<const char*>(t.raw_data()), t.nbytes());
    write_file_atomic(path, out);
}

SafetensorsFile load_safetensors(const std::filesystem::path& path) {
    const std::string file = path.string();
    FileHandle handle{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (handle.fd < 0) fail("cannot open safetensors file \"{}\": {}", file, std::strerror(errno));
    struct stat info {};
    if (::fstat(handle.fd, &info) != 0) fail("cannot stat \"{}\": {}", file, std::strerror(errno));
    if (S_ISDIR(info.st_mode)) fail("cannot open safetensors file \"{}\": {}", file, std::strerror(EISDIR));
    const uint64_t file_size = static_cast<uint64_t>(info.st_size);

    if (file_size < kLengthBytes)
        fail("{}: not a safetensors file: {} bytes, shorter than the 8-byte header length", file, file_size);
    uint64_t header_length = 0;
    read_exact(handle, file, &header_length, kLengthBytes, 0);
    if (header_length > file_size - kLengthBytes)
        fail("{}: header length {} goes beyond the end of the file ({} bytes)", file, header_length, file_size);
    std::string header_text(header_length, '\0');
    read_exact(handle, file, header_text.data(), header_length, kLengthBytes);

    Json header;
    try {
        header = Json::parse(header_text);
    } catch (const Json::parse_error& e) {
        fail("{}: invalid JSON header: {}", file, e.what());
    }
    if (!header.is_object()) fail("{}: the header is not a JSON object", file);

    SafetensorsFile result;
    result.path = path;
    const uint64_t data_start = kLengthBytes + header_length;
    std::vector<Entry> entries;
    for (const auto& [name, value] : header.items()) {
        if (name == "__metadata__") {
            if (!value.is_object())
                fail("{}: __metadata__: expected an object of strings, got {}", file, value.dump());
            for (const auto& [key, text] : value.items()) {
                if (!text.is_string())
                    fail("{}: __metadata__ \"{}\": expected a string, got {}", file, key, text.dump());
                result.metadata[key] = text.get<std::string>();
            }
            continue;
        }
        Entry entry = parse_entry(name, value, file);
        if (entry.end > file_size - data_start)
            fail("{}: tensor \"{}\": data ends at byte {} but the file has only {} bytes", file, name,
                 data_start + entry.end, file_size);
        entries.push_back(std::move(entry));
    }

    // The data must be covered exactly: sorted by offset, each tensor starts where the last ended.
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t covered = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
        const Entry& e = entries[i];
        if (e.begin < covered)
            fail("{}: tensor \"{}\": data [{}, {}) overlaps tensor \"{}\" [{}, {})", file, e.name, e.begin, e.end,
                 entries[i - 1].name, entries[i - 1].begin, entries[i - 1].end);
        if (e.begin > covered)
            fail("{}: tensor \"{}\": data starts at offset {} but the previous data ends at {} "
                 "(gaps are not allowed)", file, e.name, e.begin, covered);
        covered = e.end;
    }
    if (covered != file_size - data_start)
        fail("{}: {} bytes after the last tensor's data (the header accounts for {} of {} data bytes)", file,
             file_size - data_start - covered, covered, file_size - data_start);

    for (const Entry& e : entries) {
        Tensor tensor = Tensor::empty(e.shape, e.dtype);
        if (tensor.nbytes() > 0)
            read_exact(handle, file, tensor.raw_data(), tensor.nbytes(), data_start + e.begin);
        result.tensors.push_back({e.name, std::move(tensor)});
    }
    return result;
}

}  // namespace linarch
