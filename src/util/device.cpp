#include "util/device.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>

#include "util/error.h"

namespace distill {

namespace {
torch::Device g_device(torch::kCPU);
std::mutex g_precision_mu;
std::string g_precision_spec = "fp32";
bool g_precision_resolved = false;
Precision g_precision = Precision::kFloat32;
std::string g_precision_reason;
}

torch::Device resolve_device(const std::string& spec) {
    if (spec == "cpu") return torch::Device(torch::kCPU);
    if (spec == "auto")
        return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    int64_t index = 0;
    if (spec == "cuda") {
        index = 0;
    } else if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 &&
               spec.find_first_not_of("0123456789", 5) == std::string::npos && spec.size() <= 8) {
        index = std::stoll(spec.substr(5));
    } else {
        throw Error(str_cat("--device '", spec, "' is not one of cpu, cuda, cuda:N, auto"));
    }
    DISTILL_CHECK(torch::cuda::is_available(), "--device ", spec,
                  ": no CUDA device is available (this libtorch ",
                  "has no CUDA support, or no GPU is visible); use --device cpu");
    const int64_t n = int64_t(torch::cuda::device_count());
    DISTILL_CHECK(index < n, "--device ", spec, ": only ", n, " CUDA device(s) visible (cuda:0 .. cuda:",
                  n - 1, ")");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

torch::Device compute_device() { return g_device; }
void set_compute_device(torch::Device d) { g_device = d; }

std::string device_name(torch::Device d) { return d.str(); }

bool cpu_has_bf16() {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool amx_bf16 = (d >> 22) & 1;
    __cpuid_count(7, 1, a, b, c, d);
    const bool avx512_bf16 = (a >> 5) & 1;
    return amx_bf16 || avx512_bf16;
#else
    return false;
#endif
}

Precision measure_precision(torch::Device dev, std::string* why) {
    if (dev.is_cpu() && !cpu_has_bf16()) {
        if (why) *why = "fp32 (this CPU has no bf16 matrix instructions)";
        return Precision::kFloat32;
    }
    // Products of a training step's size: x (1024 x 512) W^T with W (1024 x 512), bf16 timed with
    // the conversions of both operands and of the result, as a training step pays them.
    torch::NoGradGuard ng;
    auto opt = torch::TensorOptions().device(dev);
    auto x = torch::randn({1024, 512}, opt), w = torch::randn({1024, 512}, opt);
    auto sync = [&] {
        if (dev.is_cuda()) torch::cuda::synchronize();
    };
    auto best_of = [&](auto&& f) {
        double best = 1e9;
        for (int i = 0; i < 4; ++i) {
            sync();
            const auto t0 = std::chrono::steady_clock::now();
            f();
            sync();
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return best;
    };
    double f32 = 0, bf16 = 0;
    try {
        f32 = best_of([&] { torch::mm(x, w.t()); });
        bf16 = best_of([&] { torch::mm(x.to(torch::kBFloat16), w.to(torch::kBFloat16).t()).to(torch::kFloat32); });
    } catch (const std::exception&) {
        if (why) *why = "fp32 (bf16 products are not available here)";
        return Precision::kFloat32;
    }
    const double speedup = f32 / std::max(bf16, 1e-12);
    const Precision p = speedup >= 1.25 ? Precision::kBFloat16 : Precision::kFloat32;
    if (why) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s (bf16 products measured at %.2fx float32's speed on %s)", precision_name(p),
                      speedup, dev.str().c_str());
        *why = buf;
    }
    return p;
}

Precision resolve_precision(const std::string& spec, torch::Device d, std::string* why) {
    if (spec == "fp32" || spec == "bf16") {
        if (why) *why = spec + " (--precision)";
        return spec == "fp32" ? Precision::kFloat32 : Precision::kBFloat16;
    }
    DISTILL_CHECK(spec == "auto", "--precision '", spec, "' is not one of auto, fp32, bf16");
    return measure_precision(d, why);
}

Precision train_precision() {
    std::lock_guard<std::mutex> lock(g_precision_mu);
    if (!g_precision_resolved) {
        g_precision = resolve_precision(g_precision_spec, g_device, &g_precision_reason);
        g_precision_resolved = true;
    }
    return g_precision;
}

std::string train_precision_reason() {
    train_precision();
    std::lock_guard<std::mutex> lock(g_precision_mu);
    return g_precision_reason;
}

void set_precision_spec(const std::string& spec) {
    DISTILL_CHECK(spec == "auto" || spec == "fp32" || spec == "bf16", "--precision '", spec,
                  "' is not one of auto, fp32, bf16");
    std::lock_guard<std::mutex> lock(g_precision_mu);
    g_precision_spec = spec;
    g_precision_resolved = false;
}

void set_train_precision(Precision p) {
    std::lock_guard<std::mutex> lock(g_precision_mu);
    g_precision = p;
    g_precision_reason = std::string(precision_name(p)) + " (set)";
    g_precision_resolved = true;
}
const char* precision_name(Precision p) { return p == Precision::kBFloat16 ? "bf16" : "fp32"; }

namespace {
thread_local bool t_bf16_forward = false;
}  // namespace

Bf16Forward::Bf16Forward(bool on) : prev_(t_bf16_forward) { t_bf16_forward = on; }
Bf16Forward::~Bf16Forward() { t_bf16_forward = prev_; }
bool Bf16Forward::active() { return t_bf16_forward; }

}  // namespace distill
