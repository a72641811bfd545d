// LASAD: linear attention with spatial-aware decay (mixers.md §9; Mao et al., arXiv 2507.01652). The T
// tokens of each sequence are an image grid of grid_height × grid_width cells flattened in raster order
// (token t sits at row r_t = t / W, column c_t = t % W), and the decay between query i and key j comes
// from their true 2-D distance, not from |i − j|. Per batch row and head h:
//     o_i = scale · Σ_{j ≤ i} (q_i · k_j) D_ij v_j,     D_ij = γ_r^{|r_i − r_j|} · γ_c^{|c_i − c_j|}
// with γ_r = exp(log_decay_row[h]), γ_c = exp(log_decay_col[h]).
// Choices (§9 gives no verified formula; this is its flagged reconstruction, made explicit):
//   - metric: Manhattan distance with one rate per axis and head (γ_r, γ_c); equal rates give RMT's
//     γ^{|Δr|+|Δc|}. A 1 × T grid is exactly RetNet's fixed decay γ_c^{i−j} (a T × 1 grid: γ_r^{i−j}).
//   - causal in raster order (j ≤ i, the token itself included with weight 1): LASADGen generates images
//     token by token, so every earlier row contributes, including its cells to the right of column c_i.
//   - rates: finite log decays ≤ 0, i.e. γ ∈ (0, 1]; data-independent per head, as RetNet's,
//     but differentiable (the backward optionally returns their gradients) so a model may learn them.
//   - no initial / final state in the whole-grid forms: every batch row is one whole grid (an image).
//     Decoding token by token (spatial_decay_attention_step) carries the W column states of the
//     recurrent form below, the current row's scan, and the row's keys and values.
// Three exact forms:
//   parallel: the masked O(T²) definition (scores ⊙ D built from coordinates, then GEMMs), a check.
//   recurrent: O(T·Dk·Dv), the efficient form. D does not fit one 1-D scan (|c_i − c_j| is not monotone
//     along the raster order), but it splits exactly into row and column factors (§9 options (a)+(b)):
//     one Dk×Dv state per column, C[c] = Σ_{rows r' < r} γ_r^{r−r'} Σ_{c'} γ_c^{|c−c'|} k_{r'c'}ᵀ v_{r'c'},
//     decayed by γ_r from row to row and fed by a left-to-right scan (c' ≤ c) plus a right-to-left scan
//     (c' > c) of the row just finished; inside a row a left-to-right scan F(c) = Σ_{c' ≤ c} γ_c^{c−c'} kᵀv.
//     Then o_i = scale · q_i (C[c_i] + F(c_i)).
//   chunkwise: the training form, chunks of R = chunk_rows whole grid rows (the last may be shorter).
//     Inside a chunk 2-D distances are those of the R × W sub-grid, so the intra-chunk part is the masked
//     parallel form on it (GEMMs). Rows above the chunk (top row r₀) enter through W column states
//     Ĉ[c'] = Σ_{r' < r₀} γ_r^{r₀ − r'} k_{r'c'}ᵀ v_{r'c'}: the query at (r, c) adds scale · γ_r^{r − r₀} q M[c]
//     with M[c] = Σ_{c'} γ_c^{|c − c'|} Ĉ[c'] (a left-to-right and a right-to-left scan over the columns);
//     then Ĉ ← γ_r^R Ĉ + Σ_{chunk rows ρ} γ_r^{R − ρ} kᵀv. Every power has exponent in [0, R]: it is
//     exp(λ·n) of a log decay λ ≤ 0, finite for any rate. O(T·(R·W·(Dk+Dv) + Dk·Dv)) per pair.
// Layout as linear attention: q,k [B,T,H,Dk], v,o [B,T,H,Dv], decays [H]; CPU, contiguous, all f32 or
// all f64. The backward adds into its gradients; a null decay gradient is not computed.
#pragma once
#include <cstdint>

#include "core/tensor.hpp"

namespace linarch::ops {

struct SpatialDecayAttentionArgs {
    int64_t grid_height = 0;  // rows; grid_height · grid_width must equal T
    int64_t grid_width = 0;   // columns
    Tensor log_decay_row;     // [H], each in (−∞, 0]: log γ_r
    Tensor log_decay_col;     // [H], each in (−∞, 0]: log γ_c
    double scale = 1.0;       // applied to q
    int64_t chunk_rows = 1;   // the chunkwise form's chunk, in whole grid rows (≥ 1; ≥ grid_height: one chunk)
};

// o [B,T,H,Dv] from q,k [B,T,H,Dk], v [B,T,H,Dv].
void spatial_decay_attention_parallel_forward(Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                                              const SpatialDecayAttentionArgs& args);
void spatial_decay_attention_recurrent_forward(Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const SpatialDecayAttentionArgs& args);
void spatial_decay_attention_chunkwise_forward(Tensor& o, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const SpatialDecayAttentionArgs& args);

// dq,dk [B,T,H,Dk] +=, dv [B,T,H,Dv] +=, dlog_decay_row / dlog_decay_col [H] += when non-null; dout
// [B,T,H,Dv]. The parallel form differentiates the masked definition; the recurrent one runs the column
// scan forward (carrying the decays' tangents when their gradients are wanted) and backward in reverse
// raster order (which preserves 2-D distances, so it is the same scan on flipped coordinates). The
// chunkwise one sweeps the chunks top to bottom for dq and the decays (carrying the column states' tangent
// in γ_r) and bottom to top for dk and dv (carrying the gradient of the column states).
void spatial_decay_attention_parallel_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                                               Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q,
                                               const Tensor& k, const Tensor& v,
                                               const SpatialDecayAttentionArgs& args);
void spatial_decay_attention_recurrent_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                                                Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const SpatialDecayAttentionArgs& args);
void spatial_decay_attention_chunkwise_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dlog_decay_row,
                                                Tensor* dlog_decay_col, const Tensor& dout, const Tensor& q,
                                                const Tensor& k, const Tensor& v,
                                                const SpatialDecayAttentionArgs& args);

// The decode state of one grid: O(W·Dk·Dv), independent of how many tokens were generated.
struct SpatialDecayState {
    Tensor columns;     // [W,H,Dk,Dv]: C[c] (rows above, decayed to this row) plus F(c) once c is visited
    Tensor row_scan;    // [H,Dk,Dv]: F, this row's left-to-right scan up to the last token
    Tensor row_keys;    // [W,H,Dk]: this row's keys and values, for the columns' update at its end
    Tensor row_values;  // [W,H,Dv]
};
SpatialDecayState spatial_decay_attention_initial_state(int64_t heads, int64_t key_dim, int64_t value_dim,
                                                        const SpatialDecayAttentionArgs& args, DType dtype);
// o [1,1,H,Dv] for the token at raster `position` (0 ≤ position < grid_height · grid_width; the state has
// seen positions 0 … position−1) from q,k [1,1,H,Dk], v [1,1,H,Dv]; advances the state. Equals row
// `position` of the whole-grid forms.
void spatial_decay_attention_step(Tensor& o, SpatialDecayState& state, const Tensor& q, const Tensor& k,
                                  const Tensor& v, int64_t position, const SpatialDecayAttentionArgs& args);

}  // namespace linarch::ops
