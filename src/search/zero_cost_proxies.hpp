// Zero-cost (training-free) proxies (mission/discovery.md §2): scores of a candidate at its
// initialisation, from one fixed minibatch, meant to rank candidates before any is trained. Every
// candidate of a study is scored on the same batch (proxy_batch of the base spec) and from the
// initialisation its training starts from (spec.run.seed), so the scores compare.
//
// Higher is better for every proxy, as published:
//   parameters, non_embedding_parameters, train_flops_per_token  the trivial baselines that most
//                      proxies fail to beat on language models (NAS-Bench-Suite-Zero, ZiCo)
//   grad_norm          Σ over parameter tensors of ‖∂L/∂W‖₂, L the mean cross-entropy of the batch
//   snip               Σ |W ⊙ ∂L/∂W|                         (Lee et al. 2019)
//   synflow            Σ W ⊙ ∂R/∂W with every weight replaced by |W| and R the sum of all logits,
//                      in float64 (Tanaka et al. 2020; data-free in images, here on the batch's
//                      tokens since a language model's input is a lookup)
//   naswot             log det of the kernel K[i,j] = N_A − Hamming(c_i, c_j) over the batch's tokens,
//                      c_i the binary code of which MLP gate units are positive (SiLU's active side),
//                      over all layers (Mellor et al. 2021); K + I so repeated codes stay finite
//   pca_dimension      Σ over layers of the principal components of the MLP hidden activations
//                      needed for 99% of their variance (W-PCA, Wang, ICLR 2025)
//   w_pca              non_embedding_parameters × pca_dimension: W-PCA's score
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/spec.hpp"
#include "data/loader.hpp"

namespace linarch {

// The batch a study scores its candidates on: batch_size windows of seq_len tokens from the start of
// the spec's training data (the corpus's train split, or the synthetic task's first batch).
Batch proxy_batch(const Spec& spec, int64_t batch_size = 8, int64_t seq_len = 128);

// The names zero_cost_proxies returns.
const std::vector<std::string>& zero_cost_proxy_names();

// Every proxy above, by name, for the spec's model initialised from spec.run.seed.
std::map<std::string, double> zero_cost_proxies(const Spec& spec, const Batch& batch);

// The pieces, exposed for their tests.
// log det(K + I) for K[i,j] = N_A − Hamming(c_i, c_j), codes [rows × bits] of 0/1.
double naswot_log_determinant(const std::vector<uint8_t>& codes, int64_t rows, int64_t bits);
// Principal components of the rows × columns matrix (row-major; columns are the features, centred
// here) that explain `fraction` of its variance; 0 for a constant matrix.
int64_t principal_components_for_variance(const std::vector<double>& values, int64_t rows, int64_t columns,
                                          double fraction);

}  // namespace linarch
