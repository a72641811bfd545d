// CPU causal linear attention: recurrent form, parallel form, and the chunkwise form with its backward
// for a decay that is one number per step (none, fixed per head, scalar gate); the vector gate's
// chunkwise form lives in linear_attention_gated.cpp.
// Notation (mixers.md §2-3, per sequence and head): chunk of L ≤ C rows starting at t0, position i in
// the chunk, Γ_i = Σ of g over the chunk's rows 0..i, S_prev the state before the chunk.
//     scores  P = scale · Q Kᵀ ⊙ D,   D_ij = exp(Γ_i − Γ_j) for i ≥ j, else 0
//     output  O = P V + scale · diag(exp(Γ_i)) Q S_prev
//     state   S = exp(Γ_{L−1}) S_prev + Kᵀ diag(exp(Γ_{L−1} − Γ_i)) V
// (a fixed decay γ gives Γ_i = (i+1) log γ: RetNet's γ^(i−j), γ^(i+1), γ^(L−1−i)).
// Every (sequence, head) slice of a [B,T,H,D] tensor is a [L,D] matrix with leading dimension H·D, so
// BLAS reads and writes the tensors in place: no gather into scratch is needed.
#include "backend/cpu/linear_attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/linear_attention_internal.hpp"

namespace linarch::cpu {
namespace {

using detail::gate_ld;
using detail::gemm;
using detail::Slice;
using detail::slice_of;
using detail::worth_threads;

// decay_m1[c] = exp(g_t[c]) − 1 for one step t of a slice (the same for every c unless the gate is a
// vector). The recurrent form updates S += (exp(g) − 1)·S + kᵀv: a weak decay such as α = 1 − 1e−7
// rounds to 1 − 1.19e−7 in float, a bias that compounds over thousands of steps, while expm1(g) is
// accurate to the last bit.
template <typename T>
void step_decay_m1(std::vector<T>& decay_m1, const LogGate<T>& gate, const Slice& s, int64_t t, int64_t ld) {
    switch (gate.kind) {
    case GateKind::none: std::fill(decay_m1.begin(), decay_m1.end(), T(0)); break;
    case GateKind::fixed:
        std::fill(decay_m1.begin(), decay_m1.end(), T(std::expm1(double(gate.values[s.head]))));
        break;
    case GateKind::scalar:
        std::fill(decay_m1.begin(), decay_m1.end(), T(std::expm1(double(gate.values[s.gate + t * ld]))));
        break;
    case GateKind::vector:
        for (size_t c = 0; c < decay_m1.size(); ++c)
            decay_m1[c] = T(std::expm1(double(gate.values[s.gate + t * ld + int64_t(c)])));
        break;
    }
}

// Decay factors of one chunk of L rows when the decay is one number per step (mixers.md §3, SSD):
//   into_row[i] = exp(Γ_i)            how much S_prev has decayed when row i reads it
//   to_end[i]   = exp(Γ_{L−1} − Γ_i)  how much row i's kᵀv decays before the chunk ends
//   whole       = exp(Γ_{L−1})
//   apply_mask  scores_ij ⊙= exp(Γ_i − Γ_j) for i ≥ j, 0 above the diagonal
// A fixed decay reads γ^n = exp(n·log γ) from a table: one rounding per factor and no exp in the hot
// loop. A gate takes the chunk-local cumsum in double (a float sum of 64 terms near −13.8 would cost
// ~1e-5 of the exponents' precision) and exponentiates only Γ values and differences that are ≤ 0.
template <typename T> class ScalarChunkDecay {
public:
    ScalarChunkDecay(const LogGate<T>& gate, int64_t chunk)
        : gate_(gate), powers_(size_t(chunk + 1), T(1)), cumsum_(size_t(chunk)), into_row_(size_t(chunk)),
          to_end_(size_t(chunk)) {}

    // The head's powers γ^n, n = 0..C (all 1 without decay; unused with a gate).
    void set_head(int64_t head) {
        if (gate_.kind != GateKind::fixed) return;
        const double log_gamma = double(gate_.values[head]);
        for (size_t n = 0; n < powers_.size(); ++n) powers_[n] = T(std::exp(log_gamma * double(n)));
    }

    // gate_rows: the scalar gate at the chunk's row 0, rows ld apart (null unless the gate is scalar).
    void set_chunk(int64_t rows, const T* gate_rows, int64_t ld) {
        rows_ = rows;
        if (gate_.kind == GateKind::scalar) {
            double sum = 0;
            for (int64_t i = 0; i < rows; ++i) cumsum_[size_t(i)] = sum += double(gate_rows[i * ld]);
            for (int64_t i = 0; i < rows; ++i) {
                into_row_[size_t(i)] = T(std::exp(cumsum_[size_t(i)]));
                to_end_[size_t(i)] = T(std::exp(sum - cumsum_[size_t(i)]));
            }
            whole_ = T(std::exp(sum));
        } else {
            for (int64_t i = 0; i < rows; ++i) {
                into_row_[size_t(i)] = powers_[size_t(i + 1)];
                to_end_[size_t(i)] = powers_[size_t(rows - 1 - i)];
            }
            whole_ = powers_[size_t(rows)];
        }
    }

    T into_row(int64_t i) const { return into_row_[size_t(i)]; }
    T to_end(int64_t i) const { return to_end_[size_t(i)]; }
    T whole() const { return whole_; }

    // scores[L,L] (leading dim ld) ⊙= D: causal mask and decay in one pass.
    void apply_mask(T* scores, int64_t ld) const {
        for (int64_t i = 0; i < rows_; ++i) {
            T* row = scores + i * ld;
            if (gate_.kind == GateKind::scalar) {
                const double gi = cumsum_[size_t(i)];
                for (int64_t j = 0; j <= i; ++j) row[j] *= T(std::exp(gi - cumsum_[size_t(j)]));
            } else {
                for (int64_t j = 0; j <= i; ++j) row[j] *= powers_[size_t(i - j)];
            }
            for (int64_t j = i + 1; j < rows_; ++j) row[j] = T(0);
        }
    }

private:
    const LogGate<T>& gate_;
    std::vector<T> powers_;
    std::vector<double> cumsum_;
    std::vector<T> into_row_, to_end_;
    T whole_ = T(1);
    int64_t rows_ = 0;
};

// dst[L,D] = diag(factor(i)) · src[L,D] (src leading dim ld_src, dst contiguous).
template <typename T, typename Factor>
void scale_rows(T* dst, const T* src, int64_t rows, int64_t cols, int64_t ld_src, Factor factor) {
    for (int64_t i = 0; i < rows; ++i) {
        const T f = factor(i);
        for (int64_t c = 0; c < cols; ++c) dst[i * cols + c] = f * src[i * ld_src + c];
    }
}

// Per-thread scratch for one chunk, sized once per thread. dq/dk_local hold a chunk's own gradient
// when the gate's gradient needs it separately from what the caller's buffers already hold.
template <typename T> struct ChunkScratch {
    ChunkScratch(int64_t chunk, int64_t key_dim, int64_t value_dim, bool local_grads)
        : scores(size_t(chunk * chunk)), dscores(size_t(chunk * chunk)), k_decayed(size_t(chunk * key_dim)),
          v_decayed(size_t(chunk * value_dim)), dout_decayed(size_t(chunk * value_dim)),
          dq_local(local_grads ? size_t(chunk * key_dim) : 0), dk_local(local_grads ? size_t(chunk * key_dim) : 0) {}
    std::vector<T> scores, dscores, k_decayed, v_decayed, dout_decayed, dq_local, dk_local;
};

// S[Dk,Dv] = exp(Γ_{L−1}) S + k_cᵀ (v_c ⊙ exp(Γ_{L−1} − Γ_i)): the state after a chunk of L rows
// (v_decayed is scratch).
template <typename T>
void advance_state(T* state, const T* k_chunk, const T* v_chunk, int64_t rows, const LinearAttentionDims& d,
                   const ScalarChunkDecay<T>& decay, T* v_decayed) {
    scale_rows(v_decayed, v_chunk, rows, d.value_dim, d.heads * d.value_dim,
               [&](int64_t i) { return decay.to_end(i); });
    gemm<T>(true, false, d.key_dim, d.value_dim, rows, T(1), k_chunk, d.heads * d.key_dim, v_decayed, d.value_dim,
            decay.whole(), state, d.value_dim);
}

template <typename T> const T* scalar_gate_rows(const LogGate<T>& gate, const Slice& s, int64_t t0, int64_t ld) {
    return gate.kind == GateKind::scalar ? gate.values + s.gate + t0 * ld : nullptr;
}

}  // namespace

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [N,H,Dk,Dv]
template <typename T>
void linear_attention_recurrent_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const LogGate<T>& gate, double scale,
                                        const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t g_ld = gate_ld(d, gate.kind);
#pragma omp parallel for schedule(static) if (worth_threads(d))
    for (int64_t pair = 0; pair < d.num_seqs * d.heads; ++pair) {
        const Slice s = slice_of(d, pair, gate.kind);
        std::vector<T> state(static_cast<size_t>(Dk * Dv), T(0)), decay_m1(static_cast<size_t>(Dk));
        if (initial_state) std::copy_n(initial_state + s.state, Dk * Dv, state.begin());
        for (int64_t t = 0; t < s.length; ++t) {
            const T* qt = q + s.qk + t * q_ld;
            const T* kt = k + s.qk + t * q_ld;
            const T* vt = v + s.vo + t * v_ld;
            T* ot = out + s.vo + t * v_ld;
            std::fill_n(ot, Dv, T(0));
            step_decay_m1(decay_m1, gate, s, t, g_ld);
            // S = Diag(exp(g_t)) S + k_tᵀ v_t, then o_t = scale · q_t S, fused row by row of S.
            for (int64_t c = 0; c < Dk; ++c) {
                T* row = state.data() + c * Dv;
                const T kc = kt[c], qc = T(scale) * qt[c], alpha_m1 = decay_m1[size_t(c)];
                for (int64_t j = 0; j < Dv; ++j) {
                    row[j] += alpha_m1 * row[j] + kc * vt[j];
                    ot[j] += qc * row[j];
                }
            }
        }
        if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + s.state);
    }
}

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [N,H,Dk,Dv]. G is the inclusive cumsum of g over the
// sequence in double, one column per key channel (one column for every other decay); each pair
// weight exp(G_i − G_j), i ≥ j, has a non-positive exponent.
template <typename T>
void linear_attention_parallel_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                       const T* initial_state, const LogGate<T>& gate, double scale,
                                       const LinearAttentionDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t g_ld = gate_ld(d, gate.kind);
    const int64_t width = gate.kind == GateKind::vector ? Dk : 1;  // columns of G
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(d))
    for (int64_t pair = 0; pair < d.num_seqs * d.heads; ++pair) {
        const Slice s = slice_of(d, pair, gate.kind);
        const int64_t L = s.length;
        std::vector<double> G(static_cast<size_t>(L * width), 0.0), acc(static_cast<size_t>(Dv));
        for (int64_t t = 0; t < L; ++t)
            for (int64_t c = 0; c < width; ++c) {
                double g = 0;
                if (gate.kind == GateKind::fixed) g = double(gate.values[s.head]);
                else if (gate.kind != GateKind::none) g = double(gate.values[s.gate + t * g_ld + c]);
                G[size_t(t * width + c)] = (t > 0 ? G[size_t((t - 1) * width + c)] : 0.0) + g;
            }
        auto cum = [&](int64_t t, int64_t c) { return G[size_t(t * width + (width == 1 ? 0 : c))]; };
        const T* s0 = initial_state ? initial_state + s.state : nullptr;
        for (int64_t i = 0; i < L; ++i) {
            const T* qi = q + s.qk + i * q_ld;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t j = 0; j <= i; ++j) {
                const T* kj = k + s.qk + j * q_ld;
                const T* vj = v + s.vo + j * v_ld;
                double score = 0;
                if (width == 1) {
                    for (int64_t c = 0; c < Dk; ++c) score += double(qi[c]) * double(kj[c]);
                    score *= std::exp(cum(i, 0) - cum(j, 0));
                } else {
                    for (int64_t c = 0; c < Dk; ++c)
                        score += double(qi[c]) * double(kj[c]) * std::exp(cum(i, c) - cum(j, c));
                }
                for (int64_t e = 0; e < Dv; ++e) acc[size_t(e)] += score * double(vj[e]);
            }
            if (s0)
                for (int64_t c = 0; c < Dk; ++c) {
                    const double qc = double(qi[c]) * std::exp(cum(i, c));
                    for (int64_t e = 0; e < Dv; ++e) acc[size_t(e)] += qc * double(s0[c * Dv + e]);
                }
            T* oi = out + s.vo + i * v_ld;
            for (int64_t e = 0; e < Dv; ++e) oi[e] = T(scale * acc[size_t(e)]);
        }
        if (!final_state) continue;
        T* sf = final_state + s.state;
        for (int64_t c = 0; c < Dk; ++c)
            for (int64_t e = 0; e < Dv; ++e) {
                double sum = s0 ? std::exp(cum(L - 1, c)) * double(s0[c * Dv + e]) : 0.0;
                for (int64_t j = 0; j < L; ++j)
                    sum += std::exp(cum(L - 1, c) - cum(j, c)) * double(k[s.qk + j * q_ld + c]) *
                           double(v[s.vo + j * v_ld + e]);
                sf[c * Dv + e] = T(sum);
            }
    }
}

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [N,H,Dk,Dv]
template <typename T>
void linear_attention_chunkwise_forward(T* out, T* final_state, const T* q, const T* k, const T* v,
                                        const T* initial_state, const LogGate<T>& gate, double scale,
                                        int64_t chunk_size, const LinearAttentionDims& d) {
    if (gate.kind == GateKind::vector)
        return detail::gated_chunkwise_forward(out, final_state, q, k, v, initial_state, gate.values, scale,
                                               chunk_size, d);
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t g_ld = gate_ld(d, gate.kind);
    const int64_t C = std::min(chunk_size, d.seq_len);
#pragma omp parallel if (worth_threads(d))
    {
        ChunkScratch<T> scratch(C, Dk, Dv, false);
        ScalarChunkDecay<T> decay(gate, C);
        std::vector<T> state(static_cast<size_t>(Dk * Dv));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < d.num_seqs * d.heads; ++pair) {
            const Slice s = slice_of(d, pair, gate.kind);
            decay.set_head(s.head);
            if (initial_state) std::copy_n(initial_state + s.state, Dk * Dv, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t t0 = 0; t0 < s.length; t0 += C) {
                const int64_t L = std::min(C, s.length - t0);
                decay.set_chunk(L, scalar_gate_rows(gate, s, t0, g_ld), g_ld);
                const T* qc = q + s.qk + t0 * q_ld;
                const T* kc = k + s.qk + t0 * q_ld;
                const T* vc = v + s.vo + t0 * v_ld;
                T* oc = out + s.vo + t0 * v_ld;
                // Inter-chunk: O = scale · diag(exp(Γ_i)) Q S_prev (row i has decayed by Γ_i since S_prev).
                gemm<T>(false, false, L, Dv, Dk, T(scale), qc, q_ld, state.data(), Dv, T(0), oc, v_ld);
                for (int64_t i = 0; i < L; ++i) {
                    const T f = decay.into_row(i);
                    for (int64_t j = 0; j < Dv; ++j) oc[i * v_ld + j] *= f;
                }
                // Intra-chunk: O += (scale · Q Kᵀ ⊙ D) V.
                T* scores = scratch.scores.data();
                gemm<T>(false, true, L, L, Dk, T(scale), qc, q_ld, kc, q_ld, T(0), scores, C);
                decay.apply_mask(scores, C);
                gemm<T>(false, false, L, Dv, L, T(1), scores, C, vc, v_ld, T(1), oc, v_ld);
                advance_state(state.data(), kc, vc, L, d, decay, scratch.v_decayed.data());
            }
            if (final_state) std::copy_n(state.begin(), Dk * Dv, final_state + s.state);
        }
    }
}

// Gradients, per chunk walked from last to first with dS = ∂loss/∂S (state after the chunk):
//   dP = (dO Vᵀ) ⊙ D                       dV += Pᵀ dO + diag(exp(Γ_{L−1} − Γ_i)) K dS
//   dQ += scale · (dP K + diag(exp(Γ_i)) dO S_prevᵀ)
//   dK += scale · dPᵀ Q + diag(exp(Γ_{L−1} − Γ_i)) V dSᵀ
//   dS_prev = exp(Γ_{L−1}) dS + scale · Qᵀ diag(exp(Γ_i)) dO
// Gate gradient (scalar gate): with G_t the cumulative log decay, q and k enter only as q_t exp(G_t)
// and k_t exp(−G_t) (up to the final state's exp(G_T) factor), so ∂loss/∂G_t = q_t·dq_t − k_t·dk_t
// (+ Σ dS_T ⊙ S_T at the last token), and dg_t = Σ_{u ≥ t} ∂loss/∂G_u: a reverse cumsum within the
// sequence (fla's chunk_simple_gla backward). The sweep runs backwards, so it accumulates as it goes.
// The states S_prev are recomputed by a forward sweep and kept ([T/C, Dk, Dv] per thread), so the
// backward sweep is one pass with every term of a chunk together.
template <typename T>
void linear_attention_chunkwise_backward(T* dq, T* dk, T* dv, T* dinitial_state, T* dlog_gate, const T* dout,
                                         const T* dfinal_state, const T* q, const T* k, const T* v,
                                         const T* initial_state, const LogGate<T>& gate, double scale,
                                         int64_t chunk_size, const LinearAttentionDims& d) {
    if (gate.kind == GateKind::vector)
        return detail::gated_chunkwise_backward(dq, dk, dv, dinitial_state, dlog_gate, dout, dfinal_state, q, k, v,
                                                initial_state, gate.values, scale, chunk_size, d);
    const int64_t Dk = d.key_dim, Dv = d.value_dim, q_ld = d.heads * Dk, v_ld = d.heads * Dv;
    const int64_t g_ld = gate_ld(d, gate.kind);
    const int64_t C = std::min(chunk_size, d.seq_len);
    const int64_t max_chunks = (d.seq_len + C - 1) / C;
    const int64_t state_size = Dk * Dv;
    const bool gate_grad = gate.kind == GateKind::scalar && dlog_gate;
#pragma omp parallel if (worth_threads(d))
    {
        ChunkScratch<T> scratch(C, Dk, Dv, gate_grad);
        ScalarChunkDecay<T> decay(gate, C);
        std::vector<T> states(static_cast<size_t>(max_chunks * state_size));  // states[n] = S before chunk n
        std::vector<T> dstate(static_cast<size_t>(state_size));
        std::vector<T> state(static_cast<size_t>(state_size));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pair = 0; pair < d.num_seqs * d.heads; ++pair) {
            const Slice s = slice_of(d, pair, gate.kind);
            const int64_t num_chunks = (s.length + C - 1) / C;
            decay.set_head(s.head);

            // Forward sweep: the state each chunk reads (and the final state for the gate gradient).
            if (initial_state) std::copy_n(initial_state + s.state, state_size, state.begin());
            else std::fill(state.begin(), state.end(), T(0));
            for (int64_t n = 0; n < num_chunks; ++n) {
                const int64_t t0 = n * C, L = std::min(C, s.length - t0);
                std::copy(state.begin(), state.end(), states.begin() + n * state_size);
                if (n + 1 < num_chunks || gate_grad) {
                    decay.set_chunk(L, scalar_gate_rows(gate, s, t0, g_ld), g_ld);
                    advance_state(state.data(), k + s.qk + t0 * q_ld, v + s.vo + t0 * v_ld, L, d, decay,
                                  scratch.v_decayed.data());
                }
            }

            // Backward sweep. gate_acc = Σ_{u > current row} ∂loss/∂G_u.
            if (dfinal_state) std::copy_n(dfinal_state + s.state, state_size, dstate.begin());
            else std::fill(dstate.begin(), dstate.end(), T(0));
            double gate_acc = 0;
            if (gate_grad)
                for (int64_t i = 0; i < state_size; ++i)
                    gate_acc += double(dstate[size_t(i)]) * double(state[size_t(i)]);
            for (int64_t n = num_chunks - 1; n >= 0; --n) {
                const int64_t t0 = n * C, L = std::min(C, s.length - t0);
                decay.set_chunk(L, scalar_gate_rows(gate, s, t0, g_ld), g_ld);
                const T *qc = q + s.qk + t0 * q_ld, *kc = k + s.qk + t0 * q_ld;
                const T *vc = v + s.vo + t0 * v_ld, *doc = dout + s.vo + t0 * v_ld;
                T* dvc = dv + s.vo + t0 * v_ld;
                // With a gate gradient, the chunk's dq/dk go to scratch first (see below).
                T* dqc = gate_grad ? scratch.dq_local.data() : dq + s.qk + t0 * q_ld;
                T* dkc = gate_grad ? scratch.dk_local.data() : dk + s.qk + t0 * q_ld;
                const int64_t dqk_ld = gate_grad ? Dk : q_ld;
                if (gate_grad) {
                    std::fill_n(dqc, L * Dk, T(0));
                    std::fill_n(dkc, L * Dk, T(0));
                }
                const T* state_prev = states.data() + n * state_size;
                T *scores = scratch.scores.data(), *dscores = scratch.dscores.data();

                // Intra-chunk term O = P V with P = scale · Q Kᵀ ⊙ D (recomputed, not stored).
                gemm<T>(false, true, L, L, Dk, T(scale), qc, q_ld, kc, q_ld, T(0), scores, C);
                decay.apply_mask(scores, C);
                gemm<T>(false, true, L, L, Dv, T(1), doc, v_ld, vc, v_ld, T(0), dscores, C);
                decay.apply_mask(dscores, C);
                gemm<T>(true, false, L, Dv, L, T(1), scores, C, doc, v_ld, T(1), dvc, v_ld);
                gemm<T>(false, false, L, Dk, L, T(scale), dscores, C, kc, q_ld, T(1), dqc, dqk_ld);
                gemm<T>(true, false, L, Dk, L, T(scale), dscores, C, qc, q_ld, T(1), dkc, dqk_ld);

                // State written by this chunk, S = exp(Γ_{L−1}) S_prev + Kᵀ diag(exp(Γ_{L−1} − Γ_i)) V:
                // later chunks read it, so its gradient dS flows back into this chunk's keys and values.
                const auto to_chunk_end = [&](int64_t i) { return decay.to_end(i); };
                T *k_decayed = scratch.k_decayed.data(), *v_decayed = scratch.v_decayed.data();
                scale_rows(k_decayed, kc, L, Dk, q_ld, to_chunk_end);
                scale_rows(v_decayed, vc, L, Dv, v_ld, to_chunk_end);
                gemm<T>(false, true, L, Dk, Dv, T(1), v_decayed, Dv, dstate.data(), Dv, T(1), dkc, dqk_ld);
                gemm<T>(false, false, L, Dv, Dk, T(1), k_decayed, Dk, dstate.data(), Dv, T(1), dvc, v_ld);

                // Inter-chunk term O = scale · diag(exp(Γ_i)) Q S_prev: into dQ and into dS_prev, which
                // also receives dS through the exp(Γ_{L−1}) carry (dstate is updated in place last).
                T* dout_decayed = scratch.dout_decayed.data();
                scale_rows(dout_decayed, doc, L, Dv, v_ld, [&](int64_t i) { return decay.into_row(i); });
                gemm<T>(false, true, L, Dk, Dv, T(scale), dout_decayed, Dv, state_prev, Dv, T(1), dqc, dqk_ld);
                gemm<T>(true, false, Dk, Dv, L, T(scale), qc, q_ld, dout_decayed, Dv, decay.whole(), dstate.data(),
                        Dv);

                // The chunk's dq/dk are complete: add them to the caller's and walk the gate's reverse
                // cumsum back over the chunk's rows.
                if (gate_grad) {
                    T* dg = dlog_gate + s.gate + t0 * g_ld;
                    for (int64_t i = L - 1; i >= 0; --i) {
                        double dG = 0;
                        for (int64_t c = 0; c < Dk; ++c) {
                            const T dqi = dqc[i * Dk + c], dki = dkc[i * Dk + c];
                            dG += double(qc[i * q_ld + c]) * double(dqi) - double(kc[i * q_ld + c]) * double(dki);
                            dq[s.qk + (t0 + i) * q_ld + c] += dqi;
                            dk[s.qk + (t0 + i) * q_ld + c] += dki;
                        }
                        gate_acc += dG;
                        dg[i * g_ld] += T(gate_acc);
                    }
                }
            }
            if (dinitial_state)
                for (int64_t i = 0; i < state_size; ++i) dinitial_state[s.state + i] += dstate[size_t(i)];
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                              \
    template void linear_attention_recurrent_forward<T>(T*, T*, const T*, const T*, const T*, const T*,      \
                                                        const LogGate<T>&, double, const LinearAttentionDims&); \
    template void linear_attention_parallel_forward<T>(T*, T*, const T*, const T*, const T*, const T*,       \
                                                       const LogGate<T>&, double, const LinearAttentionDims&); \
    template void linear_attention_chunkwise_forward<T>(T*, T*, const T*, const T*, const T*, const T*,      \
                                                        const LogGate<T>&, double, int64_t,                 \
                                                        const LinearAttentionDims&);                        \
    template void linear_attention_chunkwise_backward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*,   \
                                                         const T*, const T*, const T*, const LogGate<T>&,    \
                                                         double, int64_t, const LinearAttentionDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
