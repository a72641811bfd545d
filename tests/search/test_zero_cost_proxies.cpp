#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.hpp"
#include "core/spec.hpp"
#include "search/proposer.hpp"
#include "search/zero_cost_proxies.hpp"
#include "support/models.hpp"
#include "support/testkit.hpp"

namespace linarch {
namespace {

using testkit::test_seed;

// det of a small dense matrix by Gaussian elimination with partial pivoting, in long double.
long double determinant(std::vector<long double> a, size_t n) {
    long double det = 1;
    for (size_t c = 0; c < n; ++c) {
        size_t pivot = c;
        for (size_t r = c + 1; r < n; ++r)
            if (std::fabs(a[r * n + c]) > std::fabs(a[pivot * n + c])) pivot = r;
        if (a[pivot * n + c] == 0) return 0;
        if (pivot != c) {
            for (size_t k = 0; k < n; ++k) std::swap(a[c * n + k], a[pivot * n + k]);
            det = -det;
        }
        det *= a[c * n + c];
        for (size_t r = c + 1; r < n; ++r) {
            const long double f = a[r * n + c] / a[c * n + c];
            for (size_t k = c; k < n; ++k) a[r * n + k] -= f * a[c * n + k];
        }
    }
    return det;
}

TEST(ZeroCostProxies, NaswotKernelLogDeterminantMatchesDirectDeterminant) {
    RngStream rng(test_seed(), stream_id("test.naswot"));
    for (const auto& [rows, bits] : {std::pair<int64_t, int64_t>{3, 5}, {7, 16}, {12, 40}}) {
        std::vector<uint8_t> codes(static_cast<size_t>(rows * bits));
        for (uint8_t& c : codes) c = rng.below(2) == 1;
        std::vector<long double> kernel(static_cast<size_t>(rows * rows));
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < rows; ++j) {
                int64_t same = 0;
                for (int64_t b = 0; b < bits; ++b) same += codes[size_t(i * bits + b)] == codes[size_t(j * bits + b)];
                kernel[size_t(i * rows + j)] = same + (i == j ? 1 : 0);
            }
        const double expected = double(std::log(determinant(kernel, size_t(rows))));
        EXPECT_NEAR(naswot_log_determinant(codes, rows, bits), expected, 1e-9 * std::abs(expected)) << rows;
    }
    // Identical codes: K = bits·11ᵀ + I, det = 1 + rows·bits, finite thanks to the + I.
    const std::vector<uint8_t> same(4 * 6, 1);
    EXPECT_NEAR(naswot_log_determinant(same, 4, 6), std::log(1.0 + 4 * 6), 1e-12);
    // Codes that differ more give a larger determinant: the proxy's premise.
    const std::vector<uint8_t> distinct = {1, 0, 0, 0, 1, 1,  0, 1, 0, 1, 0, 1,  0, 0, 1, 1, 1, 0,  1, 1, 1, 0, 0, 0};
    EXPECT_GT(naswot_log_determinant(distinct, 4, 6), naswot_log_determinant(same, 4, 6));
}

TEST(ZeroCostProxies, PrincipalComponentsCountTheVarianceSpectrum) {
    // Four uncorrelated centred features (orthogonal ±1 patterns over 8 rows) with variances
    // 100, 10, 1, 0.1: cumulative 0.900, 0.990, 0.9991, 1.
    const int64_t rows = 8, columns = 4;
    const double patterns[4][8] = {{1, -1, 1, -1, 1, -1, 1, -1},
                                   {1, 1, -1, -1, 1, 1, -1, -1},
                                   {1, 1, 1, 1, -1, -1, -1, -1},
                                   {1, -1, -1, 1, -1, 1, 1, -1}};
    const double scales[4] = {10, std::sqrt(10.0), 1, std::sqrt(0.1)};
    RngStream rng(test_seed(), stream_id("test.pca"));
    std::vector<double> values(static_cast<size_t>(rows * columns));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < columns; ++c)
            values[size_t(r * columns + c)] = scales[c] * patterns[c][r] + 3.0 * double(c);  // offsets are centred away
    EXPECT_EQ(principal_components_for_variance(values, rows, columns, 0.85), 1);
    EXPECT_EQ(principal_components_for_variance(values, rows, columns, 0.95), 2);
    EXPECT_EQ(principal_components_for_variance(values, rows, columns, 0.995), 3);
    EXPECT_EQ(principal_components_for_variance(values, rows, columns, 1.0), 4);

    // Rank 3 data, wider than tall (the other Gram matrix): 3 components explain everything.
    const int64_t wide_rows = 6, wide_columns = 20, rank = 3;
    std::vector<double> left(static_cast<size_t>(wide_rows * rank)), right(static_cast<size_t>(rank * wide_columns));
    for (double& x : left) x = rng.normal();
    for (double& x : right) x = rng.normal();
    std::vector<double> product(static_cast<size_t>(wide_rows * wide_columns));
    for (int64_t r = 0; r < wide_rows; ++r)
        for (int64_t c = 0; c < wide_columns; ++c)
            for (int64_t k = 0; k < rank; ++k)
                product[size_t(r * wide_columns + c)] += left[size_t(r * rank + k)] * right[size_t(k * wide_columns + c)];
    EXPECT_LE(principal_components_for_variance(product, wide_rows, wide_columns, 1.0), rank);
    EXPECT_GE(principal_components_for_variance(product, wide_rows, wide_columns, 1.0), rank - 1);  // centring may drop one
    EXPECT_EQ(principal_components_for_variance(std::vector<double>(12, 2.5), 3, 4, 0.99), 0);  // constant
}

Spec proxy_spec(const std::vector<std::string>& overrides) {
    Spec spec;
    spec.model = testkit::tiny_language_model(overrides);
    spec.data.task = "mqar";
    spec.data.seq_len = 32;
    spec.data.task_vocab_size = 64;
    spec.data.num_kv_pairs = 4;
    spec.run.seed = test_seed();
    return spec;
}

TEST(ZeroCostProxies, EveryProxyIsFiniteDeterministicAndSeesTheArchitecture) {
    const Spec small = proxy_spec({});
    const Batch batch = proxy_batch(small, 4, 32);
    ASSERT_EQ(batch.inputs.size(), 4u * 32u);
    const auto proxies = zero_cost_proxies(small, batch);
    ASSERT_EQ(proxies.size(), zero_cost_proxy_names().size());
    for (const std::string& name : zero_cost_proxy_names()) {
        ASSERT_TRUE(proxies.contains(name)) << name;
        EXPECT_TRUE(std::isfinite(proxies.at(name))) << name << " = " << proxies.at(name);
    }
    EXPECT_GT(proxies.at("grad_norm"), 0);
    EXPECT_GT(proxies.at("snip"), 0);
    EXPECT_GT(proxies.at("pca_dimension"), 0);
    EXPECT_DOUBLE_EQ(proxies.at("w_pca"), proxies.at("non_embedding_parameters") * proxies.at("pca_dimension"));
    EXPECT_EQ(proxies.at("parameters"), double(model_size(small.model).parameters));
    EXPECT_EQ(zero_cost_proxies(small, batch), proxies);  // a pure function of spec and batch

    // Another architecture (twice the width) scores differently, and has more parameters.
    const Spec wide = proxy_spec({"model.d_model=64"});
    const auto wide_proxies = zero_cost_proxies(wide, proxy_batch(wide, 4, 32));
    EXPECT_GT(wide_proxies.at("non_embedding_parameters"), proxies.at("non_embedding_parameters"));
    EXPECT_NE(wide_proxies.at("grad_norm"), proxies.at("grad_norm"));
    EXPECT_NE(wide_proxies.at("synflow"), proxies.at("synflow"));
}

}  // namespace
}  // namespace linarch
