// Float64 reference: the full masked logit matrix of each (sequence, head), then a row softmax.
#include "backend/cpu/reference_softmax_attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace linarch::reference {

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  logsumexp, log_forget [B,T,H]  alibi_slopes [H]
void softmax_attention(double* out, double* logsumexp, const double* q, const double* k, const double* v,
                       const double* alibi_slopes, const double* log_forget, double scale, int64_t window,
                       std::span<const int64_t> cu_seqlens, int64_t batch, int64_t seq_len, int64_t heads,
                       int64_t key_dim, int64_t value_dim) {
    const int64_t Dk = key_dim, Dv = value_dim;
    // (batch, first token, length) of every independent sequence.
    struct Sequence {
        int64_t batch, start, length;
    };
    std::vector<Sequence> sequences;
    if (cu_seqlens.empty())
        for (int64_t b = 0; b < batch; ++b) sequences.push_back({b, 0, seq_len});
    else
        for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s)
            sequences.push_back({0, cu_seqlens[s], cu_seqlens[s + 1] - cu_seqlens[s]});
    auto token = [&](const Sequence& s, int64_t i, int64_t h) { return (s.batch * seq_len + s.start + i) * heads + h; };
    const double minus_infinity = -std::numeric_limits<double>::infinity();

    for (const Sequence& s : sequences)
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t L = s.length;
            std::vector<double> logits(size_t(L * L), minus_infinity);
            for (int64_t i = 0; i < L; ++i) {
                // Walking j down from i, the forget bias Σ_{l=j+1..i} log f_l grows one term at a time.
                double forget_bias = 0;
                for (int64_t j = i; j >= 0 && (window == 0 || i - j < window); --j) {
                    if (j < i && log_forget) forget_bias += log_forget[token(s, j + 1, h)];
                    double dot = 0;
                    for (int64_t c = 0; c < Dk; ++c) dot += q[token(s, i, h) * Dk + c] * k[token(s, j, h) * Dk + c];
                    double logit = scale * dot + forget_bias;
                    if (alibi_slopes) logit -= alibi_slopes[h] * double(i - j);
                    logits[size_t(i * L + j)] = logit;
                }
            }
            for (int64_t i = 0; i < L; ++i) {
                const double* row = logits.data() + i * L;
                const double max = *std::max_element(row, row + L);
                double sum = 0;
                for (int64_t j = 0; j < L; ++j) sum += std::exp(row[j] - max);
                double* o = out + token(s, i, h) * Dv;
                std::fill_n(o, Dv, 0.0);
                for (int64_t j = 0; j < L; ++j) {
                    const double p = std::exp(row[j] - max) / sum;
                    for (int64_t c = 0; c < Dv; ++c) o[c] += p * v[token(s, j, h) * Dv + c];
                }
                logsumexp[token(s, i, h)] = max + std::log(sum);
            }
        }
}

}  // namespace linarch::reference
