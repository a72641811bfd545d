#include "backend/cuda/recurrent_scan.hpp"

#include "backend/cuda/check.cuh"

namespace linarch::cuda {
namespace {

// Dk rounded up to the register array each thread holds.
template <int KMax> struct KeyDim {
    static constexpr int value = KMax;
};

// Where sequence n's tokens are: rows [begin, begin + length) of the [B·T] token axis.
struct Sequence {
    int64_t begin, length;
};

__device__ Sequence sequence_of(const RecurrentScan& a, int64_t n) {
    if (a.cu_seqlens) return {a.cu_seqlens[n], a.cu_seqlens[n + 1] - a.cu_seqlens[n]};
    return {n * a.seq_len, a.seq_len};
}

// The decay of token `row`, head h, key channel i (1 without decay).
__device__ float decay_at(const RecurrentScan& a, int64_t row, int64_t h, int64_t i) {
    if (a.log_gate) {
        const int64_t index = a.vector_gate ? (row * a.heads + h) * a.key_dim + i : row * a.heads + h;
        return expf(a.log_gate[index]);
    }
    if (a.log_decay) return expf(a.log_decay[h]);
    return 1.f;
}

// One token's update of the column s (Dk values), as the header writes it.
template <int KMax>
__device__ void update_column(float (&s)[KMax], const RecurrentScan& a, int64_t row, int64_t h, float v_j) {
    const float* k = a.k + (row * a.heads + h) * a.key_dim;
    if (a.beta) {
        const float decay = decay_at(a, row, h, 0), beta = a.beta[row * a.heads + h];
        float u = 0.f;
#pragma unroll
        for (int i = 0; i < KMax; ++i)
            if (i < a.key_dim) u += k[i] * s[i];
#pragma unroll
        for (int i = 0; i < KMax; ++i)
            if (i < a.key_dim) s[i] = decay * s[i] + beta * (v_j - decay * u) * k[i];
        return;
    }
#pragma unroll
    for (int i = 0; i < KMax; ++i)
        if (i < a.key_dim) s[i] = decay_at(a, row, h, i) * s[i] + k[i] * v_j;
}

template <int KMax>
__device__ void load_column(float (&s)[KMax], const float* state, int64_t value_dim, int64_t j, int64_t key_dim) {
#pragma unroll
    for (int i = 0; i < KMax; ++i) s[i] = (state && i < key_dim) ? state[i * value_dim + j] : 0.f;
}

template <int KMax>
__device__ void store_column(float* state, const float (&s)[KMax], int64_t value_dim, int64_t j, int64_t key_dim) {
#pragma unroll
    for (int i = 0; i < KMax; ++i)
        if (i < key_dim) state[i * value_dim + j] = s[i];
}

// Grid: (heads, sequences); block: the value columns (rounded up to a warp).
template <int KMax> __global__ void forward_kernel(RecurrentScan a, float* o, float* final_state) {
    const int64_t h = blockIdx.x, n = blockIdx.y, j = threadIdx.x;
    const bool active = j < a.value_dim;
    if (!active) return;  // no block-wide synchronisation in the forward
    const int64_t Dk = a.key_dim, Dv = a.value_dim, state_offset = (n * a.heads + h) * Dk * Dv;
    float s[KMax];
    load_column(s, a.initial_state ? a.initial_state + state_offset : nullptr, Dv, j, Dk);
    const Sequence seq = sequence_of(a, n);
    const float scale = float(a.scale);
    for (int64_t t = 0; t < seq.length; ++t) {
        const int64_t row = seq.begin + t;
        update_column(s, a, row, h, a.v[(row * a.heads + h) * Dv + j]);
        const float* q = a.q + (row * a.heads + h) * Dk;
        float out = 0.f;
#pragma unroll
        for (int i = 0; i < KMax; ++i)
            if (i < Dk) out += q[i] * s[i];
        o[(row * a.heads + h) * Dv + j] = scale * out;
    }
    if (final_state) store_column(final_state + state_offset, s, Dv, j, Dk);
}

// Block-wide sums of per-column values: each warp reduces by shuffles, then the warps' partial sums
// meet in shared memory, read after a barrier.
__device__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// partials: shared [warps][slots]. Every thread of the block calls it for the same slots.
__device__ void contribute(float* partials, int slots, int slot, float value) {
    value = warp_sum(value);
    if (threadIdx.x % 32 == 0) partials[(threadIdx.x / 32) * slots + slot] = value;
}

__device__ float slot_total(const float* partials, int slots, int slot) {
    float total = 0.f;
    const int warps = int(blockDim.x) / 32;
    for (int w = 0; w < warps; ++w) total += partials[w * slots + slot];
    return total;
}

// Scratch per (sequence, head): checkpoints [chunks][Dk][Dv] (the state before each chunk), then the
// states after each token of the chunk being walked [kScanChunk][Dk][Dv].
template <int KMax> __global__ void backward_kernel(RecurrentScan a, RecurrentScanGrads g, int64_t chunks) {
    extern __shared__ float partials[];
    const int64_t h = blockIdx.x, n = blockIdx.y, j = threadIdx.x;
    const bool active = j < a.value_dim;
    const int64_t Dk = a.key_dim, Dv = a.value_dim, H = a.heads, state_offset = (n * H + h) * Dk * Dv;
    const int64_t matrix = Dk * Dv;
    float* checkpoints = g.scratch + (n * H + h) * (chunks + kScanChunk) * matrix;
    float* walked = checkpoints + chunks * matrix;
    const Sequence seq = sequence_of(a, n);
    const float scale = float(a.scale);
    const bool delta = a.beta != nullptr;
    // Slots: [0, Dk) dq, [Dk, 2Dk) dk, [2Dk, 3Dk) vector dg; 3Dk dβ, 3Dk+1 scalar dg.
    const int slots = int(3 * Dk + 2);
    const int jj = active ? int(j) : 0;  // inactive lanes compute on column 0 and contribute zeros

    float s[KMax];
    load_column(s, a.initial_state ? a.initial_state + state_offset : nullptr, Dv, jj, Dk);
    for (int64_t t = 0; t < seq.length; ++t) {
        if (t % kScanChunk == 0 && active) store_column(checkpoints + (t / kScanChunk) * matrix, s, Dv, j, Dk);
        const int64_t row = seq.begin + t;
        update_column(s, a, row, h, a.v[(row * H + h) * Dv + jj]);
    }
    float ds[KMax];
    load_column(ds, g.dfinal_state ? g.dfinal_state + state_offset : nullptr, Dv, jj, Dk);
    if (!active)
        for (int i = 0; i < KMax; ++i) ds[i] = 0.f;
    for (int64_t c = (seq.length - 1) / kScanChunk; c >= 0; --c) {
        const int64_t first = c * kScanChunk, count = min(kScanChunk, seq.length - first);
        load_column(s, checkpoints + c * matrix, Dv, jj, Dk);
        for (int64_t t = 0; t < count; ++t) {
            update_column(s, a, seq.begin + first + t, h, a.v[((seq.begin + first + t) * H + h) * Dv + jj]);
            if (active) store_column(walked + t * matrix, s, Dv, j, Dk);
        }
        for (int64_t t = count - 1; t >= 0; --t) {
            const int64_t row = seq.begin + first + t, token = row * H + h;
            const float* prev = t > 0 ? walked + (t - 1) * matrix : checkpoints + c * matrix;
            const float* now = walked + t * matrix;
            const float* q = a.q + token * Dk;
            const float* k = a.k + token * Dk;
            const float v_j = a.v[token * Dv + jj];
            const float do_j = active ? g.dout[token * Dv + j] : 0.f;
            float s_prev[KMax];
#pragma unroll
            for (int i = 0; i < KMax; ++i) s_prev[i] = i < Dk ? prev[i * Dv + jj] : 0.f;
            // o_j = scale · q·s_t
#pragma unroll
            for (int i = 0; i < KMax; ++i)
                if (i < Dk) {
                    ds[i] += scale * do_j * q[i];
                    contribute(partials, slots, i, scale * do_j * now[i * Dv + jj]);
                }
            float w = 0.f;
#pragma unroll
            for (int i = 0; i < KMax; ++i)
                if (i < Dk) w += k[i] * ds[i];
            if (delta) {
                const float decay = decay_at(a, row, h, 0), beta = a.beta[token];
                float u = 0.f, ds_dot_prev = 0.f;
#pragma unroll
                for (int i = 0; i < KMax; ++i)
                    if (i < Dk) {
                        u += k[i] * s_prev[i];
                        ds_dot_prev += ds[i] * s_prev[i];
                    }
                if (active) g.dv[token * Dv + j] += beta * w;
                const float innovation = v_j - decay * u;
#pragma unroll
                for (int i = 0; i < KMax; ++i)
                    if (i < Dk) {
                        const float dk_i = beta * innovation * ds[i] - decay * beta * w * s_prev[i];
                        contribute(partials, slots, int(Dk) + i, active ? dk_i : 0.f);
                        ds[i] = decay * (ds[i] - beta * k[i] * w);
                    }
                contribute(partials, slots, int(3 * Dk), active ? w * innovation : 0.f);
                contribute(partials, slots, int(3 * Dk) + 1, active ? decay * (ds_dot_prev - beta * u * w) : 0.f);
            } else {
                if (active) g.dv[token * Dv + j] += w;
                float scalar_dg = 0.f;
#pragma unroll
                for (int i = 0; i < KMax; ++i)
                    if (i < Dk) {
                        const float decay = decay_at(a, row, h, i);
                        contribute(partials, slots, int(Dk) + i, active ? v_j * ds[i] : 0.f);
                        const float dg_i = active ? decay * ds[i] * s_prev[i] : 0.f;
                        if (a.vector_gate) contribute(partials, slots, int(2 * Dk) + i, dg_i);
                        scalar_dg += dg_i;
                        ds[i] *= decay;
                    }
                contribute(partials, slots, int(3 * Dk) + 1, scalar_dg);
            }
            __syncthreads();
            for (int64_t i = threadIdx.x; i < Dk; i += blockDim.x) {
                g.dq[token * Dk + i] += slot_total(partials, slots, int(i));
                g.dk[token * Dk + i] += slot_total(partials, slots, int(Dk + i));
                if (g.dlog_gate && a.vector_gate) g.dlog_gate[token * Dk + i] += slot_total(partials, slots, int(2 * Dk + i));
            }
            if (threadIdx.x == 0) {
                if (delta) g.dbeta[token] += slot_total(partials, slots, int(3 * Dk));
                if (g.dlog_gate && !a.vector_gate) g.dlog_gate[token] += slot_total(partials, slots, int(3 * Dk + 1));
            }
            __syncthreads();  // the partials are rewritten by the next token
        }
    }
    if (g.dinitial_state && active) {
#pragma unroll
        for (int i = 0; i < KMax; ++i)
            if (i < Dk) g.dinitial_state[state_offset + i * Dv + j] += ds[i];
    }
}

unsigned block_threads(int64_t value_dim) { return unsigned((value_dim + 31) / 32 * 32); }

template <typename Launch> void with_key_dim(int64_t key_dim, Launch&& launch) {
    if (key_dim <= 16) return launch(KeyDim<16>{});
    if (key_dim <= 32) return launch(KeyDim<32>{});
    if (key_dim <= 64) return launch(KeyDim<64>{});
    return launch(KeyDim<128>{});
}

}  // namespace

void recurrent_scan_forward(const RecurrentScan& args, float* o, float* final_state) {
    const dim3 grid(unsigned(args.heads), unsigned(args.sequences));
    with_key_dim(args.key_dim, [&](auto tag) {
        constexpr int KMax = decltype(tag)::value;
        forward_kernel<KMax><<<grid, block_threads(args.value_dim), 0, cudaStreamPerThread>>>(args, o, final_state);
    });
    check_launch("recurrent_scan_forward");
}

size_t recurrent_scan_scratch_floats(const RecurrentScan& args, int64_t max_length) {
    const int64_t chunks = (max_length + kScanChunk - 1) / kScanChunk;
    return size_t(args.sequences * args.heads * (chunks + kScanChunk) * args.key_dim * args.value_dim);
}

void recurrent_scan_backward(const RecurrentScan& args, const RecurrentScanGrads& grads, int64_t max_length) {
    const int64_t chunks = (max_length + kScanChunk - 1) / kScanChunk;
    const dim3 grid(unsigned(args.heads), unsigned(args.sequences));
    const unsigned threads = block_threads(args.value_dim);
    const size_t shared = size_t(threads / 32) * size_t(3 * args.key_dim + 2) * sizeof(float);
    with_key_dim(args.key_dim, [&](auto tag) {
        constexpr int KMax = decltype(tag)::value;
        backward_kernel<KMax><<<grid, threads, shared, cudaStreamPerThread>>>(args, grads, chunks);
    });
    check_launch("recurrent_scan_backward");
}

}  // namespace linarch::cuda
