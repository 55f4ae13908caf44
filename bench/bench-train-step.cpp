// Tokens per second of one training step of the demo's models, distill vs a PyTorch-in-Python
// script doing the same (bench/train_step.py: same model, batch, threads, BLAS kernel, AdamW and
// gradient clipping), printed side by side with their ratio:
//   pretrain   the demo teacher (3.95M), next-token cross-entropy (a pretraining step)
//   ce         the demo student (0.89M), cross-entropy (the baseline student's step)
//   kd-dense   the student from a live teacher: teacher forward (no grad; loaded as `train --teacher`
//              loads it, in bf16 products under bf16 as autocast runs it) + forward KL over V
//   kd-sparse  the student from the teacher's top-32 in a logit cache: (K+1)-bucket forward KL
//              (distill reads the windows from a real cache on disk; Python gets them in memory).
//              The cache holds 7376 windows (the demo's size; 461 chunks of 16); each step reads 16 of them
//              at random, as training does, with the decompressed chunks in memory (as after the
//              first pass over a cache that fits the reader's budget)
//   kd-cold    the same with a reader that keeps no chunk: every window decompresses its chunk
//              (a cache far larger than the reader's memory budget)
// Each peer runs twice: as it comes, and with its heap kept ("same, heap kept": glibc told by
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ what distill's tune_allocator tells it, so that
// its large activations are not fresh pages, each a page fault, every step). How much the
// second is faster depends on what a page fault costs on the machine (a VM's hypervisor above all).
// Then the pretraining step's FLOP rate against this machine's float32 GEMM (torch::mm 2048x2048,
// measured here); the most any pretraining step could reach against PyTorch's, were it nothing but
// its matrix products each at torch::mm's speed alone (timed at the step's shapes); and the KD
// steps against the student's CE step. In fp32, distill also runs with its fused kernels off
// (libtorch's own ops, DISTILL_FUSED=0): what the kernels won.
//
// Precision: fp32 compares float32 with float32. bf16 (distill's --precision bf16: bf16 products,
// float32 master weights) is compared with PyTorch under torch.autocast("cpu", bfloat16). The
// default runs fp32, and bf16 too when `--precision auto` would choose it on this machine.
// The machine's timing noise is large (a VM): each figure is the median of --rounds runs, and the
// two sides alternate.
//
//   bench-train-step [--steps N] [--warmup N] [--rounds R] [--threads N] [--precision fp32|bf16|both]
//                    [--modes pretrain,ce,...] [--peers no]
// (--modes: a subset of the steps; --peers no: distill's own steps only, e.g. to profile one)
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "demo/demo.h"
#include "distill/losses.h"
#include "io/logit-cache.h"
#include "io/safetensors.h"
#include "kernels/cpu-kernels.h"
#include "model/checkpoint.h"
#include "model/fused.h"
#include "train/optimizer.h"
#include "util/device.h"
#include "util/error.h"
#include "util/file.h"
#include "util/platform.h"
#include "util/progress.h"

using namespace distill;

namespace {

// A peer's tok/s and distill's ratio to it, as table cells ("-" and "failed" where it failed).
std::string tok_s(double t) { return t > 0 ? std::to_string(int64_t(t + 0.5)) : "-"; }
std::string ratio(double us, double them) {
    if (them <= 0) return "failed";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2fx", us / them);
    return buf;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

// The float32 GEMM rate of torch::mm at 2048 (what bench-gemm measures), best of a few.
double gemm_gflops() {
    torch::NoGradGuard ng;
    auto a = torch::randn({2048, 2048}), b = torch::randn({2048, 2048});
    torch::mm(a, b);
    double best = 1e9;
    for (int i = 0; i < 5; ++i) {
        const double t0 = now_seconds();
        torch::mm(a, b);
        best = std::min(best, now_seconds() - t0);
    }
    return 2.0 * 2048 * 2048 * 2048 / best / 1e9;
}

// Seconds a training step of model c over M positions spends in its matrix products alone, each
// timed by itself with torch::mm at its shape into a reused output (best of 3): per matrix the
// forward x W^T, the input gradient dY W and the weight gradient dY^T x; q, k and v stacked, gate
// and up stacked, as distill multiplies them. In bf16 the operands and outputs are bf16. Leaves
// out attention's per-head products (2 T H D of flops_per_token's 2 * matmul_params + 2 T H D).
double products_seconds(const ModelConfig& c, int64_t M, bool bf16) {
    torch::NoGradGuard ng;
    const auto opt = torch::TensorOptions().dtype(bf16 ? torch::kBFloat16 : torch::kFloat32);
    const int64_t C = c.hidden_size, D = c.head_dim(), QD = c.num_attention_heads * D;
    const std::vector<std::pair<int64_t, int64_t>> mats = {  // {out, in}, one layer's
        {QD + 2 * c.num_key_value_heads * D, C}, {C, QD}, {2 * c.intermediate_size, C}, {C, c.intermediate_size}};
    auto best_of = [](const std::function<void()>& f) {
        f();
        double best = 1e9;
        for (int i = 0; i < 3; ++i) {
            const double t0 = now_seconds();
            f();
            best = std::min(best, now_seconds() - t0);
        }
        return best;
    };
    auto one = [&](int64_t N, int64_t K) {
        auto x = torch::randn({M, K}, opt), w = torch::randn({N, K}, opt), dy = torch::randn({M, N}, opt);
        auto y = torch::empty({M, N}, opt), dx = torch::empty({M, K}, opt), dw = torch::empty({N, K}, opt);
        return best_of([&] { torch::mm_out(y, x, w.t()); }) + best_of([&] { torch::mm_out(dx, dy, w); }) +
               best_of([&] { torch::mm_out(dw, dy.t(), x); });
    };
    double layer = 0;
    for (const auto& [n, k] : mats) layer += one(n, k);
    return layer * double(c.num_hidden_layers) + one(c.vocab_size, C);
}

}  // namespace

int main(int argc, char** argv) {
    ensure_fast_blas(argc, argv);
    int steps = 10, warmup = 3, threads = 0, rounds = 3;
    std::string precision = "auto", only;
    bool peers = true;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--rounds")) rounds = std::max(1, std::atoi(argv[i + 1]));
        if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--precision")) precision = argv[i + 1];
        if (!std::strcmp(argv[i], "--modes")) only = std::string(",") + argv[i + 1] + ",";
        if (!std::strcmp(argv[i], "--peers")) peers = std::strcmp(argv[i + 1], "no") != 0;
    }
    std::vector<std::string> modes;
    for (const char* m : {"pretrain", "ce", "kd-dense", "kd-sparse", "kd-cold"})
        if (only.empty() || only.find(str_cat(",", m, ",")) != std::string::npos) modes.push_back(m);
    if (modes.empty()) {
        std::fprintf(stderr, "bench-train-step: --modes names none of pretrain, ce, kd-dense, kd-sparse, kd-cold\n");
        return 2;
    }
    tune_allocator();
    set_threads(threads);
    threads = torch::get_num_threads();
    const int64_t B = 16, T = 128, K = 32, V = 4096;
    DemoSizes sizes = demo_sizes(V, false);
    const std::string dir = "/tmp/distill-bench-train-" + std::to_string(::getpid());
    make_dirs(dir);

    torch::manual_seed(0);
    Llama teacher(sizes.teacher), student(sizes.student);
    teacher->init_weights(1);
    student->init_weights(2);
    save_model_dir(dir + "/teacher", teacher, nullptr);
    save_model_dir(dir + "/student", student, nullptr);

    // inputs, and the teacher's top-K on them, stored in a real cache
    auto ids = torch::randint(V, {B, T + 1}, torch::kInt64);
    auto inp = ids.narrow(1, 0, T), targets = ids.narrow(1, 1, T).reshape({-1});
    torch::Tensor top_lp, top_ids;
    {
        torch::NoGradGuard ng;
        std::tie(top_lp, top_ids) = torch::log_softmax(teacher->forward(inp), -1).topk(K, -1);
    }
    LogitCacheInfo info;
    info.top_k = K;
    info.vocab_size = V;
    info.window = T;
    // window w holds batch row w % B's top-K with its ids rotated by w (so that no two windows
    // are alike, as in a real cache: zstd would otherwise make every chunk nearly free to
    // decompress), and a random window of residue b stands for row b
    const int64_t NW = 7380 / B * B;
    info.num_windows = NW;
    info.teacher_fingerprint = info.tokenizer_fingerprint = info.data_fingerprint = "bench";
    {
        LogitCacheWriter w(dir + "/cache", info);
        auto i32 = top_ids.to(torch::kInt32).contiguous();
        auto f32 = top_lp.contiguous();
        std::vector<int32_t> rotated(size_t(T * K));
        for (int64_t n = 0; n < NW; ++n) {
            const int32_t* ids_of_row = i32[n % B].data_ptr<int32_t>();
            for (size_t i = 0; i < rotated.size(); ++i) rotated[i] = int32_t((ids_of_row[i] + 7919 * n) % V);
            w.append_window(rotated.data(), f32[n % B].data_ptr<float>());
        }
        w.finish();
    }
    LogitCacheReader cache(dir + "/cache"), cold(dir + "/cache", 0);
    // the dense step's teacher as `train --teacher` loads it: packed, from its saved directory
    LoadedModel live_teacher = load_model_dir(dir + "/teacher", /*packed=*/true);
    cache.verify();  // every chunk decompressed once, as after a first pass
    uint64_t draw = 0x9e3779b97f4a7c15ULL;
    auto random_window = [&](int64_t b) {  // a window of row b, anywhere in the cache
        draw = draw * 6364136223846793005ULL + 1442695040888963407ULL;
        return int64_t((draw >> 33) % uint64_t(NW / B)) * B + b;
    };
    save_safetensors(dir + "/inputs.safetensors", {{"ids", ids}, {"top_ids", top_ids}, {"top_lp", top_lp}});

    // the optimizer of each trained model (the student's is shared by the three student steps)
    auto adamw_of = [](Llama& m) {
        std::vector<std::pair<std::string, torch::Tensor>> params;
        for (auto& p : m->named_parameters()) params.emplace_back(p.key(), p.value());
        return std::make_unique<AdamW>(params, AdamWOptions{});
    };
    auto opt_teacher = adamw_of(teacher);
    auto opt_student = adamw_of(student);
    LossOptions lo;  // forward KL, tau 1

    auto step = [&](const std::string& mode) {
        const bool pre = mode == "pretrain";
        Llama& m = pre ? teacher : student;
        AdamW& opt = pre ? *opt_teacher : *opt_student;
        m->train();
        opt.zero_grad();
        auto logits = m->forward_for_loss(inp).reshape({-1, V});
        torch::Tensor loss;
        if (mode == "pretrain" || mode == "ce") {
            loss = loss_cross_entropy(logits, targets);
        } else if (mode == "kd-dense") {
            torch::Tensor t;
            {
                torch::NoGradGuard ng;
                Bf16Forward bf16(train_precision() == Precision::kBFloat16);
                t = live_teacher.model->forward(inp).reshape({-1, V});
            }
            loss = loss_dense(logits, t, targets, lo);
        } else {
            auto i32 = torch::empty({B, T, K}, torch::kInt32);
            auto lp = torch::empty({B, T, K}, torch::kFloat32);
            const LogitCacheReader& from = mode == "kd-cold" ? cold : cache;
            for (int64_t b = 0; b < B; ++b)
                from.read_window(random_window(b), i32[b].data_ptr<int32_t>(), lp[b].data_ptr<float>());
            loss = loss_sparse(logits, i32.reshape({-1, K}).to(torch::kInt64), lp.reshape({-1, K}), targets, lo);
        }
        loss.backward();
        opt.clip_grad_norm(1.0, /*defer=*/true);
        opt.step(1e-4);
    };
    auto ours = [&](const std::string& mode) {
        for (int i = 0; i < warmup; ++i) step(mode);
        const double t0 = now_seconds();
        for (int i = 0; i < steps; ++i) step(mode);
        return double(B * T * steps) / (now_seconds() - t0);
    };
    // kept_heap: the peer under the glibc settings distill's tune_allocator makes (large blocks from
    // the heap, never handed back), so that neither side pays page faults for its activations
    auto theirs = [&](const std::string& mode, bool bf16, bool kept_heap) -> double {
        const std::string model = mode == "pretrain" ? "teacher" : "student";
        const std::string py_mode = mode == "pretrain" ? "ce" : mode == "kd-dense" ? "dense" : mode == "kd-sparse" || mode == "kd-cold" ? "sparse" : "ce";
        const std::string heap = kept_heap ? "MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 " : "";
        const std::string cmd = heap + "OMP_NUM_THREADS=" + std::to_string(threads) + " /usr/bin/python3 " +
                                std::string(DISTILL_SOURCE_DIR) + "/bench/train_step.py " + py_mode + " " +
                                std::to_string(steps) + " " + std::to_string(warmup) + " " + dir + "/" + model + " " +
                                dir + "/teacher " + dir + "/inputs.safetensors" + (bf16 ? " bf16" : "");
        FILE* p = ::popen(cmd.c_str(), "r");
        std::string out;
        char buf[512];
        while (p && std::fgets(buf, sizeof buf, p)) out += buf;
        const int rc = p ? ::pclose(p) : -1;
        if (rc != 0) return -1;
        try {
            return nlohmann::json::parse(out)["tokens_per_second"].get<double>();
        } catch (const std::exception&) {
            return -1;
        }
    };

    std::string why;
    const Precision auto_choice = measure_precision(torch::Device(torch::kCPU), &why);
    std::vector<Precision> precisions;
    if (precision == "fp32" || precision == "both" || precision == "auto") precisions.push_back(Precision::kFloat32);
    if (precision == "bf16" || precision == "both" || (precision == "auto" && auto_choice == Precision::kBFloat16))
        precisions.push_back(Precision::kBFloat16);

    double gemm = gemm_gflops();  // measured again at the end: the larger is the machine's (a VM varies)
    std::printf("Training steps of the demo models: teacher %s params, student %s params\n",
                format_count(double(sizes.teacher.num_params())).c_str(),
                format_count(double(sizes.student.num_params())).c_str());
    std::printf("batch %lldx%lld, V %lld, K %lld, %d threads, BLAS core %s, kernels %s\n", (long long)B, (long long)T,
                (long long)V, (long long)K, threads, blas_core_name(), kernels::isa());
    std::printf("--precision auto here: %s\n", why.c_str());
    std::printf("float32 GEMM (torch::mm 2048): %.0f GFLOP/s; %d steps a run, median of %d runs a side\n\n", gemm,
                steps, rounds);

    double pre_fp32_tok_s = 0, pre_peer[2] = {0, 0}, pre_kept[2] = {0, 0};
    double ce_tok[2] = {0, 0}, sparse_tok[2] = {0, 0}, cold_tok[2] = {0, 0}, dense_tok[2] = {0, 0};
    for (Precision prec : precisions) {
        const bool bf16 = prec == Precision::kBFloat16;
        set_train_precision(prec);
        std::printf("%-10s %-5s %14s %16s %7s %16s %7s%s\n", "step", "prec", "distill tok/s",
                    bf16 ? "PyTorch autocast" : "PyTorch tok/s", "ratio", "same, heap kept", "ratio",
                    bf16 ? "" : "   libtorch ops tok/s");
        for (const auto& mode : modes) {
            std::vector<double> a, b, h, c;
            for (int r = 0; r < rounds; ++r) {
                a.push_back(ours(mode));
                if (!peers) continue;
                b.push_back(theirs(mode, bf16, false));
                h.push_back(theirs(mode, bf16, true));
                if (!bf16) {  // the same step with the fused kernels off
                    set_fused_kernels(false);
                    c.push_back(ours(mode));
                    set_fused_kernels(true);
                }
            }
            const double us = median(a), them = median(b), kept = median(h);
            const std::string plain = bf16 ? "" : str_cat("   ", int64_t(median(c)));
            if (!peers) {
                std::printf("%-10s %-5s %14.0f\n", mode.c_str(), precision_name(prec), us);
            } else {
                std::printf("%-10s %-5s %14.0f %16s %7s %16s %7s%s\n", mode.c_str(), precision_name(prec), us,
                            tok_s(them).c_str(), ratio(us, them).c_str(), tok_s(kept).c_str(), ratio(us, kept).c_str(),
                            plain.c_str());
            }
            if (mode == "pretrain" && !bf16) pre_fp32_tok_s = us;
            if (mode == "pretrain") {
                pre_peer[bf16] = them;
                pre_kept[bf16] = kept;
            }
            if (mode == "ce") ce_tok[bf16] = us;
            if (mode == "kd-sparse") sparse_tok[bf16] = us;
            if (mode == "kd-cold") cold_tok[bf16] = us;
            if (mode == "kd-dense") dense_tok[bf16] = us;
        }
        std::printf("\n");
    }
    if (pre_fp32_tok_s > 0) {
        gemm = std::max(gemm, gemm_gflops());
        // training = 3x the forward's FLOPs (forward, and backward for inputs and weights)
        const double gflops = 3.0 * sizes.teacher.flops_per_token(T) * pre_fp32_tok_s / 1e9;
        std::printf("pretraining (fp32): %.0f GFLOP/s = %.0f%% of this machine's float32 GEMM rate (%.0f GFLOP/s, "
                    "the better of two measurements)\n",
                    gflops, 100.0 * gflops / gemm, gemm);
    }
    // What the products alone allow: a step with nothing but its matrix products, each at
    // torch::mm's own speed, against the PyTorch step measured above.
    for (Precision prec : precisions) {
        const int i = prec == Precision::kBFloat16;
        if (pre_peer[i] <= 0 || pre_kept[i] <= 0) continue;
        const double s = products_seconds(sizes.teacher, B * T, i);
        const double attn = 2.0 * T * sizes.teacher.num_attention_heads * sizes.teacher.head_dim() *
                            sizes.teacher.num_hidden_layers / sizes.teacher.flops_per_token(T);
        const double best = double(B * T) / s;
        std::printf("pretraining (%s): its matrix products alone, each at torch::mm's speed, take %.1f ms a step "
                    "(%.0f tok/s), so no step can pass %.2fx PyTorch's, %.2fx with its heap kept (attention's "
                    "per-head products, %.0f%% of the FLOPs, not counted)\n",
                    precision_name(prec), 1e3 * s, best, best / pre_peer[i], best / pre_kept[i], 100 * attn);
    }
    for (Precision prec : precisions) {
        const int i = prec == Precision::kBFloat16;
        if (ce_tok[i] > 0 && sparse_tok[i] > 0 && cold_tok[i] > 0 && dense_tok[i] > 0)
            std::printf("student KD step / CE step (%s): sparse %.2fx (cold %.2fx), dense %.2fx the time\n",
                        precision_name(prec), ce_tok[i] / sparse_tok[i], ce_tok[i] / cold_tok[i], ce_tok[i] / dense_tok[i]);
    }
    std::printf("\nratio = distill / PyTorch (higher is faster)\n");
    std::system(("rm -rf " + dir).c_str());
    return 0;
}
