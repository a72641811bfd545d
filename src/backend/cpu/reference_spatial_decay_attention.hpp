// Float64 reference definition of LASAD spatial-decay attention (mixers.md §9), written straight from
// the definition with explicit loops and no BLAS, independently of the CPU parallel and recurrent forms.
#pragma once
#include <cstdint>

namespace linarch::reference {

// Per batch row b and head h, token t at grid row t / W and column t % W (raster order):
//     o_i = scale · Σ_{j≤i} (q_i·k_j) exp(log_decay_row[h]·|r_i − r_j| + log_decay_col[h]·|c_i − c_j|) v_j
// q,k [B,T,H,Dk]  v,out [B,T,H,Dv]  log_decay_row, log_decay_col [H]  T = grid_height · grid_width
struct SpatialDecayAttentionProblem {
    int64_t batch, grid_height, grid_width, heads, key_dim, value_dim;
    const double* log_decay_row;
    const double* log_decay_col;
    double scale;
};
void spatial_decay_attention(double* out, const double* q, const double* k, const double* v,
                             const SpatialDecayAttentionProblem& problem);

}  // namespace linarch::reference
