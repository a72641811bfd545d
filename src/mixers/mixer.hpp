// The token-mixer interface a block holds: a linear-attention mixer or a softmax-attention mixer
// (the layers of a hybrid), built from one MixerSpec.
#pragma once
#include <memory>
#include <span>
#include <string>

#include "core/parameter.hpp"
#include "core/spec.hpp"
#include "ops/spatial_decay_attention.hpp"

namespace linarch {

// Streaming state of one sequence in one layer. Linear mixers keep a fixed-size state; softmax
// mixers keep a KV cache that grows with the sequence.
struct MixerState {
    int64_t position = 0;   // tokens consumed so far
    Tensor attention;       // linear: [1,H,Dk,Dv] (second order: the query-value moment C)
    Tensor key_moment;      // second order: S [1,H,Dk,Dk]
    Tensor correction;      // second order, masked: G [1,H,Dk,Dv]
    Tensor conv_window[3];  // q, k, v: [K, width]: the last K pre-conv rows
    Tensor keys, values;    // softmax: [capacity, H, D] (first `position` rows used)
    Tensor log_forget;      // softmax with a FoX bias: [capacity, H]
    ops::SpatialDecayState spatial;  // linear with a LASAD decay: the grid's column states

    // A deep copy (tensors included): a fork that evolves independently, or a snapshot to roll back to.
    MixerState clone() const;
};

class Mixer {
public:
    virtual ~Mixer() = default;
    virtual void initialize(uint64_t seed, double input_std, double output_std) = 0;
    // out[N,d] = mixer(x[N,d]) over B sequences of T tokens (N = B·T); keeps what backward needs.
    virtual void forward(Tensor& out, const Tensor& x, int64_t batch, int64_t seq_len) = 0;
    // dx[N,d] += ∂/∂x and parameter gradients += for the last forward.
    virtual void backward(Tensor& dx, const Tensor& dout) = 0;
    virtual MixerState new_state() const = 0;
    // The streaming path: out[T,d] for the next T ≥ 1 tokens x[T,d] of one sequence, advancing the
    // state (T = 1: a decode step; T > 1: a prompt, prefilled in the chunkwise form where the mixer
    // has one). Equal to the training forward over the whole sequence at these positions.
    virtual void step(Tensor& out, const Tensor& x, MixerState& state) const = 0;
    // T tokens for each of G sequences: out[G·T,d] from x[G·T,d], rows [g·T, (g+1)·T) belonging to
    // sequence g and advancing states[g] (T = 1: a decode step of G sequences at any positions; forks
    // of one state: lookahead's verification branches). By default one step per sequence; a mixer may
    // share its projections' weight reads across all G·T rows.
    virtual void step_sequences(Tensor& out, const Tensor& x, std::span<MixerState* const> states) const;
    // Forward FLOPs of the token-mixing core per token at training length seq_len.
    virtual double core_flops_per_token(int64_t seq_len) const = 0;
};

// layer: the mixer's depth (0-based), for designs whose parameters depend on it.
std::unique_ptr<Mixer> make_mixer(const ModelSpec& model, const MixerSpec& mixer, ParameterStore& params,
                                  const std::string& prefix, int64_t layer);

}  // namespace linarch
