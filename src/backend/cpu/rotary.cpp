// CPU rotary position embedding. Per token t the D/2 (cos, sin) pairs are computed once, in
// float64, and applied to the B·H rows of that token; OpenMP splits the tokens.
#include "backend/cpu/rotary.hpp"

#include <cmath>
#include <vector>

namespace linarch::cpu {
namespace {

// A parallel region costs microseconds to open: tiny problems stay on the calling thread.
inline bool worth_threads(const RopeDims& d) {
    return d.seq_len > 1 && d.batch * d.seq_len * d.heads * d.head_dim >= (int64_t(1) << 15);
}

// dst = R(sign · φ) src (accumulate: dst += ...), pair by pair, for every row of every token.
template <typename T>
void rotate(T* dst, const T* src, const int64_t* positions, const T* frequencies, const RopeDims& d, double sign,
            bool accumulate) {
    const int64_t pairs = d.head_dim / 2, row = d.heads * d.head_dim;
#pragma omp parallel if (worth_threads(d))
    {
        std::vector<T> cosines(static_cast<size_t>(pairs)), sines(static_cast<size_t>(pairs));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < d.seq_len; ++t) {
            const double position = positions ? double(positions[t]) : double(t);
            for (int64_t i = 0; i < pairs; ++i) {
                const double angle = sign * position * double(frequencies[i]);
                cosines[size_t(i)] = T(std::cos(angle));
                sines[size_t(i)] = T(std::sin(angle));
            }
            for (int64_t b = 0; b < d.batch; ++b) {
                const int64_t offset = (b * d.seq_len + t) * row;
                // Both elements of a pair are read before either is written, so dst may equal src.
                for (int64_t n = 0; n < d.heads * pairs; ++n) {
                    const int64_t i = n % pairs, at = offset + 2 * n;
                    const T x0 = src[at], x1 = src[at + 1], c = cosines[size_t(i)], s = sines[size_t(i)];
                    const T y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
                    if (accumulate) {
                        dst[at] += y0;
                        dst[at + 1] += y1;
                    } else {
                        dst[at] = y0;
                        dst[at + 1] = y1;
                    }
                }
            }
        }
    }
}

}  // namespace

template <typename T>
void rope_forward(T* out, const T* x, const int64_t* positions, const T* frequencies, const RopeDims& d) {
    rotate(out, x, positions, frequencies, d, 1.0, false);
}

template <typename T>
void rope_backward(T* dx, const T* dout, const int64_t* positions, const T* frequencies, const RopeDims& d) {
    rotate(dx, dout, positions, frequencies, d, -1.0, true);
}

#define LINARCH_INSTANTIATE(T)                                                                          \
    template void rope_forward<T>(T*, const T*, const int64_t*, const T*, const RopeDims&);             \
    template void rope_backward<T>(T*, const T*, const int64_t*, const T*, const RopeDims&);
LINARCH_INSTANTIATE(float)
LINARCH_INSTANTIATE(double)
#undef LINARCH_INSTANTIATE

}  // namespace linarch::cpu
