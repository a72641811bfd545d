// CPU LASAD spatial-decay attention (ops/spatial_decay_attention.hpp, mixers.md §9). Raw pointers to
// contiguous row-major arrays; shapes and decays were checked by ops/spatial_decay_attention.cpp.
//     q,k [B,T,H,Dk]   v,o [B,T,H,Dv]   log_decay_row, log_decay_col [H]   T = grid_height · grid_width
//     o_i = scale · Σ_{j≤i} (q_i·k_j) γ_r^{|r_i−r_j|} γ_c^{|c_i−c_j|} v_j     (raster order, causal)
// Work is split over the (batch, head) pairs with OpenMP.
#pragma once
#include <cstdint>

namespace linarch::cpu {

struct SpatialDecayDims {
    int64_t batch, seq_len, heads, key_dim, value_dim;
    int64_t grid_height, grid_width;
};

// The masked O(T²) form: per pair, P = scale · (Q Kᵀ) ⊙ D with D built from the grid coordinates, O = P V.
template <typename T>
void spatial_decay_attention_parallel_forward(T* out, const T* q, const T* k, const T* v, const T* log_decay_row,
                                              const T* log_decay_col, double scale, const SpatialDecayDims& dims);
// dq,dk,dv += ; dlog_decay_row/col [H] += when non-null.
template <typename T>
void spatial_decay_attention_parallel_backward(T* dq, T* dk, T* dv, T* dlog_decay_row, T* dlog_decay_col,
                                               const T* dout, const T* q, const T* k, const T* v,
                                               const T* log_decay_row, const T* log_decay_col, double scale,
                                               const SpatialDecayDims& dims);

// The column-state scan (see the ops header): O(T·Dk·Dv) per pair, W + 2 states of Dk × Dv (one per
// column, and the row's left-to-right and right-to-left scans).
template <typename T>
void spatial_decay_attention_recurrent_forward(T* out, const T* q, const T* k, const T* v, const T* log_decay_row,
                                               const T* log_decay_col, double scale, const SpatialDecayDims& dims);
// dq,dk,dv += ; dlog_decay_row/col [H] += when non-null.
template <typename T>
void spatial_decay_attention_recurrent_backward(T* dq, T* dk, T* dv, T* dlog_decay_row, T* dlog_decay_col,
                                                const T* dout, const T* q, const T* k, const T* v,
                                                const T* log_decay_row, const T* log_decay_col, double scale,
                                                const SpatialDecayDims& dims);

// Chunks of chunk_rows whole grid rows (see the ops header): the masked form inside a chunk, W column
// states carried from chunk to chunk. Same results as the forms above.
template <typename T>
void spatial_decay_attention_chunkwise_forward(T* out, const T* q, const T* k, const T* v, const T* log_decay_row,
                                               const T* log_decay_col, double scale, const SpatialDecayDims& dims,
                                               int64_t chunk_rows);
// dq,dk,dv += ; dlog_decay_row/col [H] += when non-null.
template <typename T>
void spatial_decay_attention_chunkwise_backward(T* dq, T* dk, T* dv, T* dlog_decay_row, T* dlog_decay_col,
                                                const T* dout, const T* q, const T* k, const T* v,
                                                const T* log_decay_row, const T* log_decay_col, double scale,
                                                const SpatialDecayDims& dims, int64_t chunk_rows);

// One decode step at raster `position` (dims.batch = dims.seq_len = 1): the recurrent form's column
// scan advanced by one token. columns [W,H,Dk,Dv], row_scan [H,Dk,Dv], row_keys [W,H,Dk],
// row_values [W,H,Dv]; q,k [H,Dk], v,out [H,Dv].
template <typename T>
void spatial_decay_attention_step(T* out, T* columns, T* row_scan, T* row_keys, T* row_values, const T* q,
                                  const T* k, const T* v, const T* log_decay_row, const T* log_decay_col,
                                  double scale, int64_t position, const SpatialDecayDims& dims);

}  // namespace linarch::cpu
