// The sequences a mixer kernel walks: each batch row, or with cu_seqlens (batch 1) each packed
// sequence. Shared by the CPU mixer kernels so packing means the same thing in all of them.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace linarch::cpu {

// One sequence: `row0` is its first token as a row of the flattened [B·T] token axis, `length` its
// tokens, `state` its index into the [N, …] states.
struct Sequence {
    int64_t row0, length, state;
};

inline std::vector<Sequence> sequences_of(int64_t batch, int64_t seq_len, std::span<const int64_t> cu_seqlens) {
    std::vector<Sequence> sequences;
    if (cu_seqlens.empty())
        for (int64_t b = 0; b < batch; ++b) sequences.push_back({b * seq_len, seq_len, b});
    else
        for (size_t n = 0; n + 1 < cu_seqlens.size(); ++n)
            sequences.push_back({cu_seqlens[n], cu_seqlens[n + 1] - cu_seqlens[n], int64_t(n)});
    return sequences;
}

inline int64_t longest(const std::vector<Sequence>& sequences) {
    int64_t length = 0;
    for (const Sequence& s : sequences) length = std::max(length, s.length);
    return length;
}

}  // namespace linarch::cpu
