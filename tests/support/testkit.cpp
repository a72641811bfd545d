#include "support/testkit.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace linarch::testkit {

uint64_t test_seed() {
    static const uint64_t seed = [] {
        uint64_t s;
        if (const char* env = std::getenv("LINARCH_TEST_SEED")) {
            s = std::strtoull(env, nullptr, 10);
        } else {
            std::random_device device;
            s = (uint64_t(device()) << 32) | device();
        }
        std::fprintf(stderr, "[linarch tests] LINARCH_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
        return s;
    }();
    return seed;
}

Tensor random_normal(const Shape& shape, DType dtype, uint64_t stream, double std) {
    Tensor t = Tensor::empty(shape, DType::f64);
    RngStream rng(test_seed(), stream);
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = std * rng.normal();
    return dtype == DType::f64 ? t : t.to(dtype);
}

Tensor random_uniform(const Shape& shape, DType dtype, uint64_t stream, double low, double high) {
    Tensor t = Tensor::empty(shape, DType::f64);
    RngStream rng(test_seed(), stream);
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = low + (high - low) * rng.uniform();
    return dtype == DType::f64 ? t : t.to(dtype);
}

Tensor random_unit_rows(const Shape& shape, DType dtype, uint64_t stream) {
    Tensor x = random_normal(shape, DType::f64, stream);
    const int64_t d = shape.back();
    double* p = x.data<double>();
    for (int64_t r = 0; r < x.numel() / d; ++r) {
        double norm = 0;
        for (int64_t c = 0; c < d; ++c) norm += p[r * d + c] * p[r * d + c];
        for (int64_t c = 0; c < d; ++c) p[r * d + c] /= std::sqrt(norm);
    }
    return x.to(dtype);
}

std::vector<int32_t> random_ids(int64_t count, int32_t n, uint64_t stream) {
    RngStream rng(test_seed(), stream);
    std::vector<int32_t> ids(static_cast<size_t>(count));
    for (auto& id : ids) id = static_cast<int32_t>(rng.below(uint64_t(n)));
    return ids;
}

Tensor minus(const Tensor& a, const Tensor& b) {
    LINARCH_CHECK(a.shape() == b.shape(), "minus: shapes {} and {}", shape_string(a.shape()), shape_string(b.shape()));
    std::vector<double> difference = a.to_vector();
    const std::vector<double> subtrahend = b.to_vector();
    for (size_t n = 0; n < difference.size(); ++n) difference[n] -= subtrahend[n];
    return Tensor::from_vector(a.shape(), difference, DType::f64);
}

double relative_error(const Tensor& out, const Tensor& ref) {
    LINARCH_CHECK(out.shape() == ref.shape(), "relative_error: shapes {} and {}", shape_string(out.shape()),
                  shape_string(ref.shape()));
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < out.numel(); ++i) {
        const double r = ref.flat(i), d = out.flat(i) - r;
        diff += d * d;
        norm += r * r;
    }
    LINARCH_CHECK(norm > 0, "relative_error: the reference is all zeros (a test must not compare against zeros)");
    return std::sqrt(diff / norm);
}

int64_t count_non_finite(const Tensor& t) {
    int64_t count = 0;
    for (int64_t i = 0; i < t.numel(); ++i) count += !std::isfinite(t.flat(i));
    return count;
}

double dot(const Tensor& a, const Tensor& b) {
    LINARCH_CHECK(a.shape() == b.shape(), "dot: shapes {} and {}", shape_string(a.shape()), shape_string(b.shape()));
    double sum = 0;
    for (int64_t i = 0; i < a.numel(); ++i) sum += a.flat(i) * b.flat(i);
    return sum;
}

double gradient_check(const std::function<double()>& loss, Tensor& input, const Tensor& analytic,
                      int64_t max_entries, double step, bool extrapolate) {
    LINARCH_CHECK(input.dtype() == DType::f64 && input.is_contiguous(),
                  "gradient_check needs a contiguous f64 input");
    LINARCH_CHECK(input.shape() == analytic.shape(), "gradient_check: input {} vs gradient {}",
                  shape_string(input.shape()), shape_string(analytic.shape()));
    const int64_t n = input.numel();
    const int64_t count = std::min(n, max_entries);
    RngStream pick(test_seed(), 0x6772616463686b);
    double* x = input.data<double>();
    double diff = 0, norm = 0;
    int64_t checked = 0;
    for (int64_t j = 0; j < count; ++j) {
        // All entries when small; otherwise a random sample (with the first and last always in).
        const int64_t i = (count == n) ? j : (j == 0 ? 0 : j == 1 ? n - 1 : int64_t(pick.below(uint64_t(n))));
        const double saved = x[i];
        const auto central = [&](double h) {
            x[i] = saved + h;
            const double up = loss();
            x[i] = saved - h;
            const double down = loss();
            x[i] = saved;
            return (up - down) / (2 * h);
        };
        double fd = central(step);
        if (extrapolate) {
            const double wide = central(2 * step);
            // Smooth: D(h) − D(2h) = 3·(D(h)'s h² error), a few 1e-4 of the slope where the loss is most
            // curved; a kink in ±2h: a share of the slope's jump.
            if (std::abs(fd - wide) > 1e-2 * (std::abs(fd) + std::abs(wide)) + 1e-9) continue;
            fd = (4 * fd - wide) / 3;
        }
        const double d = fd - analytic.flat(i);
        diff += d * d;
        norm += fd * fd;
        ++checked;
    }
    LINARCH_CHECK(checked > 0, "gradient_check: every sampled entry sits at a kink of the loss");
    LINARCH_CHECK(norm > 0, "gradient_check: the finite-difference gradient is all zeros");
    return std::sqrt(diff / norm);
}

std::string error_of(const std::function<void()>& action, std::source_location where) {
    try {
        action();
    } catch (const Error& e) {
        return e.what();
    }
    ADD_FAILURE_AT(where.file_name(), int(where.line())) << "expected a linarch::Error, nothing was thrown";
    return "";
}

void expect_contains(const std::string& message, const std::vector<std::string>& fragments,
                     std::source_location where) {
    for (const std::string& fragment : fragments)
        if (message.find(fragment) == std::string::npos)
            ADD_FAILURE_AT(where.file_name(), int(where.line())) << "message: " << message << "\nlacks: " << fragment;
}

void expect_error(const std::function<void()>& action, const std::vector<std::string>& fragments,
                  std::source_location where) {
    try {
        action();
    } catch (const Error& e) {
        expect_contains(e.what(), fragments, where);
        return;
    }
    std::string wanted;
    for (const std::string& fragment : fragments) wanted += "\n  " + fragment;
    ADD_FAILURE_AT(where.file_name(), int(where.line())) << "expected a linarch::Error mentioning:" << wanted;
}

}  // namespace linarch::testkit
