#include "search/zero_cost_proxies.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "data/synthetic_tasks.hpp"
#include "model/language_model.hpp"
#include "search/proposer.hpp"

// LAPACK's symmetric eigensolver, from the OpenBLAS build linarch links (its Fortran interface; the
// trailing lengths are the hidden CHARACTER arguments gfortran passes).
extern "C" void dsyev_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                       double* work, const int* lwork, int* info, size_t jobz_length, size_t uplo_length);

namespace linarch {

namespace {
// Tokens the activation proxies read: the kernel and the PCA are cubic in this.
constexpr int64_t kMaxActivationRows = 256;
constexpr double kExplainedVariance = 0.99;

// Rows of the batch's B·T tokens the activation proxies use: evenly spaced, at most kMaxActivationRows.
std::vector<int64_t> sampled_rows(int64_t total) {
    const int64_t count = std::min(total, kMaxActivationRows);
    std::vector<int64_t> rows(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) rows[size_t(i)] = i * total / count;
    return rows;
}

// Mean cross-entropy gradients of the batch at initialisation: grad_norm and snip.
void gradient_proxies(const Spec& spec, const Batch& batch, std::map<std::string, double>& out) {
    LanguageModel model(spec.model);
    model.initialize(spec.run.seed);
    model.parameters().zero_grad();
    const double loss = model.forward(batch.inputs, batch.targets, batch.batch_size, batch.seq_len);
    LINARCH_CHECK(std::isfinite(loss), "zero-cost proxies: the loss at initialisation is {}", loss);
    model.backward(1.0 / double(model.counted_tokens()));
    double grad_norm = 0, snip = 0;
    for (const Parameter& p : model.parameters().all()) {
        const float* w = p.value.data<float>();
        const float* g = p.grad.data<float>();
        double squares = 0;
        for (int64_t i = 0; i < p.value.numel(); ++i) {
            squares += double(g[i]) * double(g[i]);
            snip += std::abs(double(w[i]) * double(g[i]));
        }
        grad_norm += std::sqrt(squares);
    }
    out["grad_norm"] = grad_norm;
    out["snip"] = snip;

    // The activation proxies read the same forward.
    const std::vector<int64_t> rows = sampled_rows(batch.batch_size * batch.seq_len);
    const int64_t hidden = model.mlp_hidden(), layers = int64_t(model.layer_count());
    std::vector<uint8_t> codes(static_cast<size_t>(int64_t(rows.size()) * hidden * layers));
    int64_t pca_dimension = 0;
    std::vector<double> activations(static_cast<size_t>(int64_t(rows.size()) * hidden));
    for (int64_t l = 0; l < layers; ++l) {
        const float* gate = model.mlp_gate(size_t(l)).data<float>();
        const float* act = model.mlp_hidden(size_t(l)).data<float>();
        for (size_t r = 0; r < rows.size(); ++r)
            for (int64_t j = 0; j < hidden; ++j) {
                codes[(r * size_t(layers) + size_t(l)) * size_t(hidden) + size_t(j)] = gate[rows[r] * hidden + j] > 0;
                activations[r * size_t(hidden) + size_t(j)] = act[rows[r] * hidden + j];
            }
        pca_dimension += principal_components_for_variance(activations, int64_t(rows.size()), hidden, kExplainedVariance);
    }
    out["naswot"] = naswot_log_determinant(codes, int64_t(rows.size()), hidden * layers);
    out["pca_dimension"] = double(pca_dimension);
}

// SynFlow in float64 with every weight replaced by its magnitude.
double synflow(const Spec& spec, const Batch& batch) {
    LanguageModel model(spec.model, DType::f64);
    model.initialize(spec.run.seed);
    for (Parameter& p : model.parameters().all()) {
        double* w = p.value.data<double>();
        for (int64_t i = 0; i < p.value.numel(); ++i) w[i] = std::abs(w[i]);
    }
    model.parameters().zero_grad();
    model.forward(batch.inputs, batch.targets, batch.batch_size, batch.seq_len);
    model.backward_logit_sum();
    double score = 0;
    for (const Parameter& p : model.parameters().all()) {
        const double* w = p.value.data<double>();
        const double* g = p.grad.data<double>();
        for (int64_t i = 0; i < p.value.numel(); ++i) score += w[i] * g[i];
    }
    return score;
}
}  // namespace

Batch proxy_batch(const Spec& spec, int64_t batch_size, int64_t seq_len) {
    LINARCH_CHECK(batch_size >= 1 && seq_len >= 1, "zero-cost proxies: batch {} × {} tokens: expected both ≥ 1",
                  batch_size, seq_len);
    Batch batch;
    if (spec.data.task == "corpus") {
        const CorpusSplit train = open_corpus_split(spec.data.corpus, "train");
        SamplerOptions options;
        options.batch_size = batch_size;
        options.seq_len = seq_len;
        options.seed = spec.run.seed;
        options.order = WindowOrder::sequential;
        WindowSampler(train.tokens, options).batch({}, batch);
    } else {
        make_synthetic_task(spec.data, spec.run.seed)->batch(0, batch_size, batch);
    }
    return batch;
}

const std::vector<std::string>& zero_cost_proxy_names() {
    static const std::vector<std::string> names = {"grad_norm", "naswot", "non_embedding_parameters", "parameters",
                                                   "pca_dimension", "snip", "synflow", "train_flops_per_token",
                                                   "w_pca"};
    return names;
}

std::map<std::string, double> zero_cost_proxies(const Spec& spec, const Batch& batch) {
    std::map<std::string, double> proxies;
    const ModelSize size = model_size(spec.model);
    const int64_t embedding = spec.model.vocab_size * spec.model.d_model;
    proxies["parameters"] = double(size.parameters);
    proxies["non_embedding_parameters"] = double(size.parameters - embedding);
    proxies["train_flops_per_token"] = size.train_flops_per_token;
    gradient_proxies(spec, batch, proxies);
    proxies["w_pca"] = proxies["non_embedding_parameters"] * proxies["pca_dimension"];
    proxies["synflow"] = synflow(spec, batch);
    return proxies;
}

double naswot_log_determinant(const std::vector<uint8_t>& codes, int64_t rows, int64_t bits) {
    LINARCH_CHECK(int64_t(codes.size()) == rows * bits, "naswot: {} code bits for {} rows × {} bits", codes.size(),
                  rows, bits);
    // K[i,j] = bits − Hamming = matches of ones + matches of zeros; + I keeps repeated codes finite.
    const auto n = static_cast<size_t>(rows);
    std::vector<double> kernel(n * n);
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j <= i; ++j) {
            int64_t hamming = 0;
            for (int64_t b = 0; b < bits; ++b)
                hamming += codes[i * size_t(bits) + size_t(b)] != codes[j * size_t(bits) + size_t(b)];
            kernel[i * n + j] = kernel[j * n + i] = double(bits - hamming) + (i == j ? 1.0 : 0.0);
        }
    // K is positive semi-definite (a sum of two Gram matrices), so K + I has a Cholesky factor.
    double log_determinant = 0;
    for (size_t j = 0; j < n; ++j) {
        double diagonal = kernel[j * n + j];
        for (size_t k = 0; k < j; ++k) diagonal -= kernel[j * n + k] * kernel[j * n + k];
        LINARCH_CHECK(diagonal > 0, "naswot: the kernel is not positive definite (pivot {} at row {})", diagonal, j);
        const double pivot = std::sqrt(diagonal);
        kernel[j * n + j] = pivot;
        log_determinant += 2 * std::log(pivot);
        for (size_t i = j + 1; i < n; ++i) {
            double value = kernel[i * n + j];
            for (size_t k = 0; k < j; ++k) value -= kernel[i * n + k] * kernel[j * n + k];
            kernel[i * n + j] = value / pivot;
        }
    }
    return log_determinant;
}

int64_t principal_components_for_variance(const std::vector<double>& values, int64_t rows, int64_t columns,
                                          double fraction) {
    LINARCH_CHECK(int64_t(values.size()) == rows * columns && rows >= 1 && columns >= 1,
                  "principal components: {} values for {} rows × {} columns", values.size(), rows, columns);
    LINARCH_CHECK(fraction > 0 && fraction <= 1, "principal components: fraction {} not in (0, 1]", fraction);
    std::vector<double> centred(values);
    for (int64_t c = 0; c < columns; ++c) {
        double mean = 0;
        for (int64_t r = 0; r < rows; ++r) mean += centred[size_t(r * columns + c)];
        mean /= double(rows);
        for (int64_t r = 0; r < rows; ++r) centred[size_t(r * columns + c)] -= mean;
    }
    // The non-zero eigenvalues of XᵀX and XXᵀ agree: take the smaller Gram matrix.
    const bool by_rows = rows < columns;
    const int64_t n = by_rows ? rows : columns, inner = by_rows ? columns : rows;
    std::vector<double> gram(static_cast<size_t>(n * n));
    const auto at = [&](int64_t i, int64_t k) {  // entry k of vector i of the Gram's factor
        return by_rows ? centred[size_t(i * columns + k)] : centred[size_t(k * columns + i)];
    };
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j <= i; ++j) {
            double sum = 0;
            for (int64_t k = 0; k < inner; ++k) sum += at(i, k) * at(j, k);
            gram[size_t(i * n + j)] = gram[size_t(j * n + i)] = sum;
        }
    std::vector<double> eigenvalues(static_cast<size_t>(n));
    const int order = int(n);
    int info = 0, lwork = -1;
    double work_size = 0;
    dsyev_("N", "U", &order, gram.data(), &order, eigenvalues.data(), &work_size, &lwork, &info, 1, 1);
    lwork = int(work_size);
    std::vector<double> work(static_cast<size_t>(std::max(lwork, 1)));
    dsyev_("N", "U", &order, gram.data(), &order, eigenvalues.data(), work.data(), &lwork, &info, 1, 1);
    LINARCH_CHECK(info == 0, "principal components: LAPACK dsyev failed (info {}) on a {}×{} Gram matrix", info, n, n);
    std::sort(eigenvalues.rbegin(), eigenvalues.rend());
    double total = 0;
    for (double& e : eigenvalues) total += e = std::max(e, 0.0);
    if (total <= 0) return 0;
    double explained = 0;
    for (int64_t k = 0; k < n; ++k) {
        explained += eigenvalues[size_t(k)];
        if (explained >= fraction * total * (1 - 1e-12)) return k + 1;
    }
    return n;
}

}  // namespace linarch
