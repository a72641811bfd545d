// The declarative spec: one TOML file describes model, data, optimiser and run.
// Every field has a default; unknown keys, wrong types and out-of-range values are errors naming
// the file, line, key and what was expected (the valid keys of the table are listed).
#pragma once
#include <cstdint>
#include <map>
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
    // φ on q and k: "identity" | "elu1" | "relu" | "softmax" (over each head's features)
    std::string feature_map = "identity";
    std::string qk_norm = "none";           // "none" | "l2" (L2-normalise q and k per head)
    // "none" | "fixed" (RetNet: γ_h = 1 − 2^(−5−h)) | "scalar" (one per head) | "vector" (one per key
    // channel: GLA) | "spatial" (LASAD: from the 2-D distance on a grid_height × grid_width grid)
    std::string decay = "none";
    // How a scalar or vector decay α is made (mixers.md §5):
    //   "logsigmoid" log α = logsigmoid(x·W + b)/τ (GLA)      "mamba2" log α = −exp(A_log)·softplus(x·W + dt_bias)
    //   "simple"     log α = logsigmoid(x·W + b), b starting at logit(decay_init) (Simple Decay)
    //   "hgrn2"      α = λ_l + (1 − λ_l)·sigmoid(x·W + b), layer l's lower bound λ_l = l / n_layers
    //   "constant"   log α = logsigmoid(b): trainable, data-independent (starts at RetNet's γ_h)
    std::string decay_parameterization = "logsigmoid";
    // Parameter sharing (mixers.md §5): "own" decay weights, or "key": the key is tied to a vector
    // decay, k = 1 − α (HGRN2), and has no projection of its own.
    std::string decay_sharing = "own";
    double gate_temperature = 16.0;         // τ of the logsigmoid parameterisation
    double decay_init = 0.99;               // α at x = 0 for decay_parameterization = "simple"
    int64_t gate_low_rank = 16;             // rank of a vector decay's projection; 0 = full rank
    int64_t grid_height = 0, grid_width = 0;  // decay = "spatial": the token grid (raster order)
    int64_t chunk_size = 64;                // chunkwise form's chunk length (1..1024)
    int64_t conv_size = 4;                  // short causal depthwise conv on q,k,v; 0 = none, else 2..8
    // Head widths relative to model.head_dim (fla's expand_k / expand_v): d_k = head_dim·expand_k,
    // d_v = head_dim·expand_v (GLA: 0.5 and 1; RetNet: 1 and 2).
    double expand_k = 1.0, expand_v = 1.0;
    std::string output_norm = "rmsnorm";    // per head on the mixer output: "none" | "rmsnorm" | "groupnorm"
    std::string output_gate = "none";       // "none" | "sigmoid" | "swish" of a projection of the input
    // Multiplicative position encoding of q and k (GRAPE-M, mixers.md §7.1): "none" | "rope" (canonical
    // planes, log-uniform frequencies) | "grape_planes" (learned commuting planes and frequencies) |
    // "grape_mixture" (learned rank-grape_rank non-commuting generator)
    std::string rotation = "none";
    double rope_base = 10000.0;             // RoPE's base; GRAPE's frequencies start from it
    int64_t grape_rank = 8;
    // Softmax attention only: additive position bias "none" | "alibi" | "fox" (learned forget gate),
    // and a sliding window (0 = full causal).
    std::string position_bias = "none";
    int64_t window = 0;

    int64_t key_dim(int64_t head_dim) const;    // d_k
    int64_t value_dim(int64_t head_dim) const;  // d_v
};

// The softmax-attention layers of a hybrid (Qwen's gated attention by default: RoPE, sigmoid gate).
inline MixerSpec default_hybrid_mixer() {
    MixerSpec mixer;
    mixer.kind = "softmax_attention";
    mixer.conv_size = 0;
    mixer.output_norm = "none";
    mixer.output_gate = "sigmoid";
    mixer.rotation = "rope";
    return mixer;
}

struct ModelSpec {
    int64_t vocab_size = 259;  // the byte tokenizer's: 256 bytes + BOS, EOS, PAD (data/tokenizer.hpp)
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
    // Per-layer overrides ([model.layers.N] tables): the keys a layer sets on top of the mixer it
    // would otherwise take, resolved into that layer's whole MixerSpec.
    std::map<int64_t, MixerSpec> layer_mixers;

    // The mixer layer l (0-based) uses: its override, else the hybrid mixer every hybrid_every-th
    // layer, else mixer.
    const MixerSpec& mixer_of_layer(int64_t layer) const;
};

struct DataSpec {
    std::string corpus = "data/kjv";  // a directory written by `linarch data prepare` (data/corpus.hpp)
    int64_t seq_len = 256;
    int64_t batch_size = 16;
    // "corpus" (the token shards above) or a synthetic probe generated on the fly
    // (data/synthetic_tasks.hpp): "mqar" | "selective_copy" | "induction". The keys below are the
    // probes' parameters; only the chosen task's are checked.
    std::string task = "corpus";
    int64_t task_vocab_size = 256;  // the probe's tokens are [0, task_vocab_size) (Zoology uses 8192)
    int64_t num_kv_pairs = 8;       // mqar: key-value pairs per example
    double power_a = 0.01;          // mqar: query gaps drawn ∝ gap^(power_a − 1); 1 = uniform
    int64_t num_copy_tokens = 16;   // selective_copy: data tokens to copy
};

// Throws an Error naming the data.* keys when data.task's parameters cannot make an example (the
// sequence too short for the task, the vocabulary too small for distinct keys...); nothing for
// "corpus". parse_spec runs it; so does the generator, for DataSpecs built in code.
void check_synthetic_task(const DataSpec& data);

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
