// Float64 reference: the delta-rule recurrence, one token at a time.
#include "backend/cpu/reference_delta_rule.hpp"

#include <cmath>
#include <vector>

namespace linarch::reference {

void delta_rule_recurrent(double* out, double* final_state, const double* q, const double* k, const double* v,
                          const double* beta, const double* log_gate, const double* initial_state, double scale,
                          int64_t batch, int64_t seq_len, int64_t heads, int64_t key_dim, int64_t value_dim,
                          std::span<const int64_t> cu_seqlens) {
    const int64_t Dk = key_dim, Dv = value_dim;
    // Sequences as (first row of the flattened [B·T] token axis, length).
    std::vector<int64_t> starts, lengths;
    if (cu_seqlens.empty())
        for (int64_t b = 0; b < batch; ++b) {
            starts.push_back(b * seq_len);
            lengths.push_back(seq_len);
        }
    else
        for (size_t n = 0; n + 1 < cu_seqlens.size(); ++n) {
            starts.push_back(cu_seqlens[n]);
            lengths.push_back(cu_seqlens[n + 1] - cu_seqlens[n]);
        }
    std::vector<double> S(static_cast<size_t>(Dk * Dv)), u(static_cast<size_t>(Dv));
    for (size_t n = 0; n < starts.size(); ++n)
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t state_offset = (int64_t(n) * heads + h) * Dk * Dv;
            for (int64_t i = 0; i < Dk * Dv; ++i) S[size_t(i)] = initial_state ? initial_state[state_offset + i] : 0.0;
            for (int64_t t = starts[n]; t < starts[n] + lengths[n]; ++t) {
                const int64_t row = t * heads + h;
                const double *qt = q + row * Dk, *kt = k + row * Dk, *vt = v + row * Dv;
                const double alpha = log_gate ? std::exp(log_gate[row]) : 1.0;
                for (int64_t i = 0; i < Dk * Dv; ++i) S[size_t(i)] *= alpha;
                for (int64_t j = 0; j < Dv; ++j) {
                    double recalled = 0;
                    for (int64_t c = 0; c < Dk; ++c) recalled += kt[c] * S[size_t(c * Dv + j)];
                    u[size_t(j)] = beta[row] * (vt[j] - recalled);
                }
                for (int64_t c = 0; c < Dk; ++c)
                    for (int64_t j = 0; j < Dv; ++j) S[size_t(c * Dv + j)] += kt[c] * u[size_t(j)];
                for (int64_t j = 0; j < Dv; ++j) {
                    double o = 0;
                    for (int64_t c = 0; c < Dk; ++c) o += qt[c] * S[size_t(c * Dv + j)];
                    out[row * Dv + j] = scale * o;
                }
            }
            if (final_state)
                for (int64_t i = 0; i < Dk * Dv; ++i) final_state[state_offset + i] = S[size_t(i)];
        }
}

}  // namespace linarch::reference
