#include "util/device.h"

#include <torch/cuda.h>

#include "util/error.h"

namespace distill {

namespace {
torch::Device g_device(torch::kCPU);
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

}  // namespace distill
