// Rank correlations between paired samples: how well a zero-cost proxy orders the trials the way
// their trained results do (the zero-cost-proxy papers report Kendall's τ and Spearman's ρ).
//
// Pairs where either value is NaN are skipped. Both return NaN when fewer than two pairs are left
// or when either side has no spread (all values tied), where a rank correlation means nothing.
#pragma once
#include <span>

namespace linarch {

// Kendall's τ-b: (concordant − discordant) / √((n0 − ties_x)(n0 − ties_y)) over all n0 = n(n−1)/2
// pairs, so ties lower the denominator instead of counting as agreement (scipy.stats.kendalltau's
// default). O(n²): studies hold thousands of trials, not millions.
double kendall_tau(std::span<const double> x, std::span<const double> y);

// Spearman's ρ: the Pearson correlation of the ranks, tied values sharing their average rank.
double spearman_rho(std::span<const double> x, std::span<const double> y);

}  // namespace linarch
