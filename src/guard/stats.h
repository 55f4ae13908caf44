// distill — the statistics of watermark detection: S green among T scored tokens, each green
// with probability gamma when the text knows nothing of the key (docs/guard.md).
#pragma once

#include <cstdint>

namespace distill {

// z = (S - gamma T) / sqrt(T gamma (1 - gamma)); needs T > 0.
double binomial_z(int64_t T, int64_t S, double gamma);

// The exact upper tail p = P(Bin(T, gamma) >= S) = I_gamma(S, T - S + 1), computed in log space
// so that it is accurate far into the tail: log10_p is exact where p itself underflows (below
// ~1e-308, p is then 0 or subnormal; above 1e-300 it never is). S <= 0: p = 1; S > T: p = 0.
struct BinomialTail {
    double p = 1;
    double log10_p = 0;
};
BinomialTail binomial_tail(int64_t T, int64_t S, double gamma);

// ln I_x(a, b), the log of the regularized incomplete beta function, for a, b > 0 and x in
// [0, 1]: the continued fraction of Numerical Recipes (betacf, modified Lentz) with its prefactor
// x^a (1-x)^b / (a B(a, b)) kept as a logarithm, and I_x(a, b) = 1 - I_{1-x}(b, a) on the side
// where the fraction converges slowly.
double log_beta_inc(double a, double b, double x);

}  // namespace distill
