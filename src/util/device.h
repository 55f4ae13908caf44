// distill — which device the math runs on: --device cpu | cuda | cuda:N | auto.
#pragma once

#include <torch/types.h>

#include <string>

namespace distill {

// Parses a --device value. "auto" is the first CUDA device when this libtorch has CUDA and a GPU
// is visible, else the CPU. A CUDA device that is not there is an Error saying so.
torch::Device resolve_device(const std::string& spec);

// The device chosen for this process (set once by the CLI; the CPU unless set).
torch::Device compute_device();
void set_compute_device(torch::Device d);

// A short name for logs and reports: "cpu", "cuda:0 (NVIDIA H200)".
std::string device_name(torch::Device d);

}  // namespace distill
