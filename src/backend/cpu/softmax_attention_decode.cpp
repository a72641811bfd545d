#include "backend/cpu/softmax_attention_decode.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace linarch::cpu {

template <typename T>
void softmax_attention_decode(T* o, const T* q, const T* keys, const T* values, const T* log_forget,
                              const T* alibi_slopes, int64_t cached, int64_t heads, int64_t dk, int64_t dv,
                              double scale, int64_t window) {
    const int64_t t = cached - 1;
    const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
    std::vector<double> logits(static_cast<size_t>(cached));
    for (int64_t h = 0; h < heads; ++h) {
        // FoX bias of key j: Σ_{l=j+1..t} log_forget_l, accumulated backwards from the query.
        double forget_sum = 0, max_logit = -std::numeric_limits<double>::infinity();
        for (int64_t j = t; j >= first; --j) {
            double dot = 0;
            for (int64_t c = 0; c < dk; ++c) dot += double(q[h * dk + c]) * double(keys[(j * heads + h) * dk + c]);
            double logit = scale * dot + forget_sum;
            if (alibi_slopes) logit -= double(alibi_slopes[h]) * double(t - j);
            if (log_forget) forget_sum += double(log_forget[j * heads + h]);
            logits[size_t(j)] = logit;
            max_logit = std::max(max_logit, logit);
        }
        double total = 0;
        std::vector<double> acc(static_cast<size_t>(dv), 0.0);
        for (int64_t j = first; j <= t; ++j) {
            const double w = std::exp(logits[size_t(j)] - max_logit);
            total += w;
            for (int64_t c = 0; c < dv; ++c) acc[size_t(c)] += w * double(values[(j * heads + h) * dv + c]);
        }
        for (int64_t c = 0; c < dv; ++c) o[h * dv + c] = T(acc[size_t(c)] / total);
    }
}

template void softmax_attention_decode<float>(float*, const float*, const float*, const float*, const float*,
                                              const float*, int64_t, int64_t, int64_t, int64_t, double, int64_t);
template void softmax_attention_decode<double>(double*, const double*, const double*, const double*, const double*,
                                               const double*, int64_t, int64_t, int64_t, int64_t, double, int64_t);

}  // namespace linarch::cpu
