// Tokens per second of one knowledge-distillation training step of the demo student, distill vs
// a PyTorch-in-Python script doing the same (bench/kd_step.py: same model, batch, threads, BLAS):
//   (a) dense: a live teacher forward (no grad) + forward KL over the full vocabulary, as TRL /
//       torchtune do;
//   (b) sparse: the teacher's top-K from a cache + (K+1)-bucket forward KL. distill reads the
//       windows from a real logit cache on disk; the Python peer gets the tensors in memory.
// Both sides: forward, backward, gradient clipping and an AdamW step.
//
//   bench-kd-step [--steps N] [--warmup N] [--threads N]
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "demo/demo.h"
#include "distill/losses.h"
#include "io/logit-cache.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "train/optimizer.h"
#include "util/file.h"
#include "util/platform.h"
#include "util/progress.h"

using namespace distill;

int main(int argc, char** argv) {
    ensure_fast_blas(argc, argv);
    int steps = 20, warmup = 3, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    }
    tune_allocator();
    set_threads(threads);
    threads = torch::get_num_threads();
    const int64_t B = 16, T = 128, K = 32, V = 4096;
    DemoSizes sizes = demo_sizes(V, false);
    const std::string dir = "/tmp/distill-bench-kd-" + std::to_string(::getpid());
    make_dirs(dir);

    torch::manual_seed(0);
    Llama teacher(sizes.teacher), student(sizes.student);
    teacher->init_weights(1);
    student->init_weights(2);
    teacher->eval();
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
    info.num_windows = B;
    info.teacher_fingerprint = info.tokenizer_fingerprint = info.data_fingerprint = "bench";
    {
        LogitCacheWriter w(dir + "/cache", info);
        auto i32 = top_ids.to(torch::kInt32).contiguous();
        auto f32 = top_lp.contiguous();
        for (int64_t b = 0; b < B; ++b) w.append_window(i32[b].data_ptr<int32_t>(), f32[b].data_ptr<float>());
        w.finish();
    }
    LogitCacheReader cache(dir + "/cache");
    save_safetensors(dir + "/inputs.safetensors", {{"ids", ids}, {"top_ids", top_ids}, {"top_lp", top_lp}});

    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (auto& p : student->named_parameters()) params.emplace_back(p.key(), p.value());
    AdamW opt(params, {});
    LossOptions lo;  // forward KL, tau 1
    student->train();

    auto step = [&](bool dense) {
        opt.zero_grad();
        auto logits = student->forward(inp).reshape({-1, V});
        torch::Tensor loss;
        if (dense) {
            torch::Tensor t;
            {
                torch::NoGradGuard ng;
                t = teacher->forward(inp).reshape({-1, V});
            }
            loss = loss_dense(logits, t, targets, lo);
        } else {
            auto i32 = torch::empty({B, T, K}, torch::kInt32);
            auto lp = torch::empty({B, T, K}, torch::kFloat32);
            for (int64_t b = 0; b < B; ++b)
                cache.read_window(b, i32[b].data_ptr<int32_t>(), lp[b].data_ptr<float>());
            loss = loss_sparse(logits, i32.reshape({-1, K}).to(torch::kInt64), lp.reshape({-1, K}),
                               targets, lo);
        }
        loss.backward();
        torch::nn::utils::clip_grad_norm_(student->parameters(), 1.0);
        opt.step(1e-4);
    };
    auto time_steps = [&](bool dense) {
        for (int i = 0; i < warmup; ++i) step(dense);
        const double t0 = now_seconds();
        for (int i = 0; i < steps; ++i) step(dense);
        return double(B * T * steps) / (now_seconds() - t0);
    };

    std::printf("KD step of the demo student (%s params) from the demo teacher (%s params)\n",
                format_count(double(sizes.student.num_params())).c_str(),
                format_count(double(sizes.teacher.num_params())).c_str());
    std::printf("batch %lldx%lld, V %lld, K %lld, %d threads, BLAS core %s, %d timed steps\n\n",
                (long long)B, (long long)T, (long long)V, (long long)K, threads, blas_core_name(), steps);
    std::printf("%-28s %14s %14s %8s\n", "mode", "distill tok/s", "PyTorch tok/s", "ratio");
    for (bool dense : {true, false}) {
        const double ours = time_steps(dense);
        const std::string cmd = "OMP_NUM_THREADS=" + std::to_string(threads) + " /usr/bin/python3 " +
                                std::string(DISTILL_SOURCE_DIR) + "/bench/kd_step.py " +
                                (dense ? "dense " : "sparse ") + std::to_string(steps) + " " +
                                std::to_string(warmup) + " " + dir + "/student " + dir + "/teacher " +
                                dir + "/inputs.safetensors";
        FILE* p = ::popen(cmd.c_str(), "r");
        std::string out;
        char buf[512];
        while (p && std::fgets(buf, sizeof buf, p)) out += buf;
        const int rc = p ? ::pclose(p) : -1;
        double theirs = 0;
        if (rc == 0) {
            try {
                theirs = nlohmann::json::parse(out)["tokens_per_second"].get<double>();
            } catch (const std::exception&) {
            }
        }
        const char* name = dense ? "(a) dense, live teacher" : "(b) sparse, cached top-32";
        if (theirs > 0)
            std::printf("%-28s %14.0f %14.0f %7.2fx\n", name, ours, theirs, ours / theirs);
        else
            std::printf("%-28s %14.0f %14s %8s  (python peer failed: %s)\n", name, ours, "-", "-", out.c_str());
    }
    std::printf("\nratio = distill / PyTorch (higher is faster)\n");
    std::system(("rm -rf " + dir).c_str());
    return 0;
}
