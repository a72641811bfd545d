// CPU LASAD spatial-decay attention: the masked parallel form, the column-state scan and the chunkwise
// form (masked blocks of whole rows plus carried column states), each with its backward (mixers.md §9;
// the derivations are in ops/spatial_decay_attention.hpp).
// Per (batch, head) pair the tokens are rows of [T, D] matrices with leading dimension H·D, so BLAS and
// the scan read the tensors in place. a = γ_r = exp(λ_r), b = γ_c = exp(λ_c) per head.
#include "backend/cpu/spatial_decay_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/cpu/linear_attention_internal.hpp"

namespace linarch::cpu {
namespace {

using detail::gemm;

// A parallel region costs microseconds to open: the tiny problems that finite-difference checks
// evaluate thousands of times run on the calling thread.
bool worth_threads(const SpatialDecayDims& d) {
    return d.batch * d.heads > 1 && d.batch * d.heads * d.seq_len * d.key_dim * d.value_dim >= (int64_t(1) << 16);
}

// One (batch, head) pair: offsets of its token 0 in q/k and v/o.
struct Pair {
    int64_t qk, vo, head;
};
Pair pair_of(const SpatialDecayDims& d, int64_t pair) {
    const int64_t b = pair / d.heads, h = pair % d.heads;
    const int64_t row = b * d.seq_len * d.heads + h;
    return {row * d.key_dim, row * d.value_dim, h};
}

// Runs body(pair) for every (batch, head) pair, in parallel when worth it.
template <typename Body> void for_each_pair(const SpatialDecayDims& d, Body&& body) {
    const int64_t pairs = d.batch * d.heads;
#pragma omp parallel for schedule(dynamic) if (worth_threads(d))
    for (int64_t pair = 0; pair < pairs; ++pair) body(pair);
}

// Runs body(pair, workspace) for every pair with one workspace per thread from make(): the chunkwise
// form's buffers (megabytes of column states) cost more to allocate and page in for every pair than
// to reuse.
template <typename Make, typename Body>
void for_each_pair_with(const SpatialDecayDims& d, Make&& make, Body&& body) {
    const int64_t pairs = d.batch * d.heads;
#pragma omp parallel if (worth_threads(d))
    {
        auto workspace = make();
#pragma omp for schedule(dynamic)
        for (int64_t pair = 0; pair < pairs; ++pair) body(pair, workspace);
    }
}

// The causal spatial decay of one head over n consecutive tokens that start a grid row (a whole grid, or
// one chunk of whole rows: its local coordinates give the same distances), D[n,n]:
// D_ij = exp(λ_r |r_i − r_j| + λ_c |c_i − c_j|) for j ≤ i, else 0, each entry exponentiated once in
// double from the coordinates (raster order: r_i ≥ r_j).
template <typename T>
void spatial_decay_matrix(std::vector<T>& decay, double log_row, double log_col, int64_t W, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
            decay[size_t(i * n + j)] =
                j > i ? T(0)
                      : T(std::exp(log_row * double(i / W - j / W) + log_col * double(std::llabs(i % W - j % W))));
}

// The masked form on a block of n consecutive tokens (whole rows) of one pair, with its decay D
// (leading dimension ldd ≥ n; scores is an n × ldd workspace): out = (scale (Q Kᵀ) ⊙ D) V, added into
// out when accumulate.
template <typename T>
void masked_block_forward(T* out, const T* q, const T* k, const T* v, const T* decay, int64_t ldd, int64_t n,
                          double scale, bool accumulate, const SpatialDecayDims& d, T* scores) {
    const int64_t ldqk = d.heads * d.key_dim, ldvo = d.heads * d.value_dim;
    gemm(false, true, n, n, d.key_dim, T(scale), q, ldqk, k, ldqk, T(0), scores, ldd);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) scores[i * ldd + j] *= decay[i * ldd + j];
    gemm(false, false, n, d.value_dim, n, T(1), scores, ldd, v, ldvo, T(accumulate ? 1 : 0), out, ldvo);
}

// Its backward. P = scale (Q Kᵀ) ⊙ D,  dP = dO Vᵀ:  dQ += (scale dP ⊙ D) K,  dK += (scale dP ⊙ D)ᵀ Q,
// dV += Pᵀ dO; returns {Σ_ij P_ij dP_ij |r_i − r_j|, the same with column distances}: the block's share
// of dλ_r and dλ_c. scores and dscores are n × ldd workspaces.
template <typename T>
std::pair<double, double> masked_block_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                                const T* v, const T* decay, int64_t ldd, int64_t n, double scale,
                                                const SpatialDecayDims& d, T* scores, T* dscores) {
    const int64_t W = d.grid_width, ldqk = d.heads * d.key_dim, ldvo = d.heads * d.value_dim;
    gemm(false, true, n, n, d.key_dim, T(scale), q, ldqk, k, ldqk, T(0), scores, ldd);
    gemm(false, true, n, n, d.value_dim, T(1), dout, ldvo, v, ldvo, T(0), dscores, ldd);
    double sum_row = 0, sum_col = 0;
    // (row, column) of i and j counted along, not divided out: this loop runs over every pair of tokens.
    for (int64_t i = 0, row_i = 0, col_i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) scores[i * ldd + j] *= decay[i * ldd + j];
        for (int64_t j = 0, row_j = 0, col_j = 0; j <= i; ++j) {
            const double weighted = double(scores[i * ldd + j]) * double(dscores[i * ldd + j]);
            sum_row += weighted * double(row_i - row_j);
            sum_col += weighted * double(std::llabs(col_i - col_j));
            if (++col_j == W) {
                col_j = 0;
                ++row_j;
            }
        }
        if (++col_i == W) {
            col_i = 0;
            ++row_i;
        }
    }
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) dscores[i * ldd + j] *= T(scale) * decay[i * ldd + j];
    gemm(false, false, n, d.key_dim, n, T(1), dscores, ldd, k, ldqk, T(1), dq, ldqk);
    gemm(true, false, n, d.key_dim, n, T(1), dscores, ldd, q, ldqk, T(1), dk, ldqk);
    gemm(true, false, n, d.value_dim, n, T(1), scores, ldd, dout, ldvo, T(1), dv, ldvo);
    return {sum_row, sum_col};
}

// dlog[h] += Σ over the pairs of head h of per_pair[pair] (summed serially: pairs run in parallel).
template <typename T> void add_per_head(T* dlog, const std::vector<double>& per_pair, const SpatialDecayDims& d) {
    if (!dlog) return;
    for (int64_t h = 0; h < d.heads; ++h) {
        double sum = 0;
        for (int64_t b = 0; b < d.batch; ++b) sum += per_pair[size_t(b * d.heads + h)];
        dlog[h] += T(sum);
    }
}

// The column-state scan over one grid with "keys" x [T, Dx] and "values" y [T, Dy] (leading dimensions
// ldx, ldy). Visits every token t with S_t = Σ_{j ≤ t} D_tj x_jᵀ y_j (Dx × Dy), in raster order, or with
// reversed in reverse raster order (then j ≥ t): flipping both grid axes keeps every 2-D distance, so the
// anti-causal sums of the backward are the same scan on flipped coordinates (virtual row rr, column cc).
// Per virtual row: F(cc) = b F(cc−1) + x yᵀ (left to right, also S = C[cc] + F(cc)), then the columns'
// states absorb the row, C[cc] ← a (C[cc] + F(cc) + G(cc)) with G(cc) = b (G(cc+1) + x_{cc+1}ᵀ y_{cc+1})
// (right to left). With tangents the scan also carries dS/dλ_r and dS/dλ_c (forward-mode, for the
// decays' gradients): dC_r ← C_new + a dC_r, dC_c ← a (dC_c + dF + dG), dF(cc) = b (dF(cc−1) + F(cc−1)),
// dG(cc) = b (dG(cc+1) + G(cc+1) + x_{cc+1}ᵀ y_{cc+1}).
template <typename T> class ColumnStateScan {
public:
    ColumnStateScan(const SpatialDecayDims& d, int64_t dx, int64_t dy, bool tangents)
        : d_(d), dx_(dx), dy_(dy), size_(dx * dy), tangents_(tangents), columns_(size_t(d.grid_width * size_)),
          row_(size_t(size_)), back_(size_t(size_)), columns_dr_(tangents ? columns_.size() : 0),
          columns_dc_(tangents ? columns_.size() : 0), row_dc_(tangents ? size_t(size_) : 0),
          back_dc_(tangents ? size_t(size_) : 0) {}

    // visit(t, S, dS/dλ_r, dS/dλ_c); the tangents are null without tangents.
    template <typename Visit>
    void run(const T* x, int64_t ldx, const T* y, int64_t ldy, double log_row, double log_col, bool reversed,
             Visit&& visit) {
        const T a = T(std::exp(log_row)), b = T(std::exp(log_col));
        const int64_t W = d_.grid_width, rows = d_.grid_height;
        std::fill(columns_.begin(), columns_.end(), T(0));
        std::fill(columns_dr_.begin(), columns_dr_.end(), T(0));
        std::fill(columns_dc_.begin(), columns_dc_.end(), T(0));
        auto token = [&](int64_t rr, int64_t cc) { return reversed ? d_.seq_len - 1 - (rr * W + cc) : rr * W + cc; };
        for (int64_t rr = 0; rr < rows; ++rr) {
            std::fill(row_.begin(), row_.end(), T(0));
            std::fill(row_dc_.begin(), row_dc_.end(), T(0));
            for (int64_t cc = 0; cc < W; ++cc) {
                const int64_t t = token(rr, cc);
                const T* xt = x + t * ldx;
                const T* yt = y + t * ldy;
                T* state = column(columns_, cc);
                // C[cc] += F(cc): it then holds S_t, and after the row C[cc] + F(cc) is what decays.
                for (int64_t i = 0; i < dx_; ++i)
                    for (int64_t e = 0; e < dy_; ++e) {
                        const int64_t idx = i * dy_ + e;
                        const T before = row_[size_t(idx)];
                        row_[size_t(idx)] = b * before + xt[i] * yt[e];
                        state[idx] += row_[size_t(idx)];
                        if (tangents_) {
                            row_dc_[size_t(idx)] = b * (row_dc_[size_t(idx)] + before);
                            column(columns_dc_, cc)[idx] += row_dc_[size_t(idx)];
                        }
                    }
                visit(t, state, tangents_ ? column(columns_dr_, cc) : nullptr,
                      tangents_ ? column(columns_dc_, cc) : nullptr);
            }
            if (rr + 1 == rows) break;  // no later row reads the column states
            std::fill(back_.begin(), back_.end(), T(0));
            std::fill(back_dc_.begin(), back_dc_.end(), T(0));
            for (int64_t cc = W - 1; cc >= 0; --cc) {
                const int64_t t = token(rr, cc);
                const T* xt = x + t * ldx;
                const T* yt = y + t * ldy;
                T* state = column(columns_, cc);
                for (int64_t i = 0; i < dx_; ++i)
                    for (int64_t e = 0; e < dy_; ++e) {
                        const int64_t idx = i * dy_ + e;
                        state[idx] = a * (state[idx] + back_[size_t(idx)]);
                        const T back_next = b * (back_[size_t(idx)] + xt[i] * yt[e]);
                        back_[size_t(idx)] = back_next;
                        if (tangents_) {
                            T& dr = column(columns_dr_, cc)[idx];
                            T& dc = column(columns_dc_, cc)[idx];
                            dr = state[idx] + a * dr;
                            dc = a * (dc + back_dc_[size_t(idx)]);
                            back_dc_[size_t(idx)] = back_next + b * back_dc_[size_t(idx)];
                        }
                    }
            }
        }
    }

private:
    T* column(std::vector<T>& states, int64_t cc) { return states.data() + cc * size_; }

    const SpatialDecayDims& d_;
    int64_t dx_, dy_, size_;
    bool tangents_;
    std::vector<T> columns_, row_, back_;                       // C [W,Dx,Dy], F, G
    std::vector<T> columns_dr_, columns_dc_, row_dc_, back_dc_;  // tangents: dC/dλ_r, dC/dλ_c, dF/dλ_c, dG/dλ_c
};

// Σ_{i,e} x[i] S[i,e] y[e] for S [Dx,Dy].
template <typename T> double bilinear(const T* x, const T* state, const T* y, int64_t dx, int64_t dy) {
    double sum = 0;
    for (int64_t i = 0; i < dx; ++i) {
        double row = 0;
        for (int64_t e = 0; e < dy; ++e) row += double(state[i * dy + e]) * double(y[e]);
        sum += double(x[i]) * row;
    }
    return sum;
}


// The chunkwise form's pieces. A chunk holds `chunk` whole rows of the pair (m = chunk · W tokens from
// its top row's first cell); the token at local row ρ, column c is its row ρ·W + c. W column states of
// Dk × Dv are stored one after another ([W, Dk, Dv]).

// γ^n = exp(λ n) in double. Exponents stay in [0, chunk_rows], so any rate in (0, 1] gives a finite
// power: a strong decay underflows to 0, none overflows, and no power is ever divided by another.
double power(double log_decay, int64_t n) { return std::exp(log_decay * double(n)); }

// Σ_i x[i] y[i] in double, over 8 independent partial sums: one running sum would serialise on the
// adder's latency (the compiler may not reorder it), and these sums run over whole column-state sets.
template <typename T> double inner(const T* x, const T* y, int64_t n) {
    double partial[8] = {};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int64_t lane = 0; lane < 8; ++lane) partial[lane] += double(x[i + lane]) * double(y[i + lane]);
    for (; i < n; ++i) partial[0] += double(x[i]) * double(y[i]);
    double sum = 0;
    for (double p : partial) sum += p;
    return sum;
}

// dst [m, dim] (contiguous) = the chunk's m rows of src (leading dimension ld), row (ρ, c) times weight(ρ).
template <typename T, typename Weight>
void weighted_rows(std::vector<T>& dst, const T* src, int64_t ld, int64_t chunk, int64_t W, int64_t dim,
                   Weight&& weight) {
    for (int64_t rho = 0; rho < chunk; ++rho) {
        const T w = T(weight(rho));
        for (int64_t idx = rho * W; idx < (rho + 1) * W; ++idx)
            for (int64_t i = 0; i < dim; ++i) dst[size_t(idx * dim + i)] = w * src[idx * ld + i];
    }
}

// states[c] = beta · states[c] + Σ_ρ x_{ρc}ᵀ y_{ρc} over the chunk's rows (x rows of dx, y rows of dy):
// one GEMM per column, over the column's cells in the chunk (stride W rows).
template <typename T>
void add_column_outer(std::vector<T>& states, const T* x, int64_t ldx, int64_t dx, const T* y, int64_t ldy,
                      int64_t dy, int64_t chunk, int64_t W, T beta) {
    for (int64_t c = 0; c < W; ++c)
        gemm(true, false, dx, dy, chunk, T(1), x + c * ldx, W * ldx, y + c * ldy, W * ldy, beta,
             states.data() + c * dx * dy, dy);
}

// out_{ρc} = beta · out_{ρc} + x_{ρc} S[c] (S[c]ᵀ when transposed) for the column states S [W, Dk, Dv]:
// x rows of Dk give out rows of Dv, or (transposed) x rows of Dv give out rows of Dk.
template <typename T>
void apply_column_states(T* out, int64_t ldo, const T* x, int64_t ldx, const std::vector<T>& states, bool transposed,
                         int64_t chunk, int64_t W, int64_t Dk, int64_t Dv, T beta) {
    const int64_t in_dim = transposed ? Dv : Dk, out_dim = transposed ? Dk : Dv;
    for (int64_t c = 0; c < W; ++c)
        gemm(false, transposed, chunk, out_dim, in_dim, T(1), x + c * ldx, W * ldx, states.data() + c * Dk * Dv, Dv,
             beta, out + c * ldo, W * ldo);
}

// mixed[c] = Σ_{c'} b^{|c − c'|} states[c'] over the W column blocks of `size`: a left-to-right scan
// L(c) = b L(c−1) + S[c], plus a right-to-left one G(c) = b (G(c+1) + S[c+1]) (c' > c). With mixed_dc,
// also its derivative in λ_c, Σ_{c'} |c − c'| b^{|c − c'|} S[c'], from the scans' tangents
// L'(c) = b (L'(c−1) + L(c−1)) and G'(c) = b (G'(c+1) + G(c+1) + S[c+1]).
template <typename T>
void mix_columns(std::vector<T>& mixed, std::vector<T>* mixed_dc, const std::vector<T>& states, T b, int64_t W,
                 int64_t size, std::vector<T>& work) {
    std::copy_n(states.begin(), size, mixed.begin());
    if (mixed_dc) std::fill_n(mixed_dc->begin(), size, T(0));
    for (int64_t c = 1; c < W; ++c) {
        const T* prev = mixed.data() + (c - 1) * size;
        T* cur = mixed.data() + c * size;
        const T* in = states.data() + c * size;
        if (mixed_dc) {
            const T* prev_dc = mixed_dc->data() + (c - 1) * size;
            T* cur_dc = mixed_dc->data() + c * size;
            for (int64_t idx = 0; idx < size; ++idx) cur_dc[idx] = b * (prev_dc[idx] + prev[idx]);
        }
        for (int64_t idx = 0; idx < size; ++idx) cur[idx] = b * prev[idx] + in[idx];
    }
    work.assign(size_t(2 * size), T(0));
    T* back = work.data();
    T* back_dc = work.data() + size;
    for (int64_t c = W - 2; c >= 0; --c) {
        const T* in = states.data() + (c + 1) * size;
        T* cur = mixed.data() + c * size;
        for (int64_t idx = 0; idx < size; ++idx) {
            const T before = back[idx] + in[idx];
            if (mixed_dc) {
                back_dc[idx] = b * (back_dc[idx] + before);
                (*mixed_dc)[size_t(c * size + idx)] += back_dc[idx];
            }
            back[idx] = b * before;
            cur[idx] += back[idx];
        }
    }
}


// The chunkwise forward's work on the column states in one right-to-left and one left-to-right pass,
// each column's state used while it is in cache (mix_columns, apply_column_states and add_column_outer
// as separate passes stream every state through memory several times per chunk):
//   with out: out_{ρc} = row_weight[ρ] · q_{ρc} M[c], M = mix(Ĉ) (as in mix_columns);
//   with keys_weighted (m × Dk): then Ĉ[c] ← carry · Ĉ[c] + Σ_ρ keys_weighted_{ρc}ᵀ v_{ρc}.
template <typename T>
void columns_forward(T* out, int64_t ldo, const T* q, int64_t ldq, const std::vector<T>& row_weight,
                     const T* keys_weighted, const T* v, int64_t ldv, T carry, std::vector<T>& columns,
                     std::vector<T>& mixed, std::vector<T>& work, T b, int64_t chunk, int64_t W, int64_t Dk,
                     int64_t Dv) {
    const int64_t size = Dk * Dv;
    work.assign(size_t(size), T(0));
    T* scan = work.data();
    if (out)  // mixed[c] = G(c) = b (G(c+1) + Ĉ[c+1])
        for (int64_t c = W - 1; c >= 0; --c) {
            T* cur = mixed.data() + c * size;
            const T* state = columns.data() + c * size;
            for (int64_t idx = 0; idx < size; ++idx) {
                cur[idx] = scan[idx];
                scan[idx] = b * (scan[idx] + state[idx]);
            }
        }
    std::fill(work.begin(), work.end(), T(0));
    for (int64_t c = 0; c < W; ++c) {
        T* state = columns.data() + c * size;
        if (out) {  // L(c) = b L(c−1) + Ĉ[c]; M[c] = L(c) + G(c)
            T* cur = mixed.data() + c * size;
            for (int64_t idx = 0; idx < size; ++idx) {
                scan[idx] = b * scan[idx] + state[idx];
                cur[idx] += scan[idx];
            }
            for (int64_t rho = 0; rho < chunk; ++rho) {
                const T* qt = q + (rho * W + c) * ldq;
                T* ot = out + (rho * W + c) * ldo;
                std::fill_n(ot, Dv, T(0));
                for (int64_t i = 0; i < Dk; ++i) {
                    const T qi = row_weight[size_t(rho)] * qt[i];
                    const T* mi = cur + i * Dv;
                    for (int64_t e = 0; e < Dv; ++e) ot[e] += qi * mi[e];
                }
            }
        }
        if (!keys_weighted) continue;
        for (int64_t i = 0; i < Dk; ++i) {
            T* si = state + i * Dv;
            for (int64_t e = 0; e < Dv; ++e) si[e] *= carry;
            for (int64_t rho = 0; rho < chunk; ++rho) {
                const T ki = keys_weighted[(rho * W + c) * Dk + i];
                const T* vt = v + (rho * W + c) * ldv;
                for (int64_t e = 0; e < Dv; ++e) si[e] += ki * vt[e];
            }
        }
    }
}

}  // namespace

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  log decays [H]: the whole grid is one masked block.
template <typename T>
void spatial_decay_attention_parallel_forward(T* out, const T* q, const T* k, const T* v, const T* log_decay_row,
                                              const T* log_decay_col, double scale, const SpatialDecayDims& d) {
    const int64_t n = d.seq_len;
    for_each_pair(d, [&](int64_t pair) {
        const Pair p = pair_of(d, pair);
        std::vector<T> decay(size_t(n * n)), scores(size_t(n * n));
        spatial_decay_matrix(decay, double(log_decay_row[p.head]), double(log_decay_col[p.head]), d.grid_width, n);
        masked_block_forward(out + p.vo, q + p.qk, k + p.qk, v + p.vo, decay.data(), n, n, scale, false, d,
                             scores.data());
    });
}

template <typename T>
void spatial_decay_attention_parallel_backward(T* dq, T* dk, T* dv, T* dlog_decay_row, T* dlog_decay_col,
                                               const T* dout, const T* q, const T* k, const T* v,
                                               const T* log_decay_row, const T* log_decay_col, double scale,
                                               const SpatialDecayDims& d) {
    const int64_t n = d.seq_len;
    std::vector<double> drow(size_t(d.batch * d.heads)), dcol(drow.size());
    for_each_pair(d, [&](int64_t pair) {
        const Pair p = pair_of(d, pair);
        std::vector<T> decay(size_t(n * n)), scores(size_t(n * n)), dscores(size_t(n * n));
        spatial_decay_matrix(decay, double(log_decay_row[p.head]), double(log_decay_col[p.head]), d.grid_width, n);
        std::tie(drow[size_t(pair)], dcol[size_t(pair)]) =
            masked_block_backward(dq + p.qk, dk + p.qk, dv + p.vo, dout + p.vo, q + p.qk, k + p.qk, v + p.vo,
                                  decay.data(), n, n, scale, d, scores.data(), dscores.data());
    });
    add_per_head(dlog_decay_row, drow, d);
    add_per_head(dlog_decay_col, dcol, d);
}

// o_t = scale · q_t S_t with S_t from the column-state scan of (k, v).
template <typename T>
void spatial_decay_attention_recurrent_forward(T* out, const T* q, const T* k, const T* v, const T* log_decay_row,
                                               const T* log_decay_col, double scale, const SpatialDecayDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, ldqk = d.heads * Dk, ldvo = d.heads * Dv;
    for_each_pair(d, [&](int64_t pair) {
        const Pair p = pair_of(d, pair);
        ColumnStateScan<T> scan(d, Dk, Dv, false);
        scan.run(k + p.qk, ldqk, v + p.vo, ldvo, double(log_decay_row[p.head]), double(log_decay_col[p.head]), false,
                 [&](int64_t t, const T* state, const T*, const T*) {
                     const T* qt = q + p.qk + t * ldqk;
                     T* ot = out + p.vo + t * ldvo;
                     std::fill_n(ot, Dv, T(0));
                     for (int64_t i = 0; i < Dk; ++i) {
                         const T qi = T(scale) * qt[i];
                         for (int64_t e = 0; e < Dv; ++e) ot[e] += qi * state[i * Dv + e];
                     }
                 });
    });
}

// dq_t += scale · S_t do_t (the forward scan, which also yields dλ = scale Σ_t q_t (dS_t/dλ) do_t);
// with U_j = Σ_{i ≥ j} D_ij q_iᵀ do_i from the reversed scan of (q, dout): dk_j += scale · U_j v_j,
// dv_j += scale · U_jᵀ k_j.
template <typename T>
void spatial_decay_attention_recurrent_backward(T* dq, T* dk, T* dv, T* dlog_decay_row, T* dlog_decay_col,
                                                const T* dout, const T* q, const T* k, const T* v,
                                                const T* log_decay_row, const T* log_decay_col, double scale,
                                                const SpatialDecayDims& d) {
    const int64_t Dk = d.key_dim, Dv = d.value_dim, ldqk = d.heads * Dk, ldvo = d.heads * Dv;
    const bool decay_grads = dlog_decay_row || dlog_decay_col;
    std::vector<double> drow(size_t(d.batch * d.heads)), dcol(drow.size());
    for_each_pair(d, [&](int64_t pair) {
        const Pair p = pair_of(d, pair);
        const double log_row = double(log_decay_row[p.head]), log_col = double(log_decay_col[p.head]);
        double sum_row = 0, sum_col = 0;
        ColumnStateScan<T> keys(d, Dk, Dv, decay_grads);
        keys.run(k + p.qk, ldqk, v + p.vo, ldvo, log_row, log_col, false,
                 [&](int64_t t, const T* state, const T* state_dr, const T* state_dc) {
                     const T* dot = dout + p.vo + t * ldvo;
                     T* dqt = dq + p.qk + t * ldqk;
                     for (int64_t i = 0; i < Dk; ++i) {
                         T sum = 0;
                         for (int64_t e = 0; e < Dv; ++e) sum += state[i * Dv + e] * dot[e];
                         dqt[i] += T(scale) * sum;
                     }
                     if (!state_dr) return;
                     const T* qt = q + p.qk + t * ldqk;
                     sum_row += scale * bilinear(qt, state_dr, dot, Dk, Dv);
                     sum_col += scale * bilinear(qt, state_dc, dot, Dk, Dv);
                 });
        drow[size_t(pair)] = sum_row;
        dcol[size_t(pair)] = sum_col;
        ColumnStateScan<T> queries(d, Dk, Dv, false);
        queries.run(q + p.qk, ldqk, dout + p.vo, ldvo, log_row, log_col, true,
                    [&](int64_t t, const T* state, const T*, const T*) {
                        const T* kt = k + p.qk + t * ldqk;
                        const T* vt = v + p.vo + t * ldvo;
                        T* dkt = dk + p.qk + t * ldqk;
                        T* dvt = dv + p.vo + t * ldvo;
                        for (int64_t i = 0; i < Dk; ++i) {
                            T sum = 0;
                            const T ki = T(scale) * kt[i];
                            for (int64_t e = 0; e < Dv; ++e) {
                                sum += state[i * Dv + e] * vt[e];
                                dvt[e] += ki * state[i * Dv + e];
                            }
                            dkt[i] += T(scale) * sum;
                        }
                    });
    });
    add_per_head(dlog_decay_row, drow, d);
    add_per_head(dlog_decay_col, dcol, d);
}

// Per chunk (top row r₀, local rows ρ): out = scale · γ_r^ρ q M[c] (rows above, through the mixed column
// states M = mix(Ĉ)) + the masked block; then Ĉ ← γ_r^chunk Ĉ + Σ_ρ γ_r^{chunk − ρ} kᵀv.
template <typename T>
void spatial_decay_attention_chunkwise_forward(T* out, const T* q, const T* k, const T* v, const T* log_decay_row,
                                               const T* log_decay_col, double scale, const SpatialDecayDims& d,
                                               int64_t chunk_rows) {
    const int64_t W = d.grid_width, rows = d.grid_height, Dk = d.key_dim, Dv = d.value_dim, size = Dk * Dv;
    const int64_t ldqk = d.heads * Dk, ldvo = d.heads * Dv;
    const int64_t R = std::min(chunk_rows, rows), n = R * W;
    struct Workspace {
        std::vector<T> decay, scores, keys_weighted, columns, mixed, work, row_weight;
    };
    auto make = [&] {
        return Workspace{std::vector<T>(size_t(n * n)), std::vector<T>(size_t(n * n)), std::vector<T>(size_t(n * Dk)),
                         std::vector<T>(size_t(W * size)), std::vector<T>(size_t(W * size)), std::vector<T>(),
                         std::vector<T>(size_t(R))};
    };
    for_each_pair_with(d, make, [&](int64_t pair, Workspace& ws) {
        const Pair p = pair_of(d, pair);
        const double log_row = double(log_decay_row[p.head]), log_col = double(log_decay_col[p.head]);
        const T b = T(std::exp(log_col));
        auto& [decay, scores, keys_weighted, columns, mixed, work, row_weight] = ws;
        std::fill(columns.begin(), columns.end(), T(0));
        spatial_decay_matrix(decay, log_row, log_col, W, n);
        for (int64_t rho = 0; rho < R; ++rho) row_weight[size_t(rho)] = T(scale * power(log_row, rho));
        for (int64_t top = 0; top < rows; top += R) {
            const int64_t chunk = std::min(R, rows - top), m = chunk * W;
            const T* qc = q + p.qk + top * W * ldqk;
            const T* kc = k + p.qk + top * W * ldqk;
            const T* vc = v + p.vo + top * W * ldvo;
            T* oc = out + p.vo + top * W * ldvo;
            const bool absorb = top + chunk < rows;
            if (absorb)
                weighted_rows(keys_weighted, kc, ldqk, chunk, W, Dk,
                              [&](int64_t rho) { return power(log_row, chunk - rho); });
            if (top > 0 || absorb)
                columns_forward(top > 0 ? oc : nullptr, ldvo, qc, ldqk, row_weight,
                                absorb ? keys_weighted.data() : nullptr, vc, ldvo, T(power(log_row, chunk)), columns,
                                mixed, work, b, chunk, W, Dk, Dv);
            masked_block_forward(oc, qc, kc, vc, decay.data(), n, m, scale, top > 0, d, scores.data());
        }
    });
}

// Two sweeps over the chunks. Top to bottom (the forward's column states Ĉ again): the masked block's
// backward, dq += scale · γ_r^ρ do M[c]ᵀ, and the decays' gradients: the rows above a query contribute
// scale · q (ρ γ_r^ρ M[c] + γ_r^ρ M'[c]) do to dλ_r, with M' = mix(Ĉ') and Ĉ' = dĈ/dλ_r carried as
// Ĉ' ← γ_r^chunk (Ĉ' + chunk · Ĉ) + Σ_ρ (chunk − ρ) γ_r^{chunk − ρ} kᵀv, and scale · γ_r^ρ q M_c[c] do to
// dλ_c (M_c = dM/dλ_c from mix_columns); both as ⟨·, X[c]⟩ with X[c] = Σ_ρ scale γ_r^ρ q_{ρc}ᵀ do_{ρc}.
// Bottom to top: E = dL/dĈ after the chunk gives dk += γ_r^{chunk − ρ} v E[c]ᵀ, dv += γ_r^{chunk − ρ} k E[c];
// then E ← γ_r^chunk E + mix(X) (mix is symmetric, so it is its own transpose).
template <typename T>
void spatial_decay_attention_chunkwise_backward(T* dq, T* dk, T* dv, T* dlog_decay_row, T* dlog_decay_col,
                                                const T* dout, const T* q, const T* k, const T* v,
                                                const T* log_decay_row, const T* log_decay_col, double scale,
                                                const SpatialDecayDims& d, int64_t chunk_rows) {
    const int64_t W = d.grid_width, rows = d.grid_height, Dk = d.key_dim, Dv = d.value_dim, size = Dk * Dv;
    const int64_t ldqk = d.heads * Dk, ldvo = d.heads * Dv;
    const int64_t R = std::min(chunk_rows, rows), n = R * W;
    const bool row_grad = dlog_decay_row != nullptr, col_grad = dlog_decay_col != nullptr;
    std::vector<double> drow(size_t(d.batch * d.heads)), dcol(drow.size());
    struct Workspace {
        std::vector<T> decay, scores, dscores, work;
        std::vector<T> keys_weighted, values_weighted, dout_weighted, dq_above;
        std::vector<T> columns, mixed, products, columns_dr, mixed_dr, mixed_dc;
    };
    auto make = [&] {
        Workspace ws;
        for (auto* buffer : {&ws.decay, &ws.scores, &ws.dscores}) buffer->resize(size_t(n * n));
        for (auto* buffer : {&ws.keys_weighted, &ws.dq_above}) buffer->resize(size_t(n * Dk));
        for (auto* buffer : {&ws.values_weighted, &ws.dout_weighted}) buffer->resize(size_t(n * Dv));
        for (auto* buffer : {&ws.columns, &ws.mixed, &ws.products}) buffer->resize(size_t(W * size));
        if (row_grad) for (auto* buffer : {&ws.columns_dr, &ws.mixed_dr}) buffer->resize(size_t(W * size));
        if (col_grad) ws.mixed_dc.resize(size_t(W * size));
        return ws;
    };
    for_each_pair_with(d, make, [&](int64_t pair, Workspace& ws) {
        const Pair p = pair_of(d, pair);
        const double log_row = double(log_decay_row[p.head]), log_col = double(log_decay_col[p.head]);
        const T b = T(std::exp(log_col));
        auto& [decay, scores, dscores, work, keys_weighted, values_weighted, dout_weighted, dq_above, columns, mixed,
               products, columns_dr, mixed_dr, mixed_dc] = ws;
        std::fill(columns.begin(), columns.end(), T(0));
        std::fill(columns_dr.begin(), columns_dr.end(), T(0));
        spatial_decay_matrix(decay, log_row, log_col, W, n);
        auto decayed_from_top = [&](int64_t rho) { return scale * power(log_row, rho); };
        double sum_row = 0, sum_col = 0;
        for (int64_t top = 0; top < rows; top += R) {
            const int64_t chunk = std::min(R, rows - top), m = chunk * W;
            const int64_t qk = p.qk + top * W * ldqk, vo = p.vo + top * W * ldvo;
            if (top > 0) {
                weighted_rows(dout_weighted, dout + vo, ldvo, chunk, W, Dv, decayed_from_top);
                mix_columns(mixed, col_grad ? &mixed_dc : nullptr, columns, b, W, size, work);
                apply_column_states(dq_above.data(), Dk, dout_weighted.data(), Dv, mixed, true, chunk, W, Dk, Dv, T(0));
                if (row_grad || col_grad)
                    add_column_outer(products, q + qk, ldqk, Dk, dout_weighted.data(), Dv, Dv, chunk, W, T(0));
                if (row_grad) {
                    for (int64_t idx = 0; idx < m; ++idx)
                        sum_row += double(idx / W) * inner(q + qk + idx * ldqk, dq_above.data() + idx * Dk, Dk);
                    mix_columns(mixed_dr, static_cast<std::vector<T>*>(nullptr), columns_dr, b, W, size, work);
                    sum_row += inner(mixed_dr.data(), products.data(), W * size);
                }
                if (col_grad) sum_col += inner(mixed_dc.data(), products.data(), W * size);
                for (int64_t idx = 0; idx < m; ++idx)
                    for (int64_t i = 0; i < Dk; ++i) dq[qk + idx * ldqk + i] += dq_above[size_t(idx * Dk + i)];
            }
            const auto [block_row, block_col] =
                masked_block_backward(dq + qk, dk + qk, dv + vo, dout + vo, q + qk, k + qk, v + vo, decay.data(), n,
                                      m, scale, d, scores.data(), dscores.data());
            sum_row += block_row;
            sum_col += block_col;
            if (top + chunk == rows) break;
            const T carry = T(power(log_row, chunk));
            if (row_grad) {  // reads Ĉ before it absorbs this chunk
                for (int64_t idx = 0; idx < W * size; ++idx)
                    columns_dr[size_t(idx)] = carry * (columns_dr[size_t(idx)] + T(chunk) * columns[size_t(idx)]);
                weighted_rows(keys_weighted, k + qk, ldqk, chunk, W, Dk,
                              [&](int64_t rho) { return double(chunk - rho) * power(log_row, chunk - rho); });
                add_column_outer(columns_dr, keys_weighted.data(), Dk, Dk, v + vo, ldvo, Dv, chunk, W, T(1));
            }
            weighted_rows(keys_weighted, k + qk, ldqk, chunk, W, Dk,
                          [&](int64_t rho) { return power(log_row, chunk - rho); });
            add_column_outer(columns, keys_weighted.data(), Dk, Dk, v + vo, ldvo, Dv, chunk, W, carry);
        }
        if (row_grad) drow[size_t(pair)] = sum_row;
        if (col_grad) dcol[size_t(pair)] = sum_col;

        std::vector<T>& state_grad = columns;  // E, zero below the last chunk
        std::fill(state_grad.begin(), state_grad.end(), T(0));
        for (int64_t top = (rows - 1) / R * R; top >= 0; top -= R) {
            const int64_t chunk = std::min(R, rows - top);
            const int64_t qk = p.qk + top * W * ldqk, vo = p.vo + top * W * ldvo;
            if (top + chunk < rows) {
                auto decayed_to_bottom = [&](int64_t rho) { return power(log_row, chunk - rho); };
                weighted_rows(keys_weighted, k + qk, ldqk, chunk, W, Dk, decayed_to_bottom);
                weighted_rows(values_weighted, v + vo, ldvo, chunk, W, Dv, decayed_to_bottom);
                apply_column_states(dk + qk, ldqk, values_weighted.data(), Dv, state_grad, true, chunk, W, Dk, Dv,
                                    T(1));
                apply_column_states(dv + vo, ldvo, keys_weighted.data(), Dk, state_grad, false, chunk, W, Dk, Dv,
                                    T(1));
            }
            if (top == 0) break;
            weighted_rows(dout_weighted, dout + vo, ldvo, chunk, W, Dv, decayed_from_top);
            add_column_outer(products, q + qk, ldqk, Dk, dout_weighted.data(), Dv, Dv, chunk, W, T(0));
            mix_columns(mixed, static_cast<std::vector<T>*>(nullptr), products, b, W, size, work);
            const T carry = T(power(log_row, chunk));
            for (int64_t idx = 0; idx < W * size; ++idx)
                state_grad[size_t(idx)] = carry * state_grad[size_t(idx)] + mixed[size_t(idx)];
        }
    });
    add_per_head(dlog_decay_row, drow, d);
    add_per_head(dlog_decay_col, dcol, d);
}

// The scan of ColumnStateScan::run for one token: F(c) = b F(c−1) + kᵀv (reset at a row's start),
// C[c] += F(c), o = scale · q C[c]; after a row's last token (unless the grid ends) the columns absorb
// the row right to left: C[c] ← a (C[c] + G(c)), G(c) = b (G(c+1) + k_{c+1}ᵀ v_{c+1}).
template <typename T>
void spatial_decay_attention_step(T* out, T* columns, T* row_scan, T* row_keys, T* row_values, const T* q,
                                  const T* k, const T* v, const T* log_decay_row, const T* log_decay_col,
                                  double scale, int64_t position, const SpatialDecayDims& d) {
    const int64_t H = d.heads, Dk = d.key_dim, Dv = d.value_dim, W = d.grid_width, size = Dk * Dv;
    const int64_t c = position % W;
    const bool row_ends = c == W - 1 && position / W + 1 < d.grid_height;
    std::copy_n(k, H * Dk, row_keys + c * H * Dk);
    std::copy_n(v, H * Dv, row_values + c * H * Dv);
    std::vector<T> back(row_ends ? size_t(size) : 0);
    for (int64_t h = 0; h < H; ++h) {
        const T a = T(std::exp(double(log_decay_row[h]))), b = T(std::exp(double(log_decay_col[h])));
        const T* kh = k + h * Dk;
        const T* vh = v + h * Dv;
        T* scan = row_scan + h * size;
        T* state = columns + (c * H + h) * size;
        for (int64_t i = 0; i < Dk; ++i)
            for (int64_t e = 0; e < Dv; ++e) {
                const int64_t idx = i * Dv + e;
                scan[idx] = (c == 0 ? T(0) : b * scan[idx]) + kh[i] * vh[e];
                state[idx] += scan[idx];
            }
        T* oh = out + h * Dv;
        std::fill_n(oh, Dv, T(0));
        for (int64_t i = 0; i < Dk; ++i) {
            const T qi = T(scale) * q[h * Dk + i];
            for (int64_t e = 0; e < Dv; ++e) oh[e] += qi * state[i * Dv + e];
        }
        if (!row_ends) continue;
        std::fill(back.begin(), back.end(), T(0));
        for (int64_t cc = W - 1; cc >= 0; --cc) {
            T* column = columns + (cc * H + h) * size;
            const T* kc = row_keys + (cc * H + h) * Dk;
            const T* vc = row_values + (cc * H + h) * Dv;
            for (int64_t i = 0; i < Dk; ++i)
                for (int64_t e = 0; e < Dv; ++e) {
                    const int64_t idx = i * Dv + e;
                    column[idx] = a * (column[idx] + back[size_t(idx)]);
                    back[size_t(idx)] = b * (back[size_t(idx)] + kc[i] * vc[e]);
                }
        }
    }
}

#define LINARCH_INSTANTIATE(T)                                                                                     \
    template void spatial_decay_attention_parallel_forward<T>(T*, const T*, const T*, const T*, const T*, const T*, \
                                                              double, const SpatialDecayDims&);                     \
    template void spatial_decay_attention_parallel_backward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*,    \
                                                               const T*, const T*, const T*, double,                \
                                                               const SpatialDecayDims&);                            \
    template void spatial_decay_attention_recurrent_forward<T>(T*, const T*, const T*, const T*, const T*,          \
                                                               const T*, double, const SpatialDecayDims&);          \
    template void spatial_decay_attention_recurrent_backward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*,   \
                                                                const T*, const T*, const T*, double,               \
                                                                const SpatialDecayDims&);                           \
    template void spatial_decay_attention_chunkwise_forward<T>(T*, const T*, const T*, const T*, const T*,          \
                                                               const T*, double, const SpatialDecayDims&, int64_t); \
    template void spatial_decay_attention_chunkwise_backward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*,   \
                                                                const T*, const T*, const T*, double,               \
                                                                const SpatialDecayDims&, int64_t);                  \
    template void spatial_decay_attention_step<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*,       \
                                                  const T*, double, int64_t, const SpatialDecayDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
