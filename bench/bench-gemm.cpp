// The machine's fp32 GEMM ceiling through libtorch (the denominator of the training MFU figure),
// and the bf16 rate for comparison. Prints the BLAS core in use.
#include <torch/torch.h>

#include <cstdio>

#include "util/platform.h"
#include "util/progress.h"

using namespace distill;

static double gflops(int64_t n, torch::Dtype dt, int reps) {
    auto a = torch::randn({n, n}).to(dt), b = torch::randn({n, n}).to(dt);
    torch::mm(a, b);  // warm-up
    const double t0 = now_seconds();
    for (int i = 0; i < reps; ++i) torch::mm(a, b);
    const double dt_s = now_seconds() - t0;
    return 2.0 * n * n * n * reps / dt_s / 1e9;
}

int main(int argc, char** argv) {
    ensure_fast_blas(argc, argv);
    tune_allocator();
    set_threads(0);
    std::printf("BLAS core: %s, threads: %d\n", blas_core_name(), torch::get_num_threads());
    for (int64_t n : {256, 512, 1024, 2048})
        std::printf("fp32 mm %4lld: %7.1f GFLOP/s\n", (long long)n, gflops(n, torch::kFloat32, n >= 1024 ? 5 : 50));
    std::printf("bf16 mm 2048: %7.1f GFLOP/s\n", gflops(2048, torch::kBFloat16, 5));
    return 0;
}
