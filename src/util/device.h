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

// The precision of the matrix products in training (--precision): float32, or bfloat16 inputs
// with float32 accumulation, float32 master weights, optimizer state, norms, attention and losses
// (mixed precision, as autocast does). Inference runs float32 (a live teacher in training aside:
// Bf16Forward below).
enum class Precision { kFloat32, kBFloat16 };

// What "auto" chooses on device d: bf16 on a GPU or a CPU with bf16 matrix instructions
// (AVX512-BF16 or AMX) when a short measurement finds bf16 products at least 1.25x as fast as
// float32 (including the conversions); float32 otherwise. *why (optional) gets the figures.
Precision measure_precision(torch::Device d, std::string* why = nullptr);
// Parses --precision: "fp32", "bf16" or "auto" (measured on d).
Precision resolve_precision(const std::string& spec, torch::Device d, std::string* why = nullptr);
// The precision of this process's training: --precision as the CLI passed it (set_precision_spec;
// "fp32" unless set), resolved on first use on compute_device(), measured once for "auto".
Precision train_precision();
// How it was chosen, for logs ("bf16 (bf16 products measured at 1.83x float32's speed on cpu)").
std::string train_precision_reason();
void set_precision_spec(const std::string& spec);
void set_train_precision(Precision p);
const char* precision_name(Precision p);  // "fp32", "bf16"
// Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16).
bool cpu_has_bf16();

// A live teacher's forward in --precision bf16 training: while the innermost of these alive on
// this thread has on = true, its products with frozen weights (model/packed.h, and a Llama's float32 weights
// outside autograd) take bf16 copies of their operands, accumulate in float32 and round the
// product to bf16, as PyTorch's autocast runs a teacher under torch.no_grad(). Everything else
// (eval, capture, serve) stays float32.
class Bf16Forward {
public:
    explicit Bf16Forward(bool on);
    ~Bf16Forward();
    Bf16Forward(const Bf16Forward&) = delete;
    Bf16Forward& operator=(const Bf16Forward&) = delete;
    static bool active();

private:
    bool prev_;
};

}  // namespace distill
