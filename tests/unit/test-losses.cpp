// Tests for src/distill/losses.cpp.
//
// Built twice (tests/CMakeLists.txt):
//   test-losses      (label unit): properties that need no reference — zero at student == teacher,
//                    dense == sparse at K = V, finiteness on edge cases, input checks.
//   test-losses-ref  (label ref, DISTILL_LOSSES_REF): every loss kind on many random and edge
//                    inputs against tests/ref/losses_ref.py (PyTorch, float64, probability space),
//                    values and gradients, in float64 and float32; python runs once for all cases.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/losses.h"
#include "io/safetensors.h"
#include "model/fused.h"
#include "util/error.h"
#include "test-util.h"

using namespace distill;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Variant {
    LossKind kind;
    double beta = 0.5;
    double alpha = 0.1;
};

// Every kind, and the endpoints of the JSD / skew parameters.
std::vector<Variant> all_variants() {
    return {
        {LossKind::kForwardKL},
        {LossKind::kReverseKL},
        {LossKind::kJSD, 0.5},
        {LossKind::kJSD, 0.0},
        {LossKind::kJSD, 1.0},
        {LossKind::kJSD, 0.1},
        {LossKind::kSkewForwardKL, 0.5, 0.1},
        {LossKind::kSkewForwardKL, 0.5, 0.5},
        {LossKind::kSkewForwardKL, 0.5, 0.0},
        {LossKind::kSkewReverseKL, 0.5, 0.1},
        {LossKind::kSkewReverseKL, 0.5, 0.5},
        {LossKind::kTV},
        {LossKind::kCrossEntropy},
    };
}

LossOptions make_opts(const Variant& v, double tau, double ce_weight) {
    LossOptions o;
    o.kind = v.kind;
    o.beta = v.beta;
    o.alpha = v.alpha;
    o.temperature = tau;
    o.ce_weight = ce_weight;
    return o;
}

std::string describe(const LossOptions& o) {
    return str_cat(loss_kind_name(o.kind), " tau=", o.temperature, " ce=", o.ce_weight,
                   " beta=", o.beta, " alpha=", o.alpha);
}

// float64 inputs of one case; the sparse teacher is the dense teacher's top-K at tau = 1.
struct Inputs {
    torch::Tensor student, teacher, targets, ids, logprobs;
};

struct Gen {
    int64_t N = 6, V = 11, K = 4;
    double teacher_scale = 1, student_scale = 1;
    double teacher_boost = 0;  // added to the teacher's logits on K random ids (rest -> 0)
    double student_boost = 0;  // added to the student's logits on the teacher's top-K ids
    double ignore_frac = 0.2;
    bool all_ignored = false;
};

Inputs make_inputs(const Gen& g, uint64_t seed) {
    torch::manual_seed(seed);
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    Inputs in;
    in.teacher = torch::randn({g.N, g.V}, f64) * g.teacher_scale;
    if (g.teacher_boost != 0) {
        auto pick = std::get<1>(torch::rand({g.N, g.V}, f64).sort(1)).narrow(1, 0, g.K);
        in.teacher.scatter_add_(1, pick, torch::full({g.N, g.K}, g.teacher_boost, f64));
    }
    // Normalised (log Z = 0), so that log_softmax adds no rounding of a large log Z to the
    // log-probs: with the teacher's top-K holding nearly all the mass, that rounding alone would
    // make 1 - sum p ~ |log Z| eps, noise far above the rests these tests mean to exercise.
    in.teacher = torch::log_softmax(in.teacher, 1);
    auto top = torch::log_softmax(in.teacher, 1).topk(g.K, 1);
    in.logprobs = std::get<0>(top);
    in.ids = std::get<1>(top);
    in.student = torch::randn({g.N, g.V}, f64) * g.student_scale;
    if (g.student_boost != 0)
        in.student.scatter_add_(1, in.ids, torch::full({g.N, g.K}, g.student_boost, f64));
    in.targets = torch::randint(0, g.V, {g.N}, torch::kInt64);
    auto drop = torch::rand({g.N}, f64) < g.ignore_frac;
    drop[0] = false;  // at least one position with a target
    if (g.all_ignored) drop.fill_(true);
    in.targets.masked_fill_(drop, kIgnoreIndex);
    return in;
}

struct Result {
    double loss = 0;
    torch::Tensor grad;  // float64
};

Result run_loss(const Inputs& in, const LossOptions& o, bool sparse, torch::Dtype dt) {
    auto s = in.student.to(dt).detach().requires_grad_(true);
    auto loss = sparse ? loss_sparse(s, in.ids, in.logprobs.to(dt), in.targets, o)
                       : loss_dense(s, in.teacher.to(dt), in.targets, o);
    EXPECT_EQ(loss.dim(), 0);
    loss.backward();
    Result r;
    r.loss = loss.item<double>();
    r.grad = s.grad().defined() ? s.grad().to(torch::kFloat64) : torch::zeros_like(in.student);
    return r;
}

}  // namespace

#ifndef DISTILL_LOSSES_REF

static bool all_finite(const torch::Tensor& t) {
    return torch::isfinite(t).all().item<bool>();
}

// ---------------------------------------------------------------------------------------------
// Unit tests (no Python).

TEST(Losses, KindNames) {
    for (const auto& v : all_variants())
        EXPECT_EQ(loss_kind_from_string(loss_kind_name(v.kind)), v.kind);
    EXPECT_EQ(loss_kind_from_string("jsd"), LossKind::kJSD);
    EXPECT_THROW(loss_kind_from_string("kl"), Error);
    EXPECT_THROW(loss_kind_from_string(""), Error);
}

// D(p, p) = 0 for every divergence, with a zero gradient.
TEST(Losses, ZeroWhenStudentEqualsTeacher) {
    for (const auto& v : all_variants()) {
        if (v.kind == LossKind::kCrossEntropy) continue;  // no teacher term
        for (double tau : {1.0, 2.0, 0.5}) {
            auto o = make_opts(v, tau, 0.0);
            Gen g;
            g.V = 17;
            auto in = make_inputs(g, 1);
            in.teacher = in.student.clone();
            auto d = run_loss(in, o, false, torch::kFloat64);
            EXPECT_NEAR(d.loss, 0, 1e-12) << "dense " << describe(o);
            EXPECT_LT(d.grad.abs().max().item<double>(), 1e-12) << "dense " << describe(o);

            // Sparse: the (K+1)-bucket teacher equals the student's buckets at tau = 1 for any K
            // (and at every tau when K = V; for K < V and tau != 1 the rest bucket is tempered as
            // one bucket, which differs from the student's tempered rest by design).
            for (int64_t K : {int64_t{1}, int64_t{5}, g.V}) {
                if (tau != 1 && K < g.V) continue;
                auto top = torch::log_softmax(in.student, 1).topk(K, 1);
                in.logprobs = std::get<0>(top);
                in.ids = std::get<1>(top);
                auto s = run_loss(in, o, true, torch::kFloat64);
                EXPECT_NEAR(s.loss, 0, 1e-12) << "sparse K=" << K << " " << describe(o);
                // TV is not differentiable at p = q, and the two sides of the sparse form differ
                // by rounding (~1e-16), so its (sub)gradient there is not 0.
                if (v.kind != LossKind::kTV) {
                    EXPECT_LT(s.grad.abs().max().item<double>(), 1e-12)
                        << "sparse K=" << K << " " << describe(o);
                }
            }
        }
    }
}

// With K = V the rest bucket is empty and the sparse form is the dense form.
TEST(Losses, DenseEqualsSparseWhenKEqualsV) {
    for (const auto& v : all_variants())
        for (double tau : {1.0, 2.0, 0.5})
            for (double ce : {0.0, 0.3}) {
                auto o = make_opts(v, tau, ce);
                Gen g;
                g.V = 13;
                g.K = 13;
                auto in = make_inputs(g, 2);
                for (auto dt : {torch::kFloat64, torch::kFloat32}) {
                    const double tol = dt == torch::kFloat64 ? 1e-12 : 2e-6;
                    auto d = run_loss(in, o, false, dt);
                    auto s = run_loss(in, o, true, dt);
                    EXPECT_NEAR(d.loss, s.loss, tol * (1 + std::abs(d.loss))) << describe(o);
                    EXPECT_LT((d.grad - s.grad).abs().max().item<double>(), tol) << describe(o);
                }
            }
}

// The CE kind is plain cross-entropy on the targets (mean over positions with a target).
TEST(Losses, CrossEntropyMatchesTorch) {
    Gen g;
    g.N = 9;
    g.ignore_frac = 0.4;
    auto in = make_inputs(g, 3);
    auto want = torch::nn::functional::cross_entropy(
                    in.student, in.targets,
                    torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex))
                    .item<double>();
    for (double tau : {1.0, 2.0}) {
        auto o = make_opts({LossKind::kCrossEntropy}, tau, 0.0);
        EXPECT_NEAR(run_loss(in, o, false, torch::kFloat64).loss, want, 1e-12);
        EXPECT_NEAR(run_loss(in, o, true, torch::kFloat64).loss, want, 1e-12);
    }
    // ce_weight = 1 with any kind is cross-entropy too.
    auto o = make_opts({LossKind::kJSD}, 2.0, 1.0);
    EXPECT_NEAR(run_loss(in, o, false, torch::kFloat64).loss, want, 1e-12);
    EXPECT_NEAR(run_loss(in, o, true, torch::kFloat64).loss, want, 1e-12);
}

// Positions without a target contribute nothing; with none at all the loss is 0 (not NaN).
TEST(Losses, IgnoredPositions) {
    Gen g;
    g.all_ignored = true;
    auto in = make_inputs(g, 4);
    for (const auto& v : all_variants()) {
        auto o = make_opts(v, 2.0, 0.3);
        for (bool sparse : {false, true}) {
            auto r = run_loss(in, o, sparse, torch::kFloat32);
            EXPECT_EQ(r.loss, 0.0) << describe(o);
            EXPECT_EQ(r.grad.abs().max().item<double>(), 0.0) << describe(o);
        }
    }
    // Changing an ignored row changes nothing; the loss is a mean over the other rows.
    Gen g2;
    g2.ignore_frac = 0;
    auto a = make_inputs(g2, 5);
    auto b = a;
    b.targets = a.targets.clone();
    b.targets[2] = kIgnoreIndex;
    auto c = b;
    c.student = b.student.clone();
    c.student[2] = c.student[2] * 7 + 3;
    auto o = make_opts({LossKind::kForwardKL}, 1.0, 0.3);
    for (bool sparse : {false, true}) {
        auto rb = run_loss(b, o, sparse, torch::kFloat64),
             rc = run_loss(c, o, sparse, torch::kFloat64);
        EXPECT_NEAR(rb.loss, rc.loss, 1e-12);
        EXPECT_EQ(rc.grad[2].abs().max().item<double>(), 0.0);
    }
}

// Only the student gets gradients.
TEST(Losses, GradientsFlowToStudentOnly) {
    Gen g;
    auto in = make_inputs(g, 6);
    auto s = in.student.clone().requires_grad_(true);
    auto t = in.teacher.clone().requires_grad_(true);
    auto lp = in.logprobs.clone().requires_grad_(true);
    for (const auto& v : all_variants()) {
        auto o = make_opts(v, 2.0, 0.3);
        (loss_dense(s, t, in.targets, o) + loss_sparse(s, in.ids, lp, in.targets, o)).backward();
    }
    EXPECT_TRUE(s.grad().defined());
    EXPECT_FALSE(t.grad().defined());
    EXPECT_FALSE(lp.grad().defined());
}

// No NaN / Inf in the loss or its gradient on hard inputs, in float32 and float64.
TEST(Losses, FiniteOnEdgeCases) {
    struct Edge {
        const char* name;
        Gen g;
    };
    std::vector<Edge> edges;
    auto add = [&](const char* name, auto&& f) {
        Gen g;
        g.N = 5;
        g.V = 40;
        g.K = 4;
        f(g);
        edges.push_back({name, g});
    };
    add("peaked teacher x50", [](Gen& g) { g.teacher_scale = 50; });
    add("peaked teacher x1000", [](Gen& g) { g.teacher_scale = 1000; });
    add("peaked both x1000", [](Gen& g) { g.teacher_scale = g.student_scale = 1000; });
    add("flat teacher", [](Gen& g) { g.teacher_scale = 1e-6; });
    add("flat both", [](Gen& g) { g.teacher_scale = g.student_scale = 0; });
    add("teacher rest ~0", [](Gen& g) { g.teacher_boost = 200; });
    add("student rest ~0", [](Gen& g) { g.student_boost = 200; });
    add("both rest ~0", [](Gen& g) { g.teacher_boost = g.student_boost = 200; });
    add("k=1 one-hot teacher", [](Gen& g) {
        g.K = 1;
        g.teacher_boost = 200;
    });
    add("k=1", [](Gen& g) { g.K = 1; });
    add("k=V-1", [](Gen& g) { g.K = 39; });
    add("k=V", [](Gen& g) { g.K = 40; });
    add("k=V one-hot", [](Gen& g) {
        g.K = 40;
        g.teacher_scale = 1000;
        g.student_scale = 1000;
    });
    for (const auto& e : edges)
        for (const auto& v : all_variants())
            for (double tau : {1.0, 2.0, 0.5})
                for (auto dt : {torch::kFloat32, torch::kFloat64}) {
                    auto o = make_opts(v, tau, 0.3);
                    auto in = make_inputs(e.g, 7);
                    for (bool sparse : {false, true}) {
                        auto r = run_loss(in, o, sparse, dt);
                        EXPECT_TRUE(std::isfinite(r.loss) && r.loss >= -1e-4)
                            << e.name << (sparse ? " sparse " : " dense ") << describe(o) << " "
                            << r.loss;
                        EXPECT_TRUE(all_finite(r.grad))
                            << e.name << (sparse ? " sparse " : " dense ") << describe(o);
                    }
                }
}

// Teacher probabilities that are exactly 0 (masked vocabulary, -inf logits / log-probs):
// 0 log 0 = 0. Reverse KL is then genuinely infinite; everything else stays finite.
TEST(Losses, ZeroTeacherProbabilities) {
    Gen g;
    g.V = 12;
    g.K = 12;
    auto in = make_inputs(g, 8);
    in.teacher.narrow(1, 0, 3).fill_(-kInf);  // tokens 0..2 impossible for the teacher
    // Normalised (log Z = 0), so that log_softmax adds no rounding of a large log Z to the
    // log-probs: with the teacher's top-K holding nearly all the mass, that rounding alone would
    // make 1 - sum p ~ |log Z| eps, noise far above the rests these tests mean to exercise.
    in.teacher = torch::log_softmax(in.teacher, 1);
    auto top = torch::log_softmax(in.teacher, 1).topk(g.K, 1);
    in.logprobs = std::get<0>(top);  // K = V: three -inf log-probs per row
    in.ids = std::get<1>(top);
    auto in_k6 = in;  // K = 6 < V: the rest bucket holds tokens of p > 0 and p = 0
    in_k6.logprobs = in.logprobs.narrow(1, 0, 6).contiguous();
    in_k6.ids = in.ids.narrow(1, 0, 6).contiguous();
    for (const auto& v : all_variants())
        for (auto dt : {torch::kFloat32, torch::kFloat64}) {
            auto o = make_opts(v, 2.0, 0.0);
            const bool infinite =
                v.kind == LossKind::kReverseKL || (v.kind == LossKind::kJSD && v.beta == 1);
            for (const Inputs* x : {&in, &in_k6})
                for (bool sparse : {false, true}) {
                    if (!sparse && x == &in_k6) continue;
                    auto r = run_loss(*x, o, sparse, dt);
                    if (infinite && !(sparse && x == &in_k6)) {
                        EXPECT_EQ(r.loss, kInf) << describe(o);
                    } else {
                        EXPECT_TRUE(std::isfinite(r.loss)) << describe(o) << " " << r.loss;
                        EXPECT_TRUE(all_finite(r.grad)) << describe(o);
                    }
                }
        }
}

// A half-precision student is upcast for the computation; its gradient keeps its dtype.
TEST(Losses, HalfPrecisionStudent) {
    Gen g;
    auto in = make_inputs(g, 9);
    auto s = in.student.to(torch::kBFloat16).requires_grad_(true);
    auto o = make_opts({LossKind::kJSD}, 2.0, 0.3);
    auto loss = loss_dense(s, in.teacher.to(torch::kBFloat16), in.targets, o) +
                loss_sparse(s, in.ids, in.logprobs.to(torch::kFloat16), in.targets, o);
    EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
    loss.backward();
    EXPECT_EQ(s.grad().scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(all_finite(s.grad()));
}

// bf16 logits (the head's product under --precision bf16) go into the fused rows as they are:
// the loss must be the one of the widened float logits, computed by libtorch's tensor ops
// (fusion off), and the gradient that one's, in bf16 (one rounding: 2^-9 of each entry).
TEST(Losses, Bf16LogitsGiveTheLossOfTheirFloatValues) {
    Gen g;
    g.N = 40;
    g.V = 300;
    g.K = 8;
    g.student_scale = 4;
    auto in = make_inputs(g, 21);
    auto s16 = in.student.to(torch::kBFloat16);
    for (bool sparse : {false, true}) {
        for (double ce : {0.0, 0.3, 1.0}) {
            auto o = make_opts({sparse ? LossKind::kForwardKL : LossKind::kCrossEntropy}, sparse ? 2.0 : 1.0, ce);
            SCOPED_TRACE(str_cat(sparse ? "loss_sparse " : "loss_cross_entropy ", describe(o)));
            auto a = s16.clone().requires_grad_(true);
            auto la = sparse ? loss_sparse(a, in.ids, in.logprobs.to(torch::kFloat32), in.targets, o)
                             : loss_cross_entropy(a, in.targets);
            la.backward();
            ASSERT_EQ(a.grad().scalar_type(), torch::kBFloat16);

            set_fused_kernels(false);
            auto b = s16.to(torch::kFloat32).requires_grad_(true);
            auto lb = sparse ? loss_sparse(b, in.ids, in.logprobs.to(torch::kFloat32), in.targets, o)
                             : torch::nn::functional::cross_entropy(
                                   b, in.targets,
                                   torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
            lb.backward();
            set_fused_kernels(true);

            EXPECT_NEAR(la.item<double>(), lb.item<double>(), 1e-5 * std::max(1.0, std::abs(lb.item<double>())));
            auto ga = a.grad().to(torch::kFloat64), gb = b.grad().to(torch::kFloat64);
            const double worst = ((ga - gb).abs() - gb.abs() * std::ldexp(1.0, -8)).max().item<double>();
            EXPECT_LE(worst, 1e-7) << "a bf16 gradient entry is more than its rounding away";
            EXPECT_GT(gb.abs().max().item<double>(), 1e-3);
        }
    }
}

// The rows' narrowing rounds as c10::BFloat16 does (to nearest, ties to even; NaN stays NaN,
// overflow goes to inf), and widening is exact.
TEST(Losses, Bf16RowsRoundAsLibtorch) {
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> v = {0.0f, -0.0f, 1.0f, -2.5f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                            1e-40f, 1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8),
                            1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20), 3.14159265f, -1e30f};
    auto rnd = torch::randn({1000}) * 100;
    for (int64_t i = 0; i < rnd.size(0); ++i) v.push_back(rnd[i].item<float>());
    const int64_t C = int64_t(v.size());
    auto f = torch::from_blob(v.data(), {1, C}, torch::kFloat32).clone();
    auto out = torch::empty({1, C}, torch::kBFloat16);
    std::vector<float> buf(v.begin(), v.end());
    store_row(out, 0, buf);
    auto want = f.to(torch::kBFloat16);
    // bit for bit, except that a NaN need only stay a NaN (libtorch's vector path gives 0xffff)
    auto nan = torch::isnan(want);
    EXPECT_TRUE(torch::equal(torch::isnan(out), nan));
    EXPECT_TRUE(torch::equal(out.view(torch::kInt16).masked_fill(nan, 0), want.view(torch::kInt16).masked_fill(nan, 0)))
        << "narrowed rows differ from .to(kBFloat16)";
    std::vector<float> wide;
    const float* back = float_row(want, 0, wide);
    auto widened = torch::from_blob(const_cast<float*>(back), {1, C}, torch::kFloat32);
    auto nan32 = torch::isnan(widened);
    EXPECT_TRUE(torch::equal(nan32, nan));
    EXPECT_TRUE(torch::equal(widened.view(torch::kInt32).masked_fill(nan32, 0),
                             want.to(torch::kFloat32).view(torch::kInt32).masked_fill(nan32, 0)))
        << "widened rows differ from .to(kFloat32)";
}

TEST(Losses, InvalidInputsThrow) {
    Gen g;
    g.N = 4;
    g.V = 10;
    g.K = 3;
    auto in = make_inputs(g, 10);
    LossOptions o;
    auto dense = [&](const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& y,
                     const LossOptions& opts) { return loss_dense(s, t, y, opts); };
    auto sparse = [&](const torch::Tensor& s, const torch::Tensor& ids, const torch::Tensor& lp,
                      const torch::Tensor& y,
                      const LossOptions& opts) { return loss_sparse(s, ids, lp, y, opts); };
    // Sanity: the valid call works.
    EXPECT_NO_THROW(dense(in.student, in.teacher, in.targets, o));
    EXPECT_NO_THROW(sparse(in.student, in.ids, in.logprobs, in.targets, o));

    // Ranks.
    EXPECT_THROW(dense(in.student[0], in.teacher[0], in.targets, o), Error);
    EXPECT_THROW(dense(in.student.unsqueeze(0), in.teacher.unsqueeze(0), in.targets, o), Error);
    EXPECT_THROW(dense(in.student, in.teacher, in.targets.unsqueeze(1), o), Error);
    EXPECT_THROW(sparse(in.student, in.ids[0], in.logprobs[0], in.targets, o), Error);
    EXPECT_THROW(sparse(in.student.unsqueeze(0), in.ids, in.logprobs, in.targets, o), Error);
    // N mismatch.
    EXPECT_THROW(dense(in.student, in.teacher.narrow(0, 0, 3), in.targets, o), Error);
    EXPECT_THROW(dense(in.student, in.teacher, in.targets.narrow(0, 0, 3), o), Error);
    EXPECT_THROW(
        sparse(in.student, in.ids.narrow(0, 0, 3), in.logprobs.narrow(0, 0, 3), in.targets, o),
        Error);
    EXPECT_THROW(sparse(in.student, in.ids, in.logprobs.narrow(0, 0, 3), in.targets, o), Error);
    EXPECT_THROW(sparse(in.student, in.ids, in.logprobs, in.targets.narrow(0, 0, 3), o), Error);
    // V mismatch / K mismatch between ids and logprobs.
    EXPECT_THROW(dense(in.student, in.teacher.narrow(1, 0, 9), in.targets, o), Error);
    EXPECT_THROW(sparse(in.student, in.ids, in.logprobs.narrow(1, 0, 2), in.targets, o), Error);
    // Ids out of range, repeated, K > V, K = 0.
    auto ids = in.ids.clone();
    ids[1][2] = g.V;
    EXPECT_THROW(sparse(in.student, ids, in.logprobs, in.targets, o), Error);
    ids[1][2] = -1;
    EXPECT_THROW(sparse(in.student, ids, in.logprobs, in.targets, o), Error);
    ids = in.ids.clone();
    ids[3][1] = ids[3][0];
    EXPECT_THROW(sparse(in.student, ids, in.logprobs, in.targets, o), Error);
    auto wide_ids = torch::arange(11, torch::kInt64).repeat({4, 1});
    EXPECT_THROW(
        sparse(in.student, wide_ids, torch::full({4, 11}, -3.0, torch::kFloat64), in.targets, o),
        Error);
    EXPECT_THROW(
        sparse(in.student, in.ids.narrow(1, 0, 0), in.logprobs.narrow(1, 0, 0), in.targets, o),
        Error);
    // Wrong dtypes, NaN log-probs.
    EXPECT_THROW(sparse(in.student, in.ids.to(torch::kFloat64), in.logprobs, in.targets, o), Error);
    EXPECT_THROW(dense(in.student, in.teacher, in.targets.to(torch::kFloat64), o), Error);
    EXPECT_THROW(dense(in.student.to(torch::kInt64), in.teacher, in.targets, o), Error);
    auto lp = in.logprobs.clone();
    lp[0][0] = std::nan("");
    EXPECT_THROW(sparse(in.student, in.ids, lp, in.targets, o), Error);
    // Targets out of range (but -100 is fine).
    auto y = in.targets.clone();
    y[0] = g.V;
    EXPECT_THROW(dense(in.student, in.teacher, y, o), Error);
    EXPECT_THROW(sparse(in.student, in.ids, in.logprobs, y, o), Error);
    y[0] = -5;
    EXPECT_THROW(dense(in.student, in.teacher, y, o), Error);
    // Options.
    for (auto bad :
         {make_opts({LossKind::kForwardKL}, 0.0, 0.0), make_opts({LossKind::kForwardKL}, -1.0, 0.0),
          make_opts({LossKind::kForwardKL}, std::nan(""), 0.0),
          make_opts({LossKind::kForwardKL}, 1.0, 1.5), make_opts({LossKind::kForwardKL}, 1.0, -0.1),
          make_opts({LossKind::kJSD, -0.1}, 1.0, 0.0), make_opts({LossKind::kJSD, 1.1}, 1.0, 0.0),
          make_opts({LossKind::kSkewForwardKL, 0.5, 2.0}, 1.0, 0.0)}) {
        EXPECT_THROW(dense(in.student, in.teacher, in.targets, bad), Error) << describe(bad);
        EXPECT_THROW(sparse(in.student, in.ids, in.logprobs, in.targets, bad), Error)
            << describe(bad);
    }
    // The message says what is wrong.
    try {
        sparse(in.student, wide_ids, torch::full({4, 11}, -3.0, torch::kFloat64), in.targets, o);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("K = 11"), std::string::npos) << e.what();
    }
}

// The tensor-op form of the student's buckets (what runs on a GPU) against the fused CPU kernel:
// values and gradients, at several temperatures, with -inf logits and K = V - 1.
TEST(Losses, StudentBucketsTensorOpsEqualFusedKernel) {
    torch::manual_seed(3);
    for (double tau : {1.0, 0.5, 2.0}) {
        for (int64_t K : {1, 4, 15}) {
            const int64_t N = 6, V = 16;
            auto base = torch::randn({N, V}, torch::kFloat64) * 3;
            base[2][5] = -std::numeric_limits<double>::infinity();
            auto ids = torch::stack({torch::randperm(V, torch::kInt64).narrow(0, 0, K),
                                     torch::randperm(V, torch::kInt64).narrow(0, 0, K),
                                     torch::randperm(V, torch::kInt64).narrow(0, 0, K),
                                     torch::randperm(V, torch::kInt64).narrow(0, 0, K),
                                     torch::randperm(V, torch::kInt64).narrow(0, 0, K),
                                     torch::randperm(V, torch::kInt64).narrow(0, 0, K)});
            auto a = base.clone().requires_grad_(true), b = base.clone().requires_grad_(true);
            auto fa = student_buckets(a, ids, tau, /*fused=*/true);
            auto fb = student_buckets(b, ids, tau, /*fused=*/false);
            ASSERT_EQ(fa[0].sizes(), fb[0].sizes());
            EXPECT_TRUE(torch::allclose(fa[0], fb[0], 1e-12, 1e-12)) << "tau " << tau << " K " << K;
            EXPECT_TRUE(torch::allclose(fa[1], fb[1], 1e-12, 1e-12)) << "tau " << tau << " K " << K;
            // a loss that weighs every bucket and log_z differently
            auto w = torch::randn({N, K + 1}, torch::kFloat64);
            auto la = (fa[0].masked_fill(torch::isinf(fa[0]), 0) * w).sum() + fa[1].sum() * 0.3;
            auto lb = (fb[0].masked_fill(torch::isinf(fb[0]), 0) * w).sum() + fb[1].sum() * 0.3;
            la.backward();
            lb.backward();
            EXPECT_TRUE(torch::allclose(a.grad(), b.grad(), 1e-9, 1e-10))
                << "tau " << tau << " K " << K << "\n" << (a.grad() - b.grad()).abs().max();
        }
    }
}

#else  // DISTILL_LOSSES_REF

// ---------------------------------------------------------------------------------------------
// Reference comparison against tests/ref/losses_ref.py.

namespace {

struct Case {
    std::string name;
    std::string label;  // what the case is, for messages
    Inputs in;          // float64 (already rounded to float32 for the float32 cases)
    LossOptions opts;
    torch::Dtype dtype;
};

// Error of a against reference b, as a fraction of the tolerance atol + rtol * scale.
struct Stat {
    double max_abs = 0, max_rel = 0, max_frac = 0;
    std::string worst;
    int checked = 0, failed = 0;
    void add(double err, double scale, double atol, double rtol, const std::string& what) {
        ++checked;
        max_abs = std::max(max_abs, err);
        if (scale > 0) max_rel = std::max(max_rel, err / scale);
        const double frac = err / (atol + rtol * scale);
        if (!(frac <= 1)) {  // NaN fails too
            if (failed < 20)
                ADD_FAILURE() << what << ": error " << err << " > tolerance "
                              << atol + rtol * scale;
            ++failed;
        }
        if (!(frac <= max_frac)) {
            max_frac = frac;
            worst = what;
        }
    }
};

}  // namespace

TEST(LossesRef, AgainstPyTorch) {
    // Cases: every kind x tau x ce_weight x shape, plus edge inputs, each in float64 and float32.
    std::vector<std::pair<std::string, Gen> > shapes, edges;
    auto gen = [](int64_t N, int64_t V, int64_t K) {
        Gen g;
        g.N = N;
        g.V = V;
        g.K = K;
        return g;
    };
    shapes.push_back({"k=1", gen(6, 11, 1)});
    shapes.push_back({"k=V-1", gen(6, 11, 10)});
    shapes.push_back({"k=V", gen(6, 11, 11)});
    shapes.push_back({"k=4 V=40", gen(5, 40, 4)});
    auto edge = [&](const char* name, auto&& f) {
        Gen g = gen(5, 40, 4);
        f(g);
        edges.push_back({name, g});
    };
    edge("peaked teacher x50", [](Gen& g) { g.teacher_scale = 50; });
    edge("flat teacher", [](Gen& g) { g.teacher_scale = 1e-3; });
    edge("teacher rest ~0 (+60)", [](Gen& g) { g.teacher_boost = 60; });
    edge("teacher rest ~1e-6 (+18)", [](Gen& g) { g.teacher_boost = 18; });
    edge("student rest ~1e-12 (+30)", [](Gen& g) { g.student_boost = 30; });
    edge("peaked student x30", [](Gen& g) { g.student_scale = 30; });
    edge("k=1 one-hot teacher", [](Gen& g) {
        g.K = 1;
        g.teacher_boost = 60;
    });
    edge("many ignored", [](Gen& g) {
        g.N = 10;
        g.ignore_frac = 0.7;
    });
    edge("all ignored", [](Gen& g) { g.all_ignored = true; });

    std::vector<Case> cases;
    std::map<std::string, torch::Tensor> tensors;
    std::map<std::string, std::string> meta;
    uint64_t seed = 100;
    auto add_case = [&](const std::string& label, const Gen& g, const LossOptions& o) {
        auto in64 = make_inputs(g, seed++);
        for (auto dt : {torch::kFloat64, torch::kFloat32}) {
            Case c;
            c.name = str_cat("c", cases.size());
            c.label = str_cat(label, " ", describe(o), dt == torch::kFloat64 ? " f64" : " f32");
            c.in = in64;
            c.opts = o;
            c.dtype = dt;
            if (dt == torch::kFloat32)  // the reference sees exactly what the float32 run sees
                for (auto* t : {&c.in.student, &c.in.teacher, &c.in.logprobs})
                    *t = t->to(torch::kFloat32).to(torch::kFloat64);
            tensors[c.name + ".student"] = c.in.student;
            tensors[c.name + ".teacher"] = c.in.teacher;
            tensors[c.name + ".targets"] = c.in.targets;
            tensors[c.name + ".ids"] = c.in.ids;
            tensors[c.name + ".logprobs"] = c.in.logprobs;
            nlohmann::json j = {{"kind", loss_kind_name(o.kind)},
                                {"tau", o.temperature},
                                {"ce_weight", o.ce_weight},
                                {"beta", o.beta},
                                {"alpha", o.alpha},
                                {"rest_eps", dt == torch::kFloat64
                                                 ? std::numeric_limits<double>::epsilon()
                                                 : double(std::numeric_limits<float>::epsilon())}};
            meta[c.name] = j.dump();
            cases.push_back(std::move(c));
        }
    };
    for (const auto& v : all_variants())
        for (double tau : {1.0, 2.0, 0.5}) {
            for (double ce : {0.0, 0.3})
                for (const auto& [label, g] : shapes) add_case(label, g, make_opts(v, tau, ce));
            for (const auto& [label, g] : edges) add_case(label, g, make_opts(v, tau, 0.3));
        }

    const std::string dir = distill::testing_util::temp_dir("losses-ref");
    const std::string in_path = dir + "/losses-ref-in.safetensors";
    const std::string out_path = dir + "/losses-ref-out.safetensors";
    save_safetensors(in_path, tensors, meta);
    const std::string cmd = str_cat("/usr/bin/python3 '", DISTILL_SOURCE_DIR,
                                    "/tests/ref/losses_ref.py' '", in_path, "' '", out_path, "'");
    ASSERT_EQ(std::system(cmd.c_str()), 0)
        << "the reference failed: " << cmd << " (needs python3-torch and python3-numpy)";
    SafetensorsFile ref(out_path);

    // Tolerances (|a - b| <= atol + rtol * scale; scale = |ref| for the loss, max |ref grad| for
    // the gradient). The reference is float64 in probability space; the C++ code is log space.
    // float64: both sides are accurate to ~1e-15 relative; 1e-10 leaves room for the sums over V
    // and the log(1 - x) of the peaked cases. float32: eps = 1.2e-7 and the losses add up to
    // V = 40 terms of log-probs up to ~300 in magnitude (peaked x50), so errors of ~1e-6
    // relative are expected; 2e-5 is an order of magnitude above what is observed.
    struct Tol {
        double atol, rtol;
    };
    const Tol tol64{1e-10, 1e-10}, tol32{2e-5, 2e-5};
    std::map<std::string, Stat> stats;
    double max_sens = 0;
    for (const auto& c : cases) {
        const Tol t = c.dtype == torch::kFloat64 ? tol64 : tol32;
        const std::string prec = c.dtype == torch::kFloat64 ? "f64" : "f32";
        for (bool sparse : {false, true}) {
            const std::string form = sparse ? "sparse" : "dense";
            auto r = run_loss(c.in, c.opts, sparse, c.dtype);
            const double want =
                ref.get(c.name + "." + form + ".loss", torch::kFloat64).item<double>();
            auto gwant = ref.get(c.name + "." + form + ".grad", torch::kFloat64);
            // Sparse only: what the rounding uncertainty of the teacher's rest r = 1 - sum p
            // leaves undetermined (non-zero only where r << 1 - p_max; see losses_ref.py).
            double loss_sens = 0, grad_sens = 0;
            if (sparse) {
                loss_sens = ref.get(c.name + ".sparse.loss_sens", torch::kFloat64).item<double>();
                grad_sens = ref.get(c.name + ".sparse.grad_sens", torch::kFloat64).item<double>();
            }
            const std::string what = str_cat(c.name, " ", form, " ", c.label);
            stats[prec + " " + form + " loss"].add(
                std::abs(r.loss - want), std::abs(want), t.atol + loss_sens, t.rtol,
                what + " loss " + std::to_string(r.loss) + " want " + std::to_string(want));
            stats[prec + " " + form + " grad"].add((r.grad - gwant).abs().max().item<double>(),
                                                   gwant.abs().max().item<double>(),
                                                   t.atol + grad_sens, t.rtol, what + " grad");
            max_sens = std::max(max_sens, loss_sens);
        }
    }
    std::cout << cases.size() << " cases (" << cases.size() / 2 << " inputs x {f64, f32}), "
              << "dense and sparse, values and gradients:\n";
    for (const auto& [key, s] : stats)
        std::cout << "  " << key << ": " << s.checked << " checked, " << s.failed
                  << " failed, max abs err " << s.max_abs << ", max rel err " << s.max_rel
                  << ", worst " << s.max_frac << " of tolerance (" << s.worst << ")\n";
    std::cout << "  largest allowance for the rounding of the teacher's rest (sparse loss): "
              << max_sens << "\n";
}

#endif  // DISTILL_LOSSES_REF
