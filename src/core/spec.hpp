// The declarative spec: one TOML file describes model, data, optimiser and run.
// Every field has a default; unknown keys, wrong types and out-of-range values are errors naming
// the file, line, key and what was expected (the valid keys of the table are listed).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace linarch {

// The token mixer's design axes (mixers.md); presets in configs/ set them to published designs.
struct MixerSpec {
    std::string kind = "linear_attention";  // "linear_attention" | "softmax_attention" (for hybrids)
    // State update: "additive" (S ← α·S + kᵀv) | "delta" (DeltaNet: S ← α·(I − β kᵀk)·S + β kᵀv,
    // β = sigmoid(x·W_β); with decay = "scalar" this is Gated DeltaNet)
    std::string update = "additive";
    // 1: first order (S = Σ kᵀv); 2: Higher-order Linear Attention's second-order operator
    // (mixers.md §8), strictly causal when hla_masked.
    int64_t order = 1;
    bool hla_masked = true;
    std::string feature_map = "identity";   // φ on q and k: "identity" | "elu1" | "relu"
    std::string qk_norm = "none";           // "none" | "l2" (L2-normalise q and k per head)
    // "none" | "fixed" (RetNet: γ_h = 1 − 2^(−5−h)) | "scalar" (data-dependent, one per head) |
    // "vector" (data-dependent, one per key channel: GLA)
    std::string decay = "none";
    // How a data-dependent decay is made from the input: "logsigmoid" (log α = logsigmoid(x·W + b)/τ,
    // GLA) | "mamba2" (log α = −exp(A_log)·softplus(x·W + dt_bias), scalar decays only)
    std::string decay_parameterization = "logsigmoid";
    // Parameter sharing (mixers.md §5): "own" decay weights, or "key": the key is tied to a vector
    // decay, k = 1 − α (HGRN2), and has no projection of its own.
    std::string decay_sharing = "own";
    double gate_temperature = 16.0;         // τ of the logsigmoid parameterisation
    int64_t gate_low_rank = 16;             // rank of a vector decay's projection; 0 = full rank
    int64_t chunk_size = 64;                // chunkwise form's chunk length (1..1024)
    int64_t conv_size = 4;                  // short causal depthwise conv on q,k,v; 0 = none, else 2..8
    bool output_norm = true;                // per-head RMSNorm on the mixer output
    std::string output_gate = "none";       // "none" | "sigmoid" | "swish" of a projection of the input
    bool rope = false;                      // rotate q and k by position (RoPE: GRAPE's canonical planes)
    double rope_base = 10000.0;
    // Softmax attention only: additive position bias "none" | "alibi" | "fox" (learned forget gate),
    // and a sliding window (0 = full causal).
    std::string position_bias = "none";
    int64_t window = 0;
};

// The softmax-attention layers of a hybrid (Qwen's gated attention by default: RoPE, sigmoid gate).
inline MixerSpec default_hybrid_mixer() {
    MixerSpec mixer;
    mixer.kind = "softmax_attention";
    mixer.conv_size = 0;
    mixer.output_norm = false;
    mixer.output_gate = "sigmoid";
    mixer.rope = true;
    return mixer;
}

struct ModelSpec {
    int64_t vocab_size = 256;  // byte-level default
    int64_t d_model = 256;
    int64_t n_layers = 4;
    int64_t n_heads = 4;
    int64_t head_dim = 64;     // d_k = d_v per head
    int64_t mlp_hidden = 0;    // SwiGLU hidden width; 0 = round_up(8/3 · d_model, 64)
    double norm_eps = 1e-5;
    double init_std = 0.02;
    MixerSpec mixer;
    // Hybrids: every hybrid_every-th layer (the 4th, 8th, ... for 4) uses hybrid_mixer; 0 = none.
    int64_t hybrid_every = 0;
    MixerSpec hybrid_mixer = default_hybrid_mixer();
};

struct DataSpec {
    std::string corpus = "data/kjv";  // directory holding train.bin and val.bin (uint8 byte tokens)
    int64_t seq_len = 256;
    int64_t batch_size = 16;
};

struct OptimSpec {
    double lr = 3e-3;            // peak learning rate
    double min_lr_ratio = 0.1;   // cosine decays to lr · min_lr_ratio
    int64_t warmup_steps = 50;
    double weight_decay = 0.1;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double grad_clip = 1.0;      // global-norm clipping; 0 = off
    int64_t grad_accum = 1;      // micro-batches per optimiser step
};

struct RunSpec {
    int64_t steps = 1000;
    uint64_t seed = 1;
    int64_t eval_every = 200;       // 0 = only at the end
    int64_t eval_batches = 16;
    int64_t checkpoint_every = 200; // 0 = only at the end
    int64_t log_every = 10;
    int64_t threads = 0;            // 0 = all cores
};

struct Spec {
    ModelSpec model;
    DataSpec data;
    OptimSpec optim;
    RunSpec run;
    std::string source;  // file the spec came from (for messages)
};

// Parses a spec file. `overrides` are "dotted.key=value" strings (the CLI's --set), applied on top
// of the file with the same validation; a bad override names itself in the message.
Spec load_spec(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from text; `source_name` stands in for the file name in messages.
Spec parse_spec(const std::string& text, const std::string& source_name,
                const std::vector<std::string>& overrides = {});
// TOML text that parse_spec reads back to an equal Spec (stored in checkpoints).
std::string spec_to_toml(const Spec& spec);
bool operator==(const Spec& a, const Spec& b);

}  // namespace linarch
