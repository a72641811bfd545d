// CPU kernel of ops::softmax_attention_decode (one query against a KV cache), float and double.
#pragma once
#include <cstdint>

namespace linarch::cpu {

// o[H,Dv] for query q[H,Dk] at position cached−1 over keys[cached,H,Dk], values[cached,H,Dv];
// alibi_slopes[H] and log_forget[cached,H] may be null; window 0 = unlimited.
template <typename T>
void softmax_attention_decode(T* o, const T* q, const T* keys, const T* values, const T* log_forget,
                              const T* alibi_slopes, int64_t cached, int64_t heads, int64_t dk, int64_t dv,
                              double scale, int64_t window);

}  // namespace linarch::cpu
