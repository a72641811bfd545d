// Float64 reference: every weight computed from the two tokens' grid coordinates, summed directly.
#include "backend/cpu/reference_spatial_decay_attention.hpp"

#include <cmath>
#include <cstdlib>

namespace linarch::reference {

// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  log_decay_row, log_decay_col [H]
void spatial_decay_attention(double* out, const double* q, const double* k, const double* v,
                             const SpatialDecayAttentionProblem& p) {
    const int64_t W = p.grid_width, T = p.grid_height * p.grid_width, H = p.heads, Dk = p.key_dim,
                  Dv = p.value_dim;
    for (int64_t b = 0; b < p.batch; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < T; ++i) {
                const double* qi = q + ((b * T + i) * H + h) * Dk;
                double* oi = out + ((b * T + i) * H + h) * Dv;
                for (int64_t e = 0; e < Dv; ++e) oi[e] = 0;
                for (int64_t j = 0; j <= i; ++j) {
                    const double* kj = k + ((b * T + j) * H + h) * Dk;
                    const double* vj = v + ((b * T + j) * H + h) * Dv;
                    const int64_t row_distance = std::llabs(i / W - j / W), col_distance = std::llabs(i % W - j % W);
                    const double decay = std::exp(p.log_decay_row[h] * double(row_distance) +
                                                  p.log_decay_col[h] * double(col_distance));
                    double score = 0;
                    for (int64_t c = 0; c < Dk; ++c) score += qi[c] * kj[c];
                    for (int64_t e = 0; e < Dv; ++e) oi[e] += p.scale * score * decay * vj[e];
                }
            }
}

}  // namespace linarch::reference
