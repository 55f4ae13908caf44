#include "guard/stats.h"

#include <cmath>
#include <limits>

#include "util/error.h"

namespace distill {

namespace {
// The continued fraction for I_x(a, b) (Numerical Recipes 6.4, betacf), by the modified Lentz
// method. Converges fast for x < (a + 1) / (a + b + 2), in O(sqrt(max(a, b))) terms.
double beta_cf(double a, double b, double x) {
    constexpr double kEps = std::numeric_limits<double>::epsilon();
    constexpr double kTiny = 1e-300;
    const int64_t max_iter = 1000 + 20 * static_cast<int64_t>(std::sqrt(std::max(a, b)));
    const double qab = a + b, qap = a + 1, qam = a - 1;
    double c = 1, d = 1 - qab * x / qap;
    if (std::fabs(d) < kTiny) d = kTiny;
    d = 1 / d;
    double h = d;
    for (int64_t m = 1; m <= max_iter; ++m) {
        const double m2 = 2.0 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));  // even step
        d = 1 + aa * d;
        if (std::fabs(d) < kTiny) d = kTiny;
        c = 1 + aa / c;
        if (std::fabs(c) < kTiny) c = kTiny;
        d = 1 / d;
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));  // odd step
        d = 1 + aa * d;
        if (std::fabs(d) < kTiny) d = kTiny;
        c = 1 + aa / c;
        if (std::fabs(c) < kTiny) c = kTiny;
        d = 1 / d;
        const double del = d * c;
        h *= del;
        if (std::fabs(del - 1) <= kEps) return h;
    }
    DISTILL_ASSERT(false, "the incomplete beta continued fraction did not converge for a=", a,
                   " b=", b, " x=", x);
    return h;
}
}  // namespace

double log_beta_inc(double a, double b, double x) {
    DISTILL_ASSERT(a > 0 && b > 0 && x >= 0 && x <= 1, "log_beta_inc: a=", a, " b=", b, " x=", x);
    if (x == 0) return -std::numeric_limits<double>::infinity();
    if (x == 1) return 0;
    // ln [x^a (1-x)^b / B(a, b)]
    const double front =
        std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
    if (x < (a + 1) / (a + b + 2)) return front + std::log(beta_cf(a, b, x)) - std::log(a);
    // here I_x(a, b) is not small: 1 - I_{1-x}(b, a) loses nothing that matters
    const double q = std::exp(front + std::log(beta_cf(b, a, 1 - x)) - std::log(b));
    return std::log1p(-std::min(q, 1.0));
}

double binomial_z(int64_t T, int64_t S, double gamma) {
    DISTILL_ASSERT(T > 0, "binomial_z needs T > 0");
    const double t = static_cast<double>(T);
    return (static_cast<double>(S) - gamma * t) / std::sqrt(t * gamma * (1 - gamma));
}

BinomialTail binomial_tail(int64_t T, int64_t S, double gamma) {
    DISTILL_ASSERT(T >= 0 && gamma > 0 && gamma < 1, "binomial_tail: T=", T, " gamma=", gamma);
    BinomialTail r;
    if (S <= 0) return r;  // p = 1
    if (S > T) {
        r.p = 0;
        r.log10_p = -std::numeric_limits<double>::infinity();
        return r;
    }
    // P(Bin(T, g) >= S) = I_g(S, T - S + 1)
    const double ln_p = log_beta_inc(static_cast<double>(S), static_cast<double>(T - S + 1), gamma);
    r.log10_p = ln_p / std::log(10.0);
    r.p = std::exp(ln_p);
    return r;
}

}  // namespace distill
