// The tile loop of the fused LM head + sampler. Why each mode is exact: ops/fused_sampling.hpp.
//   per row block (≤ 256 rows), per vocabulary tile (OpenMP over tiles):
//     logits[rows, tile] = hidden · weight[tile]ᵀ           (one GEMM into a small buffer)
//     per row: logsumexp partials, then greedy / Gumbel-max / top candidates
//   merge the per-thread results (ties to the lower index) and the partials (in tile order)
#include "backend/cpu/fused_sampling.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace linarch::cpu {
namespace {

// Rows per pass over the vocabulary: bounds the tile buffer (rows × tile) and the logsumexp partials
// (tiles × rows) for any B, while a decode batch reads the weight once.
constexpr int64_t kRowBlock = 256;
// Rows whose logits are materialised together when a kept set outgrows the candidates: one weight
// read per 64 rows into a [64, V] buffer, bounded whatever B (as the LM-head cross-entropy's 128-row
// blocks); fewer rows would repack the whole weight for each GEMM.
constexpr int64_t kMaterialisedRows = 64;
// Below this many multiply-adds (~0.1 ms) a pass runs on one thread: opening a team, and its
// barrier on a busy machine, cost more than the work. Likewise for materialised rows below this
// many entries (each an exp and a noise word).
constexpr int64_t kParallelMinWork = int64_t(1) << 18;
constexpr int64_t kParallelMinEntries = int64_t(1) << 14;

constexpr double kInf = std::numeric_limits<double>::infinity();
using noise::gumbel_from_word;
using noise::kTwo32Plus1;

// c[m,n] = a[m,k] · b[n,k]ᵀ with c's leading dimension ldc. Inside our parallel region the OpenMP
// build of OpenBLAS runs single-threaded; outside one it may use its pool.
template <typename T> void gemm_nt(int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c, int64_t ldc) {
    if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, a, int(k), b, int(k),
                    0.0f, c, int(ldc));
    else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0, a, int(k), b, int(k), 0.0,
                    c, int(ldc));
}

// e^x for x ≤ 0 — the only arguments here are (logit − max)/T — to 1 ulp, in arithmetic only, so the
// loops over it vectorise (glibc's exp does not without -ffast-math; this is 6-8× faster per entry).
// x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two, Cody & Waite 1980), e^r by its Taylor series to
// r¹³ (remainder < 2⁻⁵⁷), and 2ⁿ written into the exponent bits. Below −708 the result is
// e^−708 ≈ 3e-308 instead of less: every weight is relative to the row's largest, which is 1, so such terms vanish
// from every sum and fail every min-p test.
inline double exp_nonpositive(double x) {
    constexpr double kLog2e = 1.4426950408889634, kLn2High = 6.93147180369123816490e-01,
                     kLn2Low = 1.90821492927058770002e-10, kRound = 0x1.8p52;
    // The clamp is a select on the bit patterns (a floating-point select does not vectorise under
    // -ftrapping-math): with the sign bit set (+0 becomes −0), a larger pattern is a more negative number.
    constexpr int64_t kFloor = std::bit_cast<int64_t>(-708.0);
    const int64_t bits = std::bit_cast<int64_t>(x) | std::numeric_limits<int64_t>::min();
    const double clamped = std::bit_cast<double>(bits < kFloor ? bits : kFloor);
    const double shifted = clamped * kLog2e + kRound;  // n = round(x·log2 e) lands in the low mantissa bits
    const double n = shifted - kRound;
    const double r = (clamped - n * kLn2High) - n * kLn2Low;
    double poly = 1.0 / 6227020800.0;  // 1/13!
    for (const double coefficient : {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                     1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0,
                                     0.5, 1.0, 1.0})
        poly = poly * r + coefficient;
    const int64_t exponent = std::bit_cast<int64_t>(shifted) - std::bit_cast<int64_t>(kRound) + 1023;
    return poly * std::bit_cast<double>(exponent << 52);
}

// The weight exp((l − max)/T) of a logit, relative to the row's largest (max).
inline double relative_weight(double logit, double max, double inv_temperature) {
    return exp_nonpositive((logit - max) * inv_temperature);
}

// An upper bound of gumbel_from_word(r) for the price of a bit count: −log(−log u) ≤ −log(1 − u)
// (as −log u ≥ 1 − u), and 1 − u = (s + 1)/(2³² + 1) with s = ~r ≥ 2^(bit_width(s) − 1). The margin
// covers the rounding of the logs (~1e-15): a token whose ceiling cannot reach the best score could
// not have reached it with its exact noise either. For most words (s ≥ 2³¹) the bound is log 2.
class GumbelCeiling {
public:
    GumbelCeiling() {
        for (int width = 0; width <= 32; ++width)
            by_width_[width] = std::log(kTwo32Plus1) - double(std::max(width - 1, 0)) * std::log(2.0) + 1e-6;
    }
    double operator()(uint32_t r) const { return by_width_[std::bit_width(~r)]; }

private:
    double by_width_[33];
};

// words[4i + j] = word j of philox4x32(seed, stream, first + i), i < count: core/rng.cpp's rounds on
// eight counters at once, so the 32×32→64-bit multiplies vectorise.
void philox_words(const NoiseKey& key, uint64_t first, int64_t count, uint32_t* words) {
    constexpr int kLanes = 8;
    constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u, kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
    for (int64_t i0 = 0; i0 < count; i0 += kLanes) {
        uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
        for (int lane = 0; lane < kLanes; ++lane) {
            const uint64_t counter = first + uint64_t(i0 + lane);
            c0[lane] = uint32_t(counter);
            c1[lane] = uint32_t(counter >> 32);
            c2[lane] = uint32_t(key.stream);
            c3[lane] = uint32_t(key.stream >> 32);
        }
        uint32_t k0 = uint32_t(key.seed), k1 = uint32_t(key.seed >> 32);
        for (int round = 0; round < 10; ++round) {
#pragma omp simd
            for (int lane = 0; lane < kLanes; ++lane) {
                const uint64_t p0 = uint64_t(kMul0) * c0[lane], p1 = uint64_t(kMul1) * c2[lane];
                const uint32_t n0 = uint32_t(p1 >> 32) ^ c1[lane] ^ k0;
                const uint32_t n2 = uint32_t(p0 >> 32) ^ c3[lane] ^ k1;
                c0[lane] = n0;
                c1[lane] = uint32_t(p1);
                c2[lane] = n2;
                c3[lane] = uint32_t(p0);
            }
            k0 += kWeyl0;
            k1 += kWeyl1;
        }
        const int64_t lanes = std::min<int64_t>(kLanes, count - i0);
        for (int64_t lane = 0; lane < lanes; ++lane) {
            uint32_t* block = words + 4 * (i0 + lane);
            block[0] = c0[lane], block[1] = c1[lane], block[2] = c2[lane], block[3] = c3[lane];
        }
    }
}

// The best (score, index) so far. Ties go to the lower vocabulary index, so merging per-thread bests
// in any order gives one winner.
struct Best {
    double score = -kInf;
    int64_t index = -1;
    double logit = 0;
    bool beaten_by(double other_score, int64_t other_index) const {
        return index < 0 || other_score > score || (other_score == score && other_index < index);
    }
};

// A logit and its vocabulary index; `ahead` is the plain sampler's descending order, ties by index.
template <typename T> struct Candidate {
    T logit;
    int32_t index;
};
struct Ahead {
    template <typename T> bool operator()(const Candidate<T>& a, const Candidate<T>& b) const {
        return a.logit > b.logit || (a.logit == b.logit && a.index < b.index);
    }
};
constexpr Ahead ahead;  // an object, not a function, so the sorts inline it

// Every logit of one row (as seen by one thread) that can still be among its `cap` largest. The
// threshold is the cap-th largest logit kept so far: it only rises, and a logit below it has at least
// cap logits ahead of it. Kept logits are pruned back to cap when 2·cap have gathered (amortised O(1)).
template <typename T> class TopCandidates {
public:
    TopCandidates(int64_t cap, int64_t vocab_size) : cap_(cap) {
        kept_.reserve(size_t(std::min(2 * cap, vocab_size)));
    }
    // Offers logits[i] as entry v0 + i, i < width.
    void offer(const T* logits, int64_t v0, int64_t width) {
        for (int64_t i = 0; i < width; ++i) {
            if (logits[i] < threshold_) continue;
            kept_.push_back({logits[i], int32_t(v0 + i)});
            if (int64_t(kept_.size()) >= 2 * cap_) prune();
        }
    }
    const std::vector<Candidate<T>>& kept() const { return kept_; }

private:
    void prune() {
        std::nth_element(kept_.begin(), kept_.begin() + (cap_ - 1), kept_.end(), ahead);
        kept_.resize(size_t(cap_));
        threshold_ = kept_.back().logit;  // the cap-th in order: every kept logit is ≥ it
    }
    int64_t cap_;
    T threshold_ = -std::numeric_limits<T>::infinity();
    std::vector<Candidate<T>> kept_;
};

// max and Σ exp((l − max)/T) over one row of one tile, in double: the online logsumexp's partials
// (Milakov & Gimelshein 2018), merged in tile order so the total is the same on any thread count.
struct LogSumExp {
    double max = -kInf, sum = 0;
};

template <typename T> LogSumExp tile_log_sum_exp(const T* logits, int64_t width, double inv_temperature) {
    T tile_max = logits[0];
#pragma omp simd reduction(max : tile_max)
    for (int64_t i = 1; i < width; ++i) tile_max = std::max(tile_max, logits[i]);
    const double max = double(tile_max);
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < width; ++i) sum += relative_weight(double(logits[i]), max, inv_temperature);
    return {max, sum};
}

double row_max(const LogSumExp* tiles, int64_t count, int64_t stride) {
    double max = -kInf;
    for (int64_t t = 0; t < count; ++t) max = std::max(max, tiles[t * stride].max);
    return max;
}

// Σ_v exp((l_v − max)/T) over a row, for its largest logit max, from the partials of its tiles.
double total_weight(const LogSumExp* tiles, int64_t count, int64_t stride, double max, double inv_temperature) {
    double total = 0;
    for (int64_t t = 0; t < count; ++t)
        total += tiles[t * stride].sum * relative_weight(tiles[t * stride].max, max, inv_temperature);
    return total;
}

// log Σ_v exp(l_v) from the partials at temperature 1.
double log_sum_exp(const LogSumExp* tiles, int64_t count, int64_t stride) {
    const double max = row_max(tiles, count, stride);
    return max + std::log(total_weight(tiles, count, stride, max, 1.0));
}

// What the tile pass learned about a row that goes on to be materialised: its largest logit, its total
// weight at temperature T (for top-p without top-k) and log Σ exp(l) (for log-probabilities).
struct RowSummary {
    double max_logit = 0, total = 0, log_sum_exp = 0;
};

// Whether (logit, index) is `boundary` or ahead of it: the kept set of a truncated row is every entry
// at or ahead of its last kept entry.
template <typename T> bool at_or_ahead(T logit, int64_t index, const Candidate<T>& boundary) {
    return logit > boundary.logit || (logit == boundary.logit && index <= boundary.index);
}

// Gumbel-max over one tile of one row: best ← the tile's argmax of l·(1/T) + g if it beats best. With
// a boundary, only entries at or ahead of it take part.
template <typename T>
void gumbel_max_tile(Best& best, const T* logits, int64_t v0, int64_t width, double inv_temperature,
                     const NoiseKey& key, uint32_t* words, const Candidate<T>* boundary = nullptr) {
    static const GumbelCeiling ceiling;
    const int64_t first_block = v0 / 4, last_block = (v0 + width - 1) / 4;
    philox_words(key, key.counter + uint64_t(first_block), last_block - first_block + 1, words);
    const uint32_t* word = words + (v0 - 4 * first_block);  // word[i] is entry v0 + i's
    for (int64_t i = 0; i < width; ++i) {
        const double scaled = double(logits[i]) * inv_temperature;
        if (scaled + ceiling(word[i]) < best.score) continue;
        if (boundary && !at_or_ahead(logits[i], v0 + i, *boundary)) continue;
        const double score = scaled + gumbel_from_word(word[i]);
        if (best.beaten_by(score, v0 + i)) best = {score, v0 + i, double(logits[i])};
    }
}

enum class Mode {
    greedy,          // T = 0: argmax
    gumbel,          // temperature only: Gumbel-max in the tile pass
    candidates,      // top-k ≤ candidates, top-p or min-p: keep the largest logits, decide after the pass
    materialised,    // top-k > candidates: every row's logits are formed (64 rows at a time)
};

bool top_k_active(const FusedSamplingParams& p, int64_t V) { return p.top_k > 0 && p.top_k < V; }

Mode choose_mode(const FusedSamplingParams& p, int64_t V) {
    if (p.temperature == 0) return Mode::greedy;
    if (!top_k_active(p, V) && p.top_p == 1 && p.min_p == 0) return Mode::gumbel;
    if (top_k_active(p, V) && p.top_k > p.candidates) return Mode::materialised;
    return Mode::candidates;
}

// The plain sampler's rule (infer/sampling.cpp) on the `count` largest logits of a row, sorted by
// `ahead`, with weights w = exp((l − max)/T): top-k keeps a prefix; top-p the smallest prefix whose
// mass reaches p of the total (the row's, from the tile partials, or the top-k's); min-p the prefix
// with w ≥ min_p · w_max; then Gumbel-max over the survivors with the row's own noise. Returns the
// chosen position in `sorted`, or −1 when the kept prefix may run past the candidates (count < V
// without top-k).
template <typename T>
int64_t draw_from_top(const Candidate<T>* sorted, int64_t count, int64_t V, double row_total,
                      const FusedSamplingParams& p, const NoiseKey& key) {
    const bool top_k = top_k_active(p, V);
    const bool truncated = count < V && !top_k;  // the row goes on past the candidates
    const double max_logit = double(sorted[0].logit), inv_temperature = 1.0 / p.temperature;
    const auto weight = [&](int64_t i) {
        return relative_weight(double(sorted[i].logit), max_logit, inv_temperature);
    };
    int64_t keep = top_k ? std::min(count, p.top_k) : count;
    if (p.top_p < 1) {
        double total = row_total;
        if (top_k) {
            total = 0;
            for (int64_t i = 0; i < keep; ++i) total += weight(i);
        }
        double mass = 0;
        int64_t cut = 0;
        while (cut < keep && mass < p.top_p * total) mass += weight(cut++);
        if (mass < p.top_p * total && truncated) return -1;
        keep = std::max<int64_t>(cut, 1);
    } else if (p.min_p > 0 && truncated && weight(count - 1) >= p.min_p) {
        return -1;  // every candidate passes min-p, and so may the logits after them
    }
    if (p.min_p > 0) {
        int64_t cut = 1;
        while (cut < keep && weight(cut) >= p.min_p) ++cut;  // w_max = 1
        keep = cut;
    }
    Best best;  // over vocabulary indices; the position is found again below
    for (int64_t i = 0; i < keep; ++i) {
        const double score = double(sorted[i].logit) * inv_temperature + gumbel_noise(key, sorted[i].index);
        if (best.beaten_by(score, sorted[i].index)) best = {score, sorted[i].index, double(sorted[i].logit)};
    }
    int64_t position = 0;
    while (sorted[position].index != best.index) ++position;
    return position;
}

// The last entry of the smallest prefix, in `ahead` order, of the entries [first, last) of a row whose
// weight exp((l − max)/T) reaches target, in O(n) without sorting: the entries fall into buckets of
// 1/16 nat by (max − l)/T — a monotone function of the logit, so the buckets are ordered like the
// entries (the last bucket takes everything beyond 64 nats) — whole buckets are taken while the mass
// falls short, and only the bucket where it reaches target is sorted. If rounding leaves the mass of
// the whole range short of target, the whole range is the prefix.
template <typename T>
Candidate<T> mass_prefix_end(const Candidate<T>* first, const Candidate<T>* last, double target, double max,
                             double inv_temperature) {
    constexpr int64_t kBucketsPerNat = 16, kBuckets = 64 * kBucketsPerNat + 1;
    const auto bucket = [&](const Candidate<T>& c) {
        return int64_t(std::min((max - double(c.logit)) * inv_temperature * kBucketsPerNat, double(kBuckets - 1)));
    };
    const int64_t n = last - first;
    std::vector<double> weights(static_cast<size_t>(n));
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) weights[size_t(i)] = relative_weight(double(first[i].logit), max, inv_temperature);
    std::vector<double> bucket_mass(static_cast<size_t>(kBuckets), 0.0);
    for (int64_t i = 0; i < n; ++i) bucket_mass[size_t(bucket(first[i]))] += weights[size_t(i)];
    double above = 0;  // mass of the buckets before the cut's
    int64_t cut_bucket = 0;
    for (int64_t k = 0; k < kBuckets; ++k) {
        if (bucket_mass[size_t(k)] == 0) continue;
        cut_bucket = k;
        if (above + bucket_mass[size_t(k)] >= target) break;
        above += bucket_mass[size_t(k)];
    }
    std::vector<Candidate<T>> in_cut_bucket;
    for (const Candidate<T>* c = first; c < last; ++c)
        if (bucket(*c) == cut_bucket) in_cut_bucket.push_back(*c);
    std::sort(in_cut_bucket.begin(), in_cut_bucket.end(), ahead);
    size_t taken = 0;
    while (taken < in_cut_bucket.size() && above < target)
        above += relative_weight(double(in_cut_bucket[taken++].logit), max, inv_temperature);
    return in_cut_bucket[std::max<size_t>(taken, 1) - 1];
}

// The last kept entry of a whole row under the plain sampler's rule (top-k, then top-p, then min-p),
// with `keys` the row's (logit, index) pairs, reordered here.
template <typename T>
Candidate<T> kept_boundary(std::vector<Candidate<T>>& keys, const RowSummary& row, const FusedSamplingParams& p) {
    const int64_t V = int64_t(keys.size());
    const double inv_temperature = 1.0 / p.temperature;
    const auto weight = [&](const Candidate<T>& c) {
        return relative_weight(double(c.logit), row.max_logit, inv_temperature);
    };
    const Candidate<T>* first = keys.data();
    int64_t kept = V;  // [first, first + kept) holds the kept set so far (and maybe more)
    std::optional<Candidate<T>> boundary;
    double total = row.total;
    if (top_k_active(p, V)) {
        kept = p.top_k;
        std::nth_element(keys.begin(), keys.begin() + (kept - 1), keys.end(), ahead);
        boundary = keys[size_t(kept - 1)];
        total = 0;
        for (int64_t i = 0; i < kept; ++i) total += weight(first[i]);
    }
    if (p.top_p < 1) boundary = mass_prefix_end(first, first + kept, p.top_p * total, row.max_logit, inv_temperature);
    if (p.min_p > 0) {
        // Min-p keeps the entries of weight ≥ min_p (the top one's weight is 1): its boundary is the
        // last such entry still kept.
        std::optional<Candidate<T>> last_passing;
        for (const Candidate<T>* c = first; c < first + kept; ++c)
            if ((!boundary || !ahead(*boundary, *c)) && (!last_passing || ahead(*last_passing, *c)) &&
                weight(*c) >= p.min_p)
                last_passing = *c;
        boundary = last_passing;
    }
    return *boundary;
}

// A row to materialise, with what the tile pass learned of it (none when there was no tile pass).
struct PendingRow {
    int64_t row;
    std::optional<RowSummary> summary;
};

// Rows whose draw needs the whole row: formed kMaterialisedRows at a time ([rows, V], one GEMM); the
// kept set is found by selection (no sort of the row), then Gumbel-max over it in index order.
template <typename T>
void sample_materialised(const std::vector<PendingRow>& pending, int32_t* tokens, T* logprobs, const T* hidden,
                         const T* weight, const NoiseKey* keys, const FusedSamplingParams& p, int64_t D, int64_t V) {
    if (pending.empty()) return;
    const int64_t tile = std::min(p.vocab_tile, V);
    const int64_t block = std::min<int64_t>(kMaterialisedRows, int64_t(pending.size()));
    const double inv_temperature = 1.0 / p.temperature;
    std::vector<T> gathered(size_t(block * D)), logits(size_t(block * V));
    for (size_t r0 = 0; r0 < pending.size(); r0 += size_t(block)) {
        const int64_t count = std::min<int64_t>(block, int64_t(pending.size() - r0));
        for (int64_t i = 0; i < count; ++i) {
            const T* source = hidden + pending[r0 + size_t(i)].row * D;
            std::copy(source, source + D, gathered.begin() + i * D);
        }
        gemm_nt(count, V, D, gathered.data(), weight, logits.data(), V);
#pragma omp parallel for schedule(dynamic) if (count > 1 && count * V >= kParallelMinEntries)
        for (int64_t i = 0; i < count; ++i) {
            const PendingRow& pending_row = pending[r0 + size_t(i)];
            const int64_t b = pending_row.row;
            const T* row = logits.data() + i * V;
            RowSummary summary;
            if (pending_row.summary) {
                summary = *pending_row.summary;
            } else {  // only top-k > candidates comes here: no row total needed, it is over the top k
                summary.max_logit = double(*std::max_element(row, row + V));
                if (logprobs) {
                    std::vector<LogSumExp> raw;
                    for (int64_t v0 = 0; v0 < V; v0 += tile)
                        raw.push_back(tile_log_sum_exp(row + v0, std::min(tile, V - v0), 1.0));
                    summary.log_sum_exp = log_sum_exp(raw.data(), int64_t(raw.size()), 1);
                }
            }
            std::vector<Candidate<T>> pairs(static_cast<size_t>(V));
            for (int64_t v = 0; v < V; ++v) pairs[size_t(v)] = {row[v], int32_t(v)};
            const Candidate<T> boundary = kept_boundary(pairs, summary, p);
            Best best;
            std::vector<uint32_t> words(size_t(4 * (tile / 4 + 2)));
            for (int64_t v0 = 0; v0 < V; v0 += tile)
                gumbel_max_tile(best, row + v0, v0, std::min(tile, V - v0), inv_temperature, keys[b], words.data(),
                                &boundary);
            tokens[b] = int32_t(best.index);
            if (logprobs) logprobs[b] = T(best.logit - summary.log_sum_exp);
        }
    }
}

// What one thread gathers over its tiles, per row of the block.
template <typename T> struct ThreadRows {
    std::vector<Best> bests;
    std::vector<TopCandidates<T>> candidates;
};

// One pass over the vocabulary for `rows` rows (≤ kRowBlock).
template <typename T>
void sample_row_block(int32_t* tokens, T* logprobs, const T* hidden, const T* weight, const NoiseKey* keys,
                      const FusedSamplingParams& p, int64_t rows, int64_t D, int64_t V) {
    const Mode mode = choose_mode(p, V);
    std::vector<PendingRow> to_materialise;
    if (mode == Mode::materialised) {
        for (int64_t b = 0; b < rows; ++b) to_materialise.push_back({b, std::nullopt});
        sample_materialised(to_materialise, tokens, logprobs, hidden, weight, keys, p, D, V);
        return;
    }
    const int64_t tile = std::min(p.vocab_tile, V), n_tiles = (V + tile - 1) / tile;
    const bool want_raw = logprobs != nullptr;
    const bool want_scaled = mode == Mode::candidates && p.top_p < 1 && !top_k_active(p, V);
    const int64_t cap = top_k_active(p, V) ? p.top_k : p.candidates;
    // Partials [tile, row]: every (tile, row) written by the thread that owns the tile.
    std::vector<LogSumExp> raw(want_raw ? size_t(n_tiles * rows) : 0);
    std::vector<LogSumExp> scaled(want_scaled ? size_t(n_tiles * rows) : 0);
    const int threads = n_tiles > 1 && rows * V * D >= kParallelMinWork ? omp_get_max_threads() : 1;
    std::vector<ThreadRows<T>> per_thread(static_cast<size_t>(threads));
    const double inv_temperature = mode == Mode::greedy ? 0.0 : 1.0 / p.temperature;

#pragma omp parallel num_threads(threads)
    {
        ThreadRows<T>& mine = per_thread[size_t(omp_get_thread_num())];
        if (mode == Mode::candidates) mine.candidates.assign(size_t(rows), TopCandidates<T>(cap, V));
        else mine.bests.assign(size_t(rows), Best{});
        std::vector<T> logits(size_t(rows * tile));
        std::vector<uint32_t> words(size_t(4 * (tile / 4 + 2)));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const int64_t v0 = t * tile, width = std::min(tile, V - v0);
            gemm_nt(rows, width, D, hidden, weight + v0 * D, logits.data(), width);
            for (int64_t b = 0; b < rows; ++b) {
                const T* row = logits.data() + b * width;
                if (want_raw) raw[size_t(t * rows + b)] = tile_log_sum_exp(row, width, 1.0);
                if (want_scaled) scaled[size_t(t * rows + b)] = tile_log_sum_exp(row, width, inv_temperature);
                switch (mode) {
                case Mode::greedy: {
                    Best& best = mine.bests[size_t(b)];
                    for (int64_t i = 0; i < width; ++i)
                        if (best.index < 0 || double(row[i]) > best.score)
                            best = {double(row[i]), v0 + i, double(row[i])};
                    break;
                }
                case Mode::gumbel:
                    gumbel_max_tile(mine.bests[size_t(b)], row, v0, width, inv_temperature, keys[b], words.data());
                    break;
                case Mode::candidates:
                    mine.candidates[size_t(b)].offer(row, v0, width);
                    break;
                case Mode::materialised:
                    break;
                }
            }
        }
    }

    // Merge: the per-thread winners (or candidates) of each row, then the row's draw. Rows whose kept
    // set may run past their candidates are materialised afterwards.
    std::vector<std::optional<RowSummary>> unfinished(static_cast<size_t>(rows));
#pragma omp parallel for schedule(dynamic) if (threads > 1 && mode == Mode::candidates)
    for (int64_t b = 0; b < rows; ++b) {
        const double row_log_sum_exp = want_raw ? log_sum_exp(raw.data() + b, n_tiles, rows) : 0;
        double chosen_logit = 0;
        if (mode == Mode::candidates) {
            std::vector<Candidate<T>> merged;
            for (const ThreadRows<T>& thread : per_thread)
                if (!thread.candidates.empty())  // a thread the runtime did not start
                    merged.insert(merged.end(), thread.candidates[size_t(b)].kept().begin(),
                                  thread.candidates[size_t(b)].kept().end());
            const int64_t count = std::min<int64_t>(cap, int64_t(merged.size()));
            std::nth_element(merged.begin(), merged.begin() + (count - 1), merged.end(), ahead);
            std::sort(merged.begin(), merged.begin() + count, ahead);
            RowSummary summary{.max_logit = double(merged[0].logit), .log_sum_exp = row_log_sum_exp};
            if (want_scaled)
                summary.total = total_weight(scaled.data() + b, n_tiles, rows, summary.max_logit, inv_temperature);
            const int64_t chosen = draw_from_top(merged.data(), count, V, summary.total, p, keys[b]);
            if (chosen < 0) {
                unfinished[size_t(b)] = summary;
                continue;
            }
            tokens[b] = merged[size_t(chosen)].index;
            chosen_logit = double(merged[size_t(chosen)].logit);
        } else {
            Best best;
            for (const ThreadRows<T>& thread : per_thread) {
                if (thread.bests.empty()) continue;  // a thread the runtime did not start
                const Best& other = thread.bests[size_t(b)];
                if (other.index >= 0 && best.beaten_by(other.score, other.index)) best = other;
            }
            tokens[b] = int32_t(best.index);
            chosen_logit = best.logit;
        }
        if (want_raw) logprobs[b] = T(chosen_logit - row_log_sum_exp);
    }
    for (int64_t b = 0; b < rows; ++b)
        if (unfinished[size_t(b)]) to_materialise.push_back({b, unfinished[size_t(b)]});
    sample_materialised(to_materialise, tokens, logprobs, hidden, weight, keys, p, D, V);
}

}  // namespace

template <typename T>
void lm_head_sample(int32_t* tokens, T* logprobs, const T* hidden, const T* weight, const NoiseKey* keys,
                    const FusedSamplingParams& params, int64_t B, int64_t D, int64_t V) {
    for (int64_t r0 = 0; r0 < B; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, B - r0);
        sample_row_block(tokens + r0, logprobs ? logprobs + r0 : nullptr, hidden + r0 * D, weight, keys + r0, params,
                         rows, D, V);
    }
}

template void lm_head_sample<float>(int32_t*, float*, const float*, const float*, const NoiseKey*,
                                    const FusedSamplingParams&, int64_t, int64_t, int64_t);
template void lm_head_sample<double>(int32_t*, double*, const double*, const double*, const NoiseKey*,
                                     const FusedSamplingParams&, int64_t, int64_t, int64_t);

}  // namespace linarch::cpu
