#include "data/byte_corpus.hpp"

#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/token_shard.hpp"

namespace linarch {

CorpusSummary prepare_byte_corpus(const std::vector<std::filesystem::path>& inputs,
                                  const std::filesystem::path& out_dir, const ByteCorpusOptions& options) {
    LINARCH_CHECK(!inputs.empty(), "data prepare: no input files given");
    LINARCH_CHECK(options.val_fraction > 0 && options.val_fraction < 1,
                  "data prepare: --val-fraction must be in (0, 1), got {}", options.val_fraction);
    std::vector<int32_t> train, val;
    CorpusSummary summary;
    RngStream split(options.seed, stream_id("corpus-split"));
    nlohmann::json input_list = nlohmann::json::array();
    for (const auto& input : inputs) {
        const std::string text = read_file(input);
        LINARCH_CHECK(!text.empty(), "data prepare: input \"{}\" is empty", input.string());
        input_list.push_back({{"path", input.string()}, {"bytes", text.size()}});
        size_t begin = 0;
        while (begin < text.size()) {
            size_t end = std::min(text.size(), begin + size_t(options.block_bytes));
            const size_t newline = text.find('\n', end);
            end = newline == std::string::npos ? text.size() : newline + 1;
            const bool to_val = split.uniform() < options.val_fraction;
            auto& dest = to_val ? val : train;
            for (size_t i = begin; i < end; ++i) dest.push_back(static_cast<uint8_t>(text[i]));
            ++summary.documents;
            summary.val_documents += to_val;
            begin = end;
        }
    }
    LINARCH_CHECK(!train.empty() && !val.empty(),
                  "data prepare: the split left {} train and {} validation tokens; give more text or change "
                  "--val-fraction", train.size(), val.size());
    std::filesystem::create_directories(out_dir);
    write_token_shard(out_dir / "train.bin", train, 256);
    write_token_shard(out_dir / "val.bin", val, 256);
    summary.train_tokens = int64_t(train.size());
    summary.val_tokens = int64_t(val.size());
    const nlohmann::json manifest = {
        {"format", "linarch-corpus"},       {"version", 1},
        {"tokenizer", "byte"},              {"vocab_size", 256},
        {"inputs", input_list},             {"val_fraction", options.val_fraction},
        {"seed", options.seed},             {"block_bytes", options.block_bytes},
        {"shards", {{"train", {{"file", "train.bin"}, {"tokens", summary.train_tokens}}},
                    {"val", {{"file", "val.bin"}, {"tokens", summary.val_tokens}}}}},
    };
    write_file_atomic(out_dir / "manifest.json", manifest.dump(2) + "\n");
    return summary;
}

}  // namespace linarch
