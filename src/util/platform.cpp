#include "util/platform.h"

#include "util/allocator.h"

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
    // libtorch on CPU allocates and frees its large activations every step; through glibc they come
    // back as fresh pages, each a page fault (about 5-10% of a training step here). Large blocks go
    // through a caching allocator instead (util/allocator.h); the glibc settings keep the heap of
    // the smaller ones from being handed back and faulted in again.
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    const char* off = std::getenv("DISTILL_CACHING_ALLOCATOR");
    if (!(off && std::string(off) == "0")) install_caching_allocator();
}

void set_threads(int n) {
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    torch::set_num_threads(n);
}

}  // namespace distill
