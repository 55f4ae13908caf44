// The machine's fp32 GEMM ceiling through libtorch (the denominator of the training MFU figure),
// and the bf16 rate for comparison. Prints the BLAS core in use.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "util/platform.h"
#include "util/progress.h"

using namespace distill;

// The best of 5 timed rounds of `reps` products: on a shared machine the best round is the
// closest to what the hardware can do (the median is printed beside it).
static std::pair<double, double> gflops(int64_t n, torch::Dtype dt, int reps) {
    auto a = torch::randn({n, n}).to(dt), b = torch::randn({n, n}).to(dt);
    torch::mm(a, b);  // warm-up
    std::vector<double> rates;
    for (int round = 0; round < 5; ++round) {
        const double t0 = now_seconds();
        for (int i = 0; i < reps; ++i) torch::mm(a, b);
        rates.push_back(2.0 * n * n * n * reps / (now_seconds() - t0) / 1e9);
    }
    std::sort(rates.begin(), rates.end());
    return {rates.back(), rates[2]};
}

int main(int argc, char** argv) {
    ensure_fast_blas(argc, argv);
    tune_allocator();
    set_threads(0);
    std::printf("BLAS core: %s, threads: %d\n", blas_core_name(), torch::get_num_threads());
    std::printf("%-14s %10s %10s   (GFLOP/s)\n", "", "best", "median");
    for (int64_t n : {256, 512, 1024, 2048}) {
        auto [best, median] = gflops(n, torch::kFloat32, n >= 1024 ? 3 : 30);
        std::printf("fp32 mm %-6lld %10.1f %10.1f\n", (long long)n, best, median);
    }
    auto [best, median] = gflops(2048, torch::kBFloat16, 2);
    std::printf("bf16 mm %-6d %10.1f %10.1f\n", 2048, best, median);
    return 0;
}
