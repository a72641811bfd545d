// Float64 references: the parallel form of linear attention (every decay summed directly over the
// tokens between the pair) and the direct convolution sum.
#include "backend/cpu/reference_linear_attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace linarch::reference {

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [B,H,Dk,Dv]  log_decay [H]
void linear_attention_parallel(double* out, double* final_state, const double* q, const double* k, const double* v,
                               const double* initial_state, const double* log_decay, double scale, int64_t batch,
                               int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim) {
    linear_attention(out, final_state, q, k, v, initial_state,
                     {batch, seq_len, heads, key_dim, value_dim, log_decay, nullptr, 1, nullptr, batch, scale});
}

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [N,H,Dk,Dv]  log_decay [H]  log_gate [B,T,H] or [B,T,H,Dk]
void linear_attention(double* out, double* final_state, const double* q, const double* k, const double* v,
                      const double* initial_state, const LinearAttentionProblem& p) {
    const int64_t H = p.heads, Dk = p.key_dim, Dv = p.value_dim;
    const int64_t num_seqs = p.cu_seqlens ? p.num_seqs : p.batch;
    // Token row r of the flattened [B·T] axis, head h.
    auto row_qk = [&](const double* base, int64_t r, int64_t h) { return base + (r * H + h) * Dk; };
    auto row_v = [&](const double* base, int64_t r, int64_t h) { return base + (r * H + h) * Dv; };
    auto log_step = [&](int64_t r, int64_t h, int64_t c) {
        if (p.log_decay) return p.log_decay[h];
        if (!p.log_gate) return 0.0;
        return p.gate_width == 1 ? p.log_gate[r * H + h] : p.log_gate[(r * H + h) * Dk + c];
    };
    // exp(x) is exactly 0 in double below this: once every channel's decay is past it, older tokens
    // contribute nothing (decays only accumulate), so the walk back may stop.
    constexpr double kUnderflow = -746.0;
    std::vector<double> log_weight(static_cast<size_t>(Dk));
    for (int64_t n = 0; n < num_seqs; ++n) {
        const int64_t begin = p.cu_seqlens ? p.cu_seqlens[n] : n * p.seq_len;
        const int64_t end = p.cu_seqlens ? p.cu_seqlens[n + 1] : begin + p.seq_len;
        for (int64_t h = 0; h < H; ++h) {
            const double* s0 = initial_state ? initial_state + (n * H + h) * Dk * Dv : nullptr;
            for (int64_t t = begin; t < end; ++t) {
                const double* qt = row_qk(q, t, h);
                double* ot = out + (t * H + h) * Dv;
                std::fill_n(ot, Dv, 0.0);
                // Walk back from s = t; log_weight[c] = Σ_{s<u≤t} g_uc.
                std::fill(log_weight.begin(), log_weight.end(), 0.0);
                int64_t s = t;
                for (; s >= begin; --s) {
                    if (*std::max_element(log_weight.begin(), log_weight.end()) < kUnderflow) break;
                    const double* ks = row_qk(k, s, h);
                    const double* vs = row_v(v, s, h);
                    double score = 0;
                    for (int64_t c = 0; c < Dk; ++c) score += qt[c] * ks[c] * std::exp(log_weight[size_t(c)]);
                    for (int64_t j = 0; j < Dv; ++j) ot[j] += p.scale * score * vs[j];
                    for (int64_t c = 0; c < Dk; ++c) log_weight[size_t(c)] += log_step(s, h, c);
                }
                // What the initial state still holds after the decays of tokens begin..t.
                if (s0 && s < begin)
                    for (int64_t c = 0; c < Dk; ++c)
                        for (int64_t j = 0; j < Dv; ++j)
                            ot[j] += p.scale * std::exp(log_weight[size_t(c)]) * qt[c] * s0[c * Dv + j];
            }
            if (!final_state) continue;
            double* st = final_state + (n * H + h) * Dk * Dv;
            for (int64_t c = 0; c < Dk; ++c) {
                double log_w = 0;  // Σ_{u>s} g_uc
                for (int64_t j = 0; j < Dv; ++j) st[c * Dv + j] = 0;
                for (int64_t s = end - 1; s >= begin; --s) {
                    const double w = std::exp(log_w) * row_qk(k, s, h)[c];
                    for (int64_t j = 0; j < Dv; ++j) st[c * Dv + j] += w * row_v(v, s, h)[j];
                    log_w += log_step(s, h, c);
                }
                if (s0)
                    for (int64_t j = 0; j < Dv; ++j) st[c * Dv + j] += std::exp(log_w) * s0[c * Dv + j];
            }
        }
    }
}

// x, out [B,T,C]  weight [C,K]
void short_conv(double* out, const double* x, const double* weight, bool silu, int64_t batch, int64_t seq_len,
                int64_t channels, int64_t kernel_size) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < seq_len; ++t)
            for (int64_t c = 0; c < channels; ++c) {
                double sum = 0;
                for (int64_t j = 0; j < kernel_size; ++j) {
                    const int64_t s = t - kernel_size + 1 + j;
                    if (s >= 0) sum += weight[c * kernel_size + j] * x[(b * seq_len + s) * channels + c];
                }
                out[(b * seq_len + t) * channels + c] = silu ? sum / (1.0 + std::exp(-sum)) : sum;
            }
}

}  // namespace linarch::reference
