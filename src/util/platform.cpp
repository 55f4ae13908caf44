#include "util/platform.h"

#include <dlfcn.h>
#include <malloc.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>
#include <thread>

namespace distill {

const char* blas_core_name() {
    using Fn = char* (*)();
    static Fn fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
    if (!fn) return "";
    const char* name = fn();
    return name ? name : "";
}

void ensure_fast_blas(int argc, char** argv) {
    (void)argc;
    if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("DISTILL_NO_BLAS_FIX")) return;
    std::string core = blas_core_name();
    std::transform(core.begin(), core.end(), core.begin(), ::tolower);
    if (core.empty()) return;
    const bool generic = core == "prescott" || core == "core2" || core == "penryn" ||
                         core == "nehalem" || core == "dunnington" || core == "katmai" ||
                         core == "coppermine" || core == "northwood" || core == "banias";
    if (!generic) return;
    __builtin_cpu_init();
    const char* target = nullptr;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        target = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        target = "Haswell";
    if (!target) return;
    ::setenv("OPENBLAS_CORETYPE", target, 1);
    ::execv("/proc/self/exe", argv);
    // exec failed: carry on with the slow kernel rather than fail
}

void tune_allocator() {
    // libtorch on CPU allocates and frees its large activations every step. glibc serves
    // blocks above 128 KiB-32 MiB with mmap and returns them to the kernel on free, so every
    // step pays for fresh zeroed pages (page faults showed up at ~5% of a training step). Keeping
    // freed memory in the heap for reuse removes that cost.
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

void set_threads(int n) {
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    torch::set_num_threads(n);
}

}  // namespace distill
