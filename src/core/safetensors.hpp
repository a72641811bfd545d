// The safetensors format (huggingface/safetensors), used for checkpoints and model files:
//   8 bytes   N, the header length (little-endian u64)
//   N bytes   JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//                    "__metadata__": {"key": "value", ...}}, padded with spaces to a multiple of 8
//   the rest  raw little-endian tensor data; offsets count from the end of the header, and the
//             tensors cover it exactly (no gaps, no overlaps, nothing after the last one)
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.hpp"

namespace linarch {

struct NamedTensor {
    std::string name;
    Tensor tensor;
};

struct SafetensorsFile {
    std::filesystem::path path;                   // where it was loaded from (for messages)
    std::vector<NamedTensor> tensors;             // in the order of their data in the file
    std::map<std::string, std::string> metadata;  // the header's "__metadata__"

    bool contains(std::string_view name) const;
    // The tensor called `name`; Error naming the file and the tensor when there is none.
    const Tensor& at(std::string_view name) const;
};

// Writes CPU tensors (F32, F64, BF16, F16; non-contiguous ones are made contiguous) with their data
// in the order given, atomically (write_file_atomic). Names must be unique and non-empty.
void save_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates a file: every malformed header, offset or size is an Error naming the file
// and, where one is involved, the tensor.
SafetensorsFile load_safetensors(const std::filesystem::path& path);

}  // namespace linarch
