// Prepared corpora: text inputs (text_input.hpp) → token shards per split and a manifest.
//
// Preparation streams: one thread reads blocks of whole records, worker threads parse and tokenize
// them, and the calling thread writes the blocks in reading order, so memory stays flat in the
// corpus size and the output is byte-identical for any thread count. Every document's tokens are
// followed by the tokenizer's EOS. Document number d (0-based, in input order, skipped records not
// counted) goes to validation when uniform(seed, d) < val_fraction: whole documents, never both.
//
// DIR/manifest.json, written last (a directory without one is not a corpus):
//   { "format": "linarch-corpus", "version": 2,
//     "tokenizer": "byte", "tokenizer_id": "0123456789abcdef", "vocab_size": 259, "eos": 257,
//     "token_bytes": 2, "val_fraction": 0.02, "seed": 1, "text_field": "text",
//     "txt_document_bytes": 16384, "skipped_records": 0,
//     "inputs": [ {"path": "data/kjv.txt", "documents": 263}, ... ],
//     "splits": { "train": { "shards": [ {"file": "train-00000.bin", "tokens": 4212345}, ... ],
//                            "tokens": 4212345, "documents": 258, "bytes": 4212087 },
//                 "val":   { ... } } }
// "bytes" counts the UTF-8 bytes of the split's text (EOS excluded) and "tokens" its tokens (EOS
// included), so bits per byte follow from a loss in nats per token for any tokenizer.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace linarch {

class Tokenizer;

enum class OnError { fail, skip };

struct PrepareOptions {
    std::string tokenizer = "byte";           // "byte" or a SentencePiece .model file
    double val_fraction = 0.02;               // expected share of documents held out
    uint64_t seed = 1;                        // of the train/validation split
    std::string text_field = "text";          // the field of a JSONL record that holds its text
    OnError on_error = OnError::fail;         // a malformed JSONL record: stop, or skip and count it
    int threads = 0;                          // tokenizing threads; 0 = one per core
    int64_t shard_tokens = int64_t(1) << 28;  // a split is cut into shards of at most this many tokens
};

struct SplitInfo {
    struct Shard {
        std::string file;  // relative to the corpus directory
        int64_t tokens = 0;
    };
    std::vector<Shard> shards;
    int64_t tokens = 0, documents = 0, bytes = 0;
    // nats/token → bits/byte: loss / ln 2 · tokens / bytes.
    double bits_per_byte(double nats_per_token) const;
};

struct CorpusManifest {
    std::filesystem::path dir;
    std::string tokenizer;     // its name, as load_tokenizer takes it
    uint64_t tokenizer_id = 0;
    int64_t vocab_size = 0;
    int32_t eos = 0;
    int64_t skipped_records = 0;
    SplitInfo train, val;
    // "train" or "val" (an error naming the manifest otherwise).
    const SplitInfo& split(const std::string& name) const;
    std::filesystem::path path() const { return dir / "manifest.json"; }
};

struct PrepareResult {
    CorpusManifest manifest;
    std::string first_skipped;  // the first skipped record's file, line and fault ("" when none)
};

// Writes DIR/<split>-NNNNN.bin shards and DIR/manifest.json. Any failure (bad input, a split left
// empty, a full disk) removes what this call wrote and leaves no manifest; an older corpus in DIR
// stops being one as soon as preparation starts.
PrepareResult prepare_corpus(const std::vector<std::string>& inputs, const std::filesystem::path& out_dir,
                             const PrepareOptions& options);

// Reads and checks DIR/manifest.json (not the shards: open_corpus_split in loader.hpp does).
CorpusManifest read_corpus_manifest(const std::filesystem::path& dir);

// A fingerprint of what a tokenizer does, independent of where its model file lives: the special
// ids, every id's decoded piece and the ids of a fixed text. Never 0 (a shard's "not recorded").
uint64_t tokenizer_id(const Tokenizer& tokenizer);

}  // namespace linarch
