// distill — the training building blocks, each against an independent statement of what it must do:
//   test-train      (label unit): the learning-rate schedule against the formula written out here,
//                   sample_batch (determinism, windows inside the shard, shifted targets, uniform
//                   coverage), the sliding eval windows of for_each_window (every target once,
//                   context, stride, edge cases) against plain forwards of the same model.
//   test-train-ref  (label ref, DISTILL_TRAIN_REF): AdamW against torch.optim.AdamW
//                   (tests/ref/adamw_ref.py), step by step, including a save/load of its state.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "eval/eval.h"
#include "io/safetensors.h"
#include "io/shards.h"
#if __has_include("train/batches.h")
#include "train/batches.h"
#endif
#include "model/fused.h"
#include "model/llama.h"
#include "test-util.h"
#include "train/optimizer.h"
#include "util/error.h"

using namespace distill;
using namespace distill::testing_util;

#ifdef DISTILL_TRAIN_REF

// ---- AdamW against torch.optim.AdamW -----------------------------------------------------------

TEST(AdamWRef, MatchesTorchOptimAdamW) {
    const int steps = 6;
    AdamWOptions o;
    o.beta1 = 0.85;
    o.beta2 = 0.97;
    o.eps = 1e-6;
    o.weight_decay = 0.3;
    // warm-up, then decay, and a jump: the lr really changes from step to step
    const std::vector<double> lrs = {1e-2, 2e-2, 3e-2, 2.5e-2, 5e-3, 4e-2};
    torch::manual_seed(42);
    // a matrix, a 3-D tensor (decayed), a bias (not decayed); gradients of different scales,
    // one of them sparse-ish with exact zeros
    std::map<std::string, torch::Tensor> init = {{"w", torch::randn({4, 3})},
                                                 {"conv", torch::randn({2, 3, 2})},
                                                 {"b", torch::randn({5})}};
    std::map<std::string, torch::Tensor> grads = {
        {"w", torch::randn({steps, 4, 3})},
        {"conv", torch::randn({steps, 2, 3, 2}) * 1e-3},
        {"b", torch::randn({steps, 5}) * 10 * (torch::rand({steps, 5}) > 0.3).to(torch::kFloat32)}};

    const std::string dir = temp_dir("adamw");
    std::map<std::string, torch::Tensor> in;
    for (const auto& [n, t] : init) {
        in[n + ".init"] = t;
        in[n + ".grads"] = grads[n];
    }
    std::string lr_list;
    for (double lr : lrs) {
        char buf[40];
        std::snprintf(buf, sizeof buf, "%.17g", lr);
        lr_list += (lr_list.empty() ? "" : ",") + std::string(buf);
    }
    auto str = [](double v) {
        char buf[40];
        std::snprintf(buf, sizeof buf, "%.17g", v);
        return std::string(buf);
    };
    save_safetensors(dir + "/in.safetensors", in,
                     {{"beta1", str(o.beta1)}, {"beta2", str(o.beta2)}, {"eps", str(o.eps)},
                      {"weight_decay", str(o.weight_decay)}, {"lr", lr_list}});
    ASSERT_EQ(run_python("tests/ref/adamw_ref.py", dir + "/in.safetensors " + dir + "/out.safetensors"), 0);
    SafetensorsFile ref(dir + "/out.safetensors");

    // distill, with the fused CPU update and with the tensor ops a GPU runs: the first 3 steps,
    // then the state saved and loaded into a fresh optimizer over copies of the parameters (as a
    // resumed run does), then the rest
    for (bool fused : {true, false}) {
    SCOPED_TRACE(fused ? "fused" : "tensor ops");
    set_fused_kernels(fused);
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& [n, t] : init) params.push_back({n, t.clone().requires_grad_(true)});
    auto opt = std::make_unique<AdamW>(params, o);
    double worst = 0;
    for (int s = 0; s < steps; ++s) {
        if (s == 3) {
            auto state = opt->state();
            std::map<std::string, torch::Tensor> copied;
            for (const auto& [k, v] : state) copied[k] = v.clone();
            std::vector<std::pair<std::string, torch::Tensor>> again;
            for (auto& [n, p] : params) again.push_back({n, p.detach().clone().requires_grad_(true)});
            params = again;
            opt = std::make_unique<AdamW>(params, o);
            opt->load_state(copied);
            EXPECT_EQ(opt->steps(), 3);
        }
        for (auto& [n, p] : params) p.mutable_grad() = grads[n][s].clone();
        opt->step(lrs[size_t(s)]);
        for (auto& [n, p] : params) {
            torch::Tensor want = ref.get(n + ".after")[s];
            const double d = (p.detach() - want).abs().max().item<double>();
            const double scale = want.abs().max().item<double>();
            worst = std::max(worst, d);
            EXPECT_LE(d, 1e-6 * std::max(1.0, scale)) << n << " after step " << s + 1;
            // and the step really moved the parameter
            torch::Tensor before = s == 0 ? init[n] : ref.get(n + ".after")[s - 1];
            EXPECT_GT((want - before).abs().max().item<double>(), 1e-5) << n << " step " << s + 1;
        }
    }
    set_fused_kernels(true);
    std::printf("[adamw %s] max |distill - torch.optim.AdamW| over %d steps: %.3g\n", fused ? "fused" : "tensor ops",
                steps, worst);
    }
}

#else  // !DISTILL_TRAIN_REF

// ---- gradient clipping -------------------------------------------------------------------------

// AdamW::clip_grad_norm (fused on float32 CPU tensors) against libtorch's own clip_grad_norm_, below
// and above the threshold, on gradients of very different sizes.
TEST(Optimizer, ClipGradNormMatchesLibtorch) {
    torch::manual_seed(5);
    for (double max_norm : {1e3, 1.0, 1e-3}) {
        std::vector<std::pair<std::string, torch::Tensor>> ours;
        std::vector<torch::Tensor> theirs;
        for (auto shape : std::vector<std::vector<int64_t>>{{300, 70}, {7}, {40000}, {3, 5, 2}}) {
            auto g = torch::randn(shape) * std::pow(10.0, double(shape.size()) - 2);
            ours.push_back({std::to_string(ours.size()), torch::zeros(shape).requires_grad_(true)});
            ours.back().second.mutable_grad() = g.clone();
            theirs.push_back(torch::zeros(shape).requires_grad_(true));
            theirs.back().mutable_grad() = g.clone();
        }
        AdamW opt(ours, {});
        const double n_ours = opt.clip_grad_norm(max_norm);
        const double n_theirs = torch::nn::utils::clip_grad_norm_(theirs, max_norm);
        EXPECT_NEAR(n_ours, n_theirs, 1e-5 * n_theirs) << "max_norm " << max_norm;
        for (size_t i = 0; i < theirs.size(); ++i) {
            const double d = (ours[i].second.grad() - theirs[i].grad()).abs().max().item<double>();
            EXPECT_LE(d, 1e-5 * std::max(1e-12, theirs[i].grad().abs().max().item<double>())) << "tensor " << i;
        }
    }
}

// A deferred clip (the factor applied as step() reads each gradient) gives the update of clipping
// first, bit for bit, below and above the threshold and over several steps.
TEST(Optimizer, DeferredClipIsTheSameUpdate) {
    torch::manual_seed(6);
    for (double max_norm : {1e3, 0.5}) {
        std::vector<std::pair<std::string, torch::Tensor>> a, b;
        for (auto shape : std::vector<std::vector<int64_t>>{{300, 70}, {7}, {40000}}) {
            auto w = torch::randn(shape);
            a.push_back({std::to_string(a.size()), w.clone().requires_grad_(true)});
            b.push_back({std::to_string(b.size()), w.clone().requires_grad_(true)});
        }
        AdamW oa(a, {}), ob(b, {});
        for (int step = 0; step < 3; ++step) {
            for (size_t i = 0; i < a.size(); ++i) {
                auto g = torch::randn(a[i].second.sizes()) * 3;
                a[i].second.mutable_grad() = g.clone();
                b[i].second.mutable_grad() = g.clone();
            }
            EXPECT_EQ(oa.clip_grad_norm(max_norm), ob.clip_grad_norm(max_norm, /*defer=*/true));
            oa.step(1e-2);
            ob.step(1e-2);
            for (size_t i = 0; i < a.size(); ++i)
                EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << "max_norm " << max_norm << " step " << step;
        }
        const auto sa = oa.state(), sb = ob.state();
        for (const auto& [k, v] : sa) EXPECT_TRUE(torch::equal(v, sb.at(k))) << k;
    }
}

// ---- the learning-rate schedule ----------------------------------------------------------------

namespace {

// The schedule as docs/training.md and train/optimizer.h state it, written out here: steps are
// 0-based; warm-up multiplies the peak by (step + 1) / warmup for steps 0 .. warmup-1 (the last
// warm-up step trains at the peak); then half a cosine from the peak at step `warmup` down to
// peak * min_ratio at step `total`, and flat at that floor beyond.
double schedule(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio) {
    if (step < warmup) return peak * double(step + 1) / double(warmup);
    if (total <= warmup) return peak;
    double x = double(step - warmup) / double(total - warmup);
    if (x > 1) x = 1;
    const double floor = peak * min_ratio;
    return floor + (peak - floor) * (1 + std::cos(x * 3.14159265358979323846)) / 2;
}

}  // namespace

TEST(LrSchedule, MatchesTheDocumentedFormula) {
    struct C { int64_t total, warmup; double peak, min_ratio; };
    for (const C c : {C{100, 10, 1e-3, 0.1}, C{1000, 0, 3e-4, 0.0}, C{50, 50, 1e-2, 0.1},
                      C{20, 30, 1e-2, 0.5}, C{7, 1, 2.0, 1.0}, C{300, 17, 6e-4, 0.25}}) {
        for (int64_t s = 0; s < c.total + 20; ++s) {
            const double got = lr_at(s, c.total, c.warmup, c.peak, c.min_ratio);
            EXPECT_NEAR(got, schedule(s, c.total, c.warmup, c.peak, c.min_ratio), 1e-12 * c.peak)
                << "step " << s << " of " << c.total << ", warmup " << c.warmup;
        }
    }
}

TEST(LrSchedule, LandmarksOfWarmupAndCosine) {
    const double peak = 1e-3, m = 0.1;
    const int64_t total = 110, warmup = 10;
    // warm-up: linear, never 0 (step 0 trains), the peak at the last warm-up step
    EXPECT_DOUBLE_EQ(lr_at(0, total, warmup, peak, m), peak / 10);
    EXPECT_DOUBLE_EQ(lr_at(4, total, warmup, peak, m), peak / 2);
    EXPECT_DOUBLE_EQ(lr_at(9, total, warmup, peak, m), peak);
    EXPECT_DOUBLE_EQ(lr_at(10, total, warmup, peak, m), peak);
    // half way through the decay: the middle of peak and floor
    EXPECT_NEAR(lr_at(60, total, warmup, peak, m), peak * (1 + m) / 2, 1e-15);
    // the floor at `total` and after; the last step trained (total-1) is just above it
    EXPECT_NEAR(lr_at(110, total, warmup, peak, m), peak * m, 1e-15);
    EXPECT_NEAR(lr_at(500, total, warmup, peak, m), peak * m, 1e-15);
    EXPECT_GT(lr_at(109, total, warmup, peak, m), peak * m);
    EXPECT_LT(lr_at(109, total, warmup, peak, m), peak * m * 1.01);
    // monotone: up during warm-up, down after
    for (int64_t s = 1; s < total; ++s) {
        const double a = lr_at(s - 1, total, warmup, peak, m), b = lr_at(s, total, warmup, peak, m);
        if (s < warmup) EXPECT_GT(b, a) << s;
        else EXPECT_LE(b, a) << s;
    }
    // no warm-up: the peak at step 0
    EXPECT_DOUBLE_EQ(lr_at(0, total, 0, peak, m), peak);
}

// ---- sample_batch ------------------------------------------------------------------------------

namespace {

// A shard whose token at position i is i (mod vocab), so a window tells where it was cut from.
std::string position_shard(const std::string& dir, int64_t n, int64_t vocab) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t(i % vocab);
    const std::string prefix = dir + "/pos";
    write_shard(prefix, ids, vocab, "test-fingerprint", "positions", n);
    return prefix;
}

BatchSpec spec(int64_t B, int64_t T, uint64_t seed, bool aligned = false) {
    BatchSpec s;
    s.batch_size = B;
    s.seq_len = T;
    s.seed = seed;
    s.aligned = aligned;
    return s;
}

}  // namespace

TEST(SampleBatch, DeterministicPerSeedStepMicro) {
    TokenShard shard(position_shard(temp_dir("batch"), 5000, 60000));
    const BatchSpec a = spec(8, 32, 7);
    for (int64_t step : {int64_t(0), int64_t(1), int64_t(999), int64_t(1) << 33})
        for (int64_t micro : {int64_t(0), int64_t(3)}) {
            Batch x = sample_batch(shard, a, step, micro), y = sample_batch(shard, a, step, micro);
            EXPECT_TRUE(torch::equal(x.tokens, y.tokens)) << step << "/" << micro;
        }
    const torch::Tensor base = sample_batch(shard, a, 5, 0).tokens;
    EXPECT_FALSE(torch::equal(base, sample_batch(shard, a, 6, 0).tokens)) << "next step";
    EXPECT_FALSE(torch::equal(base, sample_batch(shard, a, 5, 1).tokens)) << "next micro-batch";
    EXPECT_FALSE(torch::equal(base, sample_batch(shard, spec(8, 32, 8), 5, 0).tokens)) << "other seed";
    EXPECT_FALSE(torch::equal(base, sample_batch(shard, spec(8, 32, 7 + (uint64_t(1) << 32)), 5, 0).tokens))
        << "seed differing only in its high 32 bits";
    EXPECT_FALSE(torch::equal(sample_batch(shard, a, 0, 0).tokens,
                              sample_batch(shard, a, int64_t(1) << 32, 0).tokens))
        << "steps differing only in their high 32 bits";
    // no two steps of a run repeat a batch
    std::set<std::vector<int64_t>> seen;
    for (int64_t step = 0; step < 200; ++step) {
        auto t = sample_batch(shard, a, step, 0).tokens.select(1, 0).contiguous();
        seen.insert(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    }
    EXPECT_EQ(seen.size(), 200u);
}

TEST(SampleBatch, WindowsAreContiguousInsideTheShardAndCoverItUniformly) {
    const int64_t N = 3000, T = 50, B = 16;
    TokenShard shard(position_shard(temp_dir("batch"), N, 60000));
    const BatchSpec s = spec(B, T, 3);
    const int64_t starts_possible = N - T;  // a window is T+1 tokens: starts 0 .. N-T-1
    std::vector<int64_t> hits(size_t(starts_possible), 0);
    int64_t draws = 0;
    for (int64_t step = 0; step < 3000; ++step) {
        Batch b = sample_batch(shard, s, step, step % 2);
        ASSERT_EQ(b.tokens.sizes(), (std::vector<int64_t>{B, T + 1}));
        ASSERT_EQ(b.tokens.dtype(), torch::kInt64);
        EXPECT_TRUE(b.windows.empty());
        auto acc = b.tokens.accessor<int64_t, 2>();
        for (int64_t i = 0; i < B; ++i) {
            const int64_t start = acc[i][0];
            ASSERT_GE(start, 0);
            ASSERT_LE(start + T, N - 1) << "window runs past the shard";
            // inputs tokens[:, :T], targets tokens[:, 1:]: each target is the next token
            for (int64_t j = 0; j < T; ++j) ASSERT_EQ(acc[i][j + 1], acc[i][j] + 1) << start << " " << j;
            ++hits[size_t(start)];
            ++draws;
        }
    }
    // both ends are reachable
    EXPECT_GT(hits.front(), 0);
    EXPECT_GT(hits.back(), 0);
    // uniform over the starts: chi-square over 20 equal bins (19 degrees of freedom; 43.8 is
    // the 0.1% point)
    const int bins = 20;
    std::vector<double> count(bins, 0);
    for (int64_t st = 0; st < starts_possible; ++st) count[size_t(st * bins / starts_possible)] += double(hits[size_t(st)]);
    double chi2 = 0;
    for (int k = 0; k < bins; ++k) {
        int64_t lo = (k * starts_possible + bins - 1) / bins, hi = ((k + 1) * starts_possible + bins - 1) / bins;
        const double expected = double(draws) * double(hi - lo) / double(starts_possible);
        chi2 += (count[size_t(k)] - expected) * (count[size_t(k)] - expected) / expected;
    }
    std::printf("[sample_batch] %lld windows, chi-square over %d bins: %.1f\n", (long long)draws, bins, chi2);
    EXPECT_LT(chi2, 43.8);
}

TEST(SampleBatch, AlignedWindowsStartAtMultiplesOfT) {
    const int64_t N = 1000, T = 64, B = 8;
    TokenShard shard(position_shard(temp_dir("batch"), N, 60000));
    const BatchSpec s = spec(B, T, 11, true);
    const int64_t W = num_aligned_windows(N, T);
    EXPECT_EQ(W, (N - 1) / T);  // window w is tokens [w*T, w*T+T]: the last needs token w*T+T < N
    std::vector<int> seen(size_t(W), 0);
    for (int64_t step = 0; step < 200; ++step) {
        Batch b = sample_batch(shard, s, step, 0);
        ASSERT_EQ(int64_t(b.windows.size()), B);
        auto acc = b.tokens.accessor<int64_t, 2>();
        for (int64_t i = 0; i < B; ++i) {
            const int64_t w = b.windows[size_t(i)];
            ASSERT_GE(w, 0);
            ASSERT_LT(w, W);
            ++seen[size_t(w)];
            for (int64_t j = 0; j <= T; ++j) ASSERT_EQ(acc[i][j], w * T + j);
        }
    }
    for (int64_t w = 0; w < W; ++w) EXPECT_GT(seen[size_t(w)], 0) << "window " << w << " never drawn";
    EXPECT_EQ(num_aligned_windows(T, T), 0);
    EXPECT_EQ(num_aligned_windows(T + 1, T), 1);
    EXPECT_EQ(num_aligned_windows(2 * T, T), 1);
    EXPECT_EQ(num_aligned_windows(2 * T + 1, T), 2);
}

TEST(SampleBatch, TooShortAShardIsAnError) {
    TokenShard shard(position_shard(temp_dir("batch"), 33, 60000));
    EXPECT_THROW(sample_batch(shard, spec(2, 32, 1), 0, 0), Error);
    EXPECT_NO_THROW(sample_batch(shard, spec(2, 31, 1), 0, 0));
}

// ---- sliding eval windows (for_each_window) ----------------------------------------------------

namespace {

Llama window_model() {
    ModelConfig c;
    c.vocab_size = 40;
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 48;
    c.max_position_embeddings = 64;
    Llama m(c);
    m->init_weights(9);
    m->eval();
    return m;
}

struct Visit {
    int64_t first, n;
    torch::Tensor log_probs, targets;
};

// Runs for_each_window and checks it against what the docs promise: targets 1 .. N-1 each scored
// exactly once, in order; a window scores `stride` new targets after the first (the last fewer);
// and each window's log-probs are those of a plain forward over the `min(context, N)` tokens that
// end at its last target (the model sees at most `context` tokens, and a full window whenever
// the text allows).
void check_windows(Llama& m, int64_t N, int64_t context, int64_t stride, int64_t batch) {
    SCOPED_TRACE("N " + std::to_string(N) + " context " + std::to_string(context) + " stride " +
                 std::to_string(stride) + " batch " + std::to_string(batch));
    std::vector<int64_t> ids(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) ids[size_t(i)] = (i * 7 + 3) % 40;
    WindowOptions o;
    o.context = context;
    o.stride = stride;
    o.batch = batch;
    std::vector<Visit> visits;
    for_each_window(m, ids, o, [&](int64_t first, const torch::Tensor& lp, const torch::Tensor& tg) {
        visits.push_back({first, lp.size(0), lp.clone(), tg.clone()});
    });
    if (N < 2) {
        EXPECT_TRUE(visits.empty());
        return;
    }
    // every target 1 .. N-1 exactly once
    std::vector<int> scored(size_t(N), 0);
    for (const Visit& v : visits)
        for (int64_t j = 0; j < v.n; ++j)
            if (v.first + j >= 0 && v.first + j < N) ++scored[size_t(v.first + j)];
    EXPECT_EQ(scored[0], 0);
    for (int64_t i = 1; i < N; ++i) EXPECT_EQ(scored[size_t(i)], 1) << "target " << i;
    const int64_t L = std::min(context, N);
    // expected plan, written independently: the first window scores 1 .. L-1, each next one the
    // following `stride` targets (the last one what is left)
    // (a window of L tokens scores at most L-1 targets, so stride == context gives L-1)
    const int64_t per = std::min(stride, L - 1);
    std::vector<std::pair<int64_t, int64_t>> plan = {{1, L - 1}};
    for (int64_t next = L; next < N; next += per) plan.push_back({next, std::min(per, N - next)});
    ASSERT_EQ(visits.size(), plan.size());
    torch::NoGradGuard ng;
    for (size_t w = 0; w < visits.size(); ++w) {
        const Visit& v = visits[w];
        EXPECT_EQ(v.first, plan[w].first) << "window " << w;
        ASSERT_EQ(v.n, plan[w].second) << "window " << w;
        ASSERT_EQ(v.targets.numel(), v.n);
        for (int64_t j = 0; j < v.n; ++j) {
            EXPECT_EQ(v.targets[j].item<int64_t>(), ids[size_t(v.first + j)]);
        }
        const int64_t end = v.first + v.n, begin = end - L;
        ASSERT_GE(begin, 0);
        torch::Tensor x = torch::tensor(std::vector<int64_t>(ids.begin() + begin, ids.begin() + end)).unsqueeze(0);
        torch::Tensor want = torch::log_softmax(m->forward(x).squeeze(0).to(torch::kFloat32), -1)
                                 .narrow(0, v.first - 1 - begin, v.n);
        ASSERT_EQ(v.log_probs.sizes(), want.sizes());
        EXPECT_LT((v.log_probs.to(torch::kFloat32) - want).abs().max().item<double>(), 1e-4) << "window " << w;
    }
}

}  // namespace

TEST(EvalWindows, EveryTargetScoredOnceWithBoundedContext) {
    Llama m = window_model();
    for (int64_t batch : {1, 3}) {
        check_windows(m, 50, 16, 8, batch);   // several windows, a short last one
        check_windows(m, 48, 16, 8, batch);   // the last window ends exactly at N
        check_windows(m, 50, 16, 1, batch);   // stride 1: one new target a window
        check_windows(m, 50, 16, 5, batch);
    }
}

// stride == context with more than one full window: the window after [0, C) used to be [C, 2C),
// whose first token has no context inside it, so target C was never scored (nor 2C, ...). Found
// by this test; plan_windows now starts such a window one token earlier.
TEST(EvalWindows, StrideEqualToContextScoresEveryTarget) {
    Llama m = window_model();
    for (int64_t batch : {1, 3}) check_windows(m, 50, 16, 16, batch);
}

TEST(EvalWindows, EdgeCases) {
    Llama m = window_model();
    check_windows(m, 0, 16, 8, 2);
    check_windows(m, 1, 16, 8, 2);   // nothing to score
    check_windows(m, 2, 16, 8, 2);   // one target
    check_windows(m, 10, 16, 8, 2);  // text shorter than one window
    check_windows(m, 16, 16, 8, 2);  // exactly one window
    check_windows(m, 17, 16, 8, 2);  // one window and one more target
    check_windows(m, 17, 16, 16, 2); // stride == context, the second window clamped to the end
    check_windows(m, 64, 64, 64, 4); // the model's whole context
    check_windows(m, 40, 2, 1, 4);   // the smallest context allowed
}

// Scoring runs in c10::InferenceMode. A fresh model scored before it is ever trained (a
// held-out curve's step-0 point) builds its rotary tables there; they must stay normal tensors,
// else the next training step fails ("Inference tensors cannot be saved for backward").
TEST(EvalWindows, ScoringAFreshModelLeavesItTrainable) {
    Llama m = window_model();
    std::vector<int64_t> ids(30);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int64_t(i * 5 % 40);
    WindowOptions o;
    o.context = 16;
    o.stride = 8;
    for_each_window(m, ids, o, [](int64_t, const torch::Tensor&, const torch::Tensor&) {});
    m->train();
    auto x = torch::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + 16)).unsqueeze(0);
    torch::Tensor loss;
    ASSERT_NO_THROW(loss = torch::log_softmax(m->forward(x), -1).mean(); loss.backward());
    for (const auto& p : m->parameters()) {
        ASSERT_TRUE(p.grad().defined());
        EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
    }
}

TEST(EvalWindows, BadOptionsAreErrors) {
    Llama m = window_model();
    std::vector<int64_t> ids(20, 1);
    auto run_with = [&](int64_t context, int64_t stride, int64_t batch) {
        WindowOptions o;
        o.context = context;
        o.stride = stride;
        o.batch = batch;
        for_each_window(m, ids, o, [](int64_t, const torch::Tensor&, const torch::Tensor&) {});
    };
    EXPECT_THROW(run_with(16, 17, 1), Error);  // stride > context
    EXPECT_THROW(run_with(16, 0, 1), Error);
    EXPECT_THROW(run_with(1, 1, 1), Error);
    EXPECT_THROW(run_with(65, 8, 1), Error);   // beyond max_position_embeddings
    EXPECT_THROW(run_with(16, 8, 0), Error);
}

#endif  // DISTILL_TRAIN_REF
