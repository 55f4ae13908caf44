// distill — AdamW (Loshchilov & Hutter 2019, as torch.optim.AdamW) with state that saves to
// safetensors, and the warm-up + cosine learning-rate schedule.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace distill {

struct AdamWOptions {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;  // not applied to norms and biases (1-D parameters)
};

class AdamW {
public:
    AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions opts);
    // One update with learning rate `lr` using the parameters' .grad(). Float32 CPU parameters
    // go through one fused, vectorized pass each (kernels::adamw); others through tensor ops.
    void step(double lr);
    // Scales the gradients so that their global L2 norm is at most max_norm (as
    // torch::nn::utils::clip_grad_norm_); returns the norm before scaling. With defer (float32 CPU
    // gradients) they are left as they are and the next step() multiplies each by the factor as
    // it reads it: the same float products, so the same update bit for bit, and one pass over the
    // gradients fewer. Nothing may read the gradients in between; zero_grad() drops the factor.
    double clip_grad_norm(double max_norm, bool defer = false);
    void zero_grad();
    int64_t steps() const { return t_; }
    // "m.<name>", "v.<name>" and "t" for checkpoints.
    std::map<std::string, torch::Tensor> state() const;
    void load_state(const std::map<std::string, torch::Tensor>& state);

private:
    std::vector<std::pair<std::string, torch::Tensor>> params_;
    std::vector<torch::Tensor> m_, v_;
    AdamWOptions opts_;
    int64_t t_ = 0;
    double grad_scale_ = 1;  // a deferred clip_grad_norm's factor, for the next step()
};

// Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to lr * min_ratio at
// `total` steps.
double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio);

}  // namespace distill
