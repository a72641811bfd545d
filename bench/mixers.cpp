// Chunkwise forms of the mixer family on the CPU: forward and forward+backward time per member,
// achieved GFLOP/s next to OpenBLAS sgemm's rate measured in the same run, the recurrent form at
// long T for comparison, and time against T.
//   build/bin/mixers [--quick] [--only NAME]   (--quick: T = 2048 only; --only: the members whose name
//                                               contains NAME, e.g. --only "vector gate")
// Prints a table and one JSON line per measurement (for bench/NOTES.md).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/rng.hpp"
#include "ops/delta_rule.hpp"
#include "ops/elementwise.hpp"
#include "ops/higher_order_attention.hpp"
#include "ops/linear_attention.hpp"
#include "ops/softmax_attention.hpp"
#include "ops/spatial_decay_attention.hpp"

using namespace linarch;
using Clock = std::chrono::steady_clock;

namespace {
double median_seconds(int repeats, const std::function<void()>& body) {
    body();
    std::vector<double> times;
    for (int i = 0; i < repeats; ++i) {
        const auto start = Clock::now();
        body();
        times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

Tensor random(const Shape& shape, uint64_t stream, double scale = 1.0, double offset = 0.0) {
    Tensor t = Tensor::empty(shape);
    RngStream rng(7, stream);
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(offset + scale * rng.normal());
    return t;
}

// Unit-norm rows (keys of the delta rule).
Tensor unit_rows(const Shape& shape, uint64_t stream) {
    Tensor x = random(shape, stream);
    const int64_t d = shape.back(), rows = x.numel() / d;
    Tensor out = Tensor::empty(shape), inv = Tensor::empty({rows});
    Tensor out_rows = out.view({rows, d});
    ops::l2norm_forward(out_rows, inv, x.view({rows, d}), 1e-6);
    return out;
}

double sgemm_gflops() {
    const int n = 1024;
    std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
    const double s = median_seconds(5, [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    });
    return 2.0 * double(n) * n * n / s / 1e9;
}

// Inputs of one shape, made once outside the timed region.
struct Problem {
    Problem(int64_t B_, int64_t T_, int64_t H_, int64_t d_) : B(B_), T(T_), H(H_), d(d_) {
        const Shape shape{B, T, H, d};
        q = random(shape, 1, 0.125);
        k = random(shape, 2, 0.125);
        v = random(shape, 3);
        q_unit = unit_rows(shape, 4);
        k_unit = unit_rows(shape, 5);
        beta = Tensor::empty({B, T, H});
        ops::sigmoid_forward(beta, random({B, T, H}, 6));
        log_decay = random({H}, 7, 0.0, -0.05);
        scalar_gate = random({B, T, H}, 8, 0.005, -0.05);
        vector_gate = random({B, T, H, d}, 9, 0.005, -0.05);
        o = Tensor::empty(shape);
        dq = Tensor::zeros(shape);
        dk = Tensor::zeros(shape);
        dv = Tensor::zeros(shape);
        dbeta = Tensor::zeros({B, T, H});
        dscalar = Tensor::zeros({B, T, H});
        dvector = Tensor::zeros({B, T, H, d});
    }
    int64_t B, T, H, d;
    Tensor q, k, v, q_unit, k_unit, beta, log_decay, scalar_gate, vector_gate, o, dq, dk, dv, dbeta, dscalar, dvector;
};

struct Member {
    std::string name;
    // Forward FLOPs per token and head of the chunkwise form (chunk C, head size d).
    std::function<double(double C, double d)> flops;
    std::function<void(Problem&, bool backward, bool recurrent)> run;
};
}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    std::string only;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--quick") quick = true;
        else if (arg == "--only" && i + 1 < argc) only = argv[++i];
        else {
            fmt::print(stderr, "usage: mixers [--quick] [--only NAME]\n");
            return 2;
        }
    }
    const int64_t H = 8, d = 64, C = 64;
    const double peak = sgemm_gflops();
    fmt::print("OpenBLAS sgemm 1024³: {:.1f} GFLOP/s, {} threads\n", peak, omp_get_max_threads());

    auto additive = [&](const std::string& decay) {
        return [=](Problem& p, bool backward, bool recurrent) {
            ops::LinearAttentionArgs args;
            args.chunk_size = C;
            args.scale = 1.0 / std::sqrt(double(p.d));
            if (decay == "fixed") args.log_decay = p.log_decay;
            if (decay == "scalar") args.log_gate = p.scalar_gate;
            if (decay == "vector") args.log_gate = p.vector_gate;
            if (recurrent) {
                ops::linear_attention_recurrent_forward(p.o, nullptr, p.q, p.k, p.v, nullptr, args);
                return;
            }
            ops::linear_attention_chunkwise_forward(p.o, nullptr, p.q, p.k, p.v, nullptr, args);
            if (!backward) return;
            Tensor* dg = decay == "scalar" ? &p.dscalar : decay == "vector" ? &p.dvector : nullptr;
            ops::linear_attention_chunkwise_backward(p.dq, p.dk, p.dv, nullptr, p.o, nullptr, p.q, p.k, p.v, nullptr,
                                                     args, dg);
        };
    };
    auto delta = [&](bool gated) {
        return [=](Problem& p, bool backward, bool recurrent) {
            ops::DeltaRuleArgs args;
            args.chunk_size = C;
            args.scale = 1.0 / std::sqrt(double(p.d));
            if (gated) args.log_gate = p.scalar_gate;
            if (recurrent) {
                ops::delta_rule_recurrent_forward(p.o, nullptr, p.q_unit, p.k_unit, p.v, p.beta, nullptr, args);
                return;
            }
            ops::delta_rule_chunkwise_forward(p.o, nullptr, p.q_unit, p.k_unit, p.v, p.beta, nullptr, args);
            if (!backward) return;
            ops::delta_rule_chunkwise_backward(p.dq, p.dk, p.dv, p.dbeta, gated ? &p.dscalar : nullptr, nullptr, p.o,
                                               nullptr, p.q_unit, p.k_unit, p.v, p.beta, nullptr, args);
        };
    };
    auto higher_order = [&](bool masked) {
        return [=](Problem& p, bool backward, bool recurrent) {
            ops::HigherOrderAttentionArgs args;
            args.masked = masked;
            args.chunk_size = C;
            args.scale = 1.0 / double(p.d);
            args.log_decay = p.log_decay;
            if (recurrent) {
                ops::higher_order_attention_recurrent_forward(p.o, nullptr, p.q, p.k, p.v, nullptr, args);
                return;
            }
            ops::higher_order_attention_chunkwise_forward(p.o, nullptr, p.q, p.k, p.v, nullptr, args);
            if (!backward) return;
            ops::higher_order_attention_chunkwise_backward(p.dq, p.dk, p.dv, nullptr, p.o, nullptr, p.q, p.k, p.v,
                                                           nullptr, args);
        };
    };
    // LASAD on a grid of T / 64 rows × 64 columns, chunks of 4 rows (what the mixer picks at chunk 64).
    auto spatial = [&](Problem& p, bool backward, bool recurrent) {
        ops::SpatialDecayAttentionArgs args;
        args.grid_height = p.T / 64;
        args.grid_width = 64;
        args.chunk_rows = 4;
        args.log_decay_row = p.log_decay;
        args.log_decay_col = p.log_decay;
        args.scale = 1.0 / std::sqrt(double(p.d));
        if (recurrent) {
            ops::spatial_decay_attention_recurrent_forward(p.o, p.q, p.k, p.v, args);
            return;
        }
        ops::spatial_decay_attention_chunkwise_forward(p.o, p.q, p.k, p.v, args);
        if (backward)
            ops::spatial_decay_attention_chunkwise_backward(p.dq, p.dk, p.dv, nullptr, nullptr, p.o, p.q, p.k, p.v,
                                                            args);
    };
    // Additive members: intra-chunk QKᵀ and PV (2·C·d each, full tiles), inter-chunk q·S and
    // the state update kᵀv (2·d² each). Delta: plus KKᵀ and the triangular solve (~3·C·d + C²).
    const auto additive_flops = [](double c, double dd) { return 4 * c * dd + 4 * dd * dd; };
    const auto delta_flops = [](double c, double dd) { return 7 * c * dd + c * c + 6 * dd * dd; };
    const std::vector<Member> members = {
        {"linear (no decay)", additive_flops, additive("none")},
        {"retnet (fixed decay)", additive_flops, additive("fixed")},
        {"mamba2/simple gla (scalar gate)", additive_flops, additive("scalar")},
        {"gla (vector gate)", additive_flops, additive("vector")},
        {"deltanet", delta_flops, delta(false)},
        {"gated deltanet", delta_flops, delta(true)},
        // No FLOP model for these two (their chunkwise work is not a few GEMM shapes): time only.
        {"hla order 2 (masked, fixed decay)", nullptr, higher_order(true)},
        {"lasad (2-D spatial decay)", nullptr, spatial},
    };

    const int64_t B = 4, T = 2048;
    Problem base(B, T, H, d);
    fmt::print("\nchunkwise form, B={} T={} H={} d_k=d_v={} chunk={}, f32\n", B, T, H, d, C);
    auto selected = [&](const Member& m) { return m.name.find(only) != std::string::npos; };
    for (const Member& m : members) {
        if (!selected(m)) continue;
        const double fwd = median_seconds(3, [&] { m.run(base, false, false); });
        const double both = median_seconds(3, [&] { m.run(base, true, false); });
        nlohmann::json record = {{"member", m.name}, {"B", B}, {"T", T}, {"H", H}, {"d", d}, {"forward_ms", fwd * 1e3},
                                 {"forward_backward_ms", both * 1e3}, {"sgemm_gflops", peak}};
        if (m.flops) {
            const double flops = m.flops(double(C), double(d)) * double(B * T * H);
            fmt::print("{:<36} fwd {:8.2f} ms ({:6.1f} GFLOP/s = {:4.1f}% of sgemm)   fwd+bwd {:8.2f} ms\n", m.name,
                       fwd * 1e3, flops / fwd / 1e9, 100 * flops / fwd / 1e9 / peak, both * 1e3);
            record["forward_gflops"] = flops / fwd / 1e9;
        } else {
            fmt::print("{:<36} fwd {:8.2f} ms {:33}   fwd+bwd {:8.2f} ms\n", m.name, fwd * 1e3, "", both * 1e3);
        }
        fmt::print("{}\n", record.dump());
    }
    if (quick) return 0;
    fmt::print("\nrecurrent vs chunkwise forward, B=1 H={} d={} T=16384\n", H, d);
    Problem long_problem(1, 16384, H, d);
    for (const Member& m : members) {
        if (!selected(m)) continue;
        const double rec = median_seconds(1, [&] { m.run(long_problem, false, true); });
        const double chunk = median_seconds(1, [&] { m.run(long_problem, false, false); });
        fmt::print("{:<36} recurrent {:8.1f} ms   chunkwise {:8.1f} ms   speed-up {:5.1f}×\n", m.name, rec * 1e3,
                   chunk * 1e3, rec / chunk);
    }
    if (!only.empty()) return 0;
    fmt::print("\nchunkwise forward against T (B=1, linear no decay and gated deltanet): time / T should be flat\n");
    for (int64_t t : {2048, 4096, 8192, 16384, 32768}) {
        Problem p(1, t, H, d);
        const double lin = median_seconds(1, [&] { members[0].run(p, false, false); });
        const double gdn = median_seconds(1, [&] { members[5].run(p, false, false); });
        fmt::print("T={:6}  linear {:8.1f} ms ({:.3f} µs/token)   gated deltanet {:8.1f} ms ({:.3f} µs/token)\n", t,
                   lin * 1e3, lin * 1e6 / double(t), gdn * 1e3, gdn * 1e6 / double(t));
    }
}
