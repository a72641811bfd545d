// Float64 references: the parallel form of linear attention and the direct convolution sum.
#include "backend/cpu/reference_linear_attention.hpp"

#include <cmath>

namespace linarch::reference {

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  states [B,H,Dk,Dv]  log_decay [H]
void linear_attention_parallel(double* out, double* final_state, const double* q, const double* k, const double* v,
                               const double* initial_state, const double* log_decay, double scale, int64_t batch,
                               int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim) {
    const int64_t Dk = key_dim, Dv = value_dim;
    auto at_qk = [&](const double* base, int64_t b, int64_t t, int64_t h) {
        return base + ((b * seq_len + t) * heads + h) * Dk;
    };
    auto at_v = [&](const double* base, int64_t b, int64_t t, int64_t h) {
        return base + ((b * seq_len + t) * heads + h) * Dv;
    };
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t h = 0; h < heads; ++h) {
            const double log_gamma = log_decay ? log_decay[h] : 0.0;
            // γ^n straight from the exponent: no accumulated products.
            auto decay = [&](int64_t n) { return std::exp(log_gamma * double(n)); };
            const double* s0 = initial_state ? initial_state + (b * heads + h) * Dk * Dv : nullptr;
            for (int64_t t = 0; t < seq_len; ++t) {
                const double* qt = at_qk(q, b, t, h);
                double* ot = out + ((b * seq_len + t) * heads + h) * Dv;
                for (int64_t j = 0; j < Dv; ++j) ot[j] = 0;
                // Masked, decayed attention over the tokens so far.
                for (int64_t s = 0; s <= t; ++s) {
                    const double* ks = at_qk(k, b, s, h);
                    const double* vs = at_v(v, b, s, h);
                    double score = 0;
                    for (int64_t c = 0; c < Dk; ++c) score += qt[c] * ks[c];
                    score *= scale * decay(t - s);
                    for (int64_t j = 0; j < Dv; ++j) ot[j] += score * vs[j];
                }
                // What the initial state still holds after t+1 decays.
                if (s0)
                    for (int64_t c = 0; c < Dk; ++c)
                        for (int64_t j = 0; j < Dv; ++j) ot[j] += scale * decay(t + 1) * qt[c] * s0[c * Dv + j];
            }
            if (!final_state) continue;
            double* st = final_state + (b * heads + h) * Dk * Dv;
            for (int64_t c = 0; c < Dk; ++c)
                for (int64_t j = 0; j < Dv; ++j) {
                    double sum = s0 ? decay(seq_len) * s0[c * Dv + j] : 0.0;
                    for (int64_t s = 0; s < seq_len; ++s)
                        sum += decay(seq_len - 1 - s) * at_qk(k, b, s, h)[c] * at_v(v, b, s, h)[j];
                    st[c * Dv + j] = sum;
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
