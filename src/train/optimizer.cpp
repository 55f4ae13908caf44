#include "train/optimizer.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

#include "kernels/cpu-kernels.h"
#include "model/fused.h"
#include "util/error.h"

namespace distill {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions opts)
    : params_(std::move(params)), opts_(opts) {
    for (auto& [name, p] : params_) {
        m_.push_back(torch::zeros_like(p));
        v_.push_back(torch::zeros_like(p));
    }
}

void AdamW::zero_grad() {
    grad_scale_ = 1;
    for (auto& [name, p] : params_)
        if (p.grad().defined()) p.mutable_grad().zero_();
}

namespace {

// A float32 CPU tensor the kernels can walk as one flat array.
bool flat_cpu(const torch::Tensor& t) { return fused_cpu(t) && t.is_contiguous(); }

}  // namespace

void AdamW::step(double lr) {
    torch::NoGradGuard ng;
    ++t_;
    const double bc1 = 1.0 - std::pow(opts_.beta1, double(t_));
    const double bc2 = 1.0 - std::pow(opts_.beta2, double(t_));
    const float gscale = float(grad_scale_);
    grad_scale_ = 1;
    for (size_t i = 0; i < params_.size(); ++i) {
        auto& p = params_[i].second;
        if (!p.grad().defined()) continue;
        const auto& g = p.grad();
        const bool decay = opts_.weight_decay > 0 && p.dim() >= 2;
        if (flat_cpu(p) && flat_cpu(g) && flat_cpu(m_[i]) && flat_cpu(v_[i])) {
            float* pp = p.data_ptr<float>();
            const float* gp = g.data_ptr<float>();
            float* mp = m_[i].data_ptr<float>();
            float* vp = v_[i].data_ptr<float>();
            const float f = decay ? float(1.0 - lr * opts_.weight_decay) : 1.0f;
            at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t b, int64_t e) {
                kernels::adamw(pp + b, gp + b, mp + b, vp + b, e - b, f, float(opts_.beta1), float(opts_.beta2),
                               float(bc2), float(opts_.eps), float(lr / bc1), gscale);
            });
            continue;
        }
        const auto gs = gscale == 1 ? g : g * gscale;
        if (decay) p.mul_(1.0 - lr * opts_.weight_decay);
        m_[i].mul_(opts_.beta1).add_(gs, 1.0 - opts_.beta1);
        v_[i].mul_(opts_.beta2).addcmul_(gs, gs, 1.0 - opts_.beta2);
        auto denom = (v_[i] / bc2).sqrt_().add_(opts_.eps);
        p.addcdiv_(m_[i], denom, -lr / bc1);
    }
}

double AdamW::clip_grad_norm(double max_norm, bool defer) {
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> grads;
    bool all_flat = true;
    for (auto& [name, p] : params_)
        if (p.grad().defined()) {
            grads.push_back(p.grad());
            all_flat = all_flat && flat_cpu(p.grad());
        }
    if (grads.empty()) return 0;
    if (!all_flat) {
        std::vector<torch::Tensor> params;
        for (auto& [name, p] : params_) params.push_back(p);
        return torch::nn::utils::clip_grad_norm_(params, max_norm);
    }
    double total = 0;
    for (auto& g : grads) {
        const float* gp = g.data_ptr<float>();
        total += at::parallel_reduce(
            0, g.numel(), 1 << 15, 0.0,
            [&](int64_t b, int64_t e, double acc) { return acc + kernels::sum_squares(gp + b, e - b); },
            std::plus<double>());
    }
    const double norm = std::sqrt(total);
    const double coef = max_norm / (norm + 1e-6);  // torch's clip_grad_norm_
    if (defer) {
        grad_scale_ = std::min(coef, 1.0);
        return norm;
    }
    if (coef < 1)
        for (auto& g : grads) {
            float* gp = g.data_ptr<float>();
            at::parallel_for(0, g.numel(), 1 << 15,
                             [&](int64_t b, int64_t e) { kernels::scale_inplace(gp + b, e - b, float(coef)); });
        }
    return norm;
}

std::map<std::string, torch::Tensor> AdamW::state() const {
    std::map<std::string, torch::Tensor> s;
    for (size_t i = 0; i < params_.size(); ++i) {
        s["m." + params_[i].first] = m_[i];
        s["v." + params_[i].first] = v_[i];
    }
    s["t"] = torch::tensor({t_}, torch::kInt64);
    return s;
}

void AdamW::load_state(const std::map<std::string, torch::Tensor>& s) {
    torch::NoGradGuard ng;
    for (size_t i = 0; i < params_.size(); ++i) {
        for (auto* pair : {&m_, &v_}) {
            const std::string key = (pair == &m_ ? "m." : "v.") + params_[i].first;
            auto it = s.find(key);
            DISTILL_CHECK(it != s.end(), "optimizer state has no '", key,
                          "' (checkpoint from another model? delete it to restart)");
            DISTILL_CHECK(it->second.sizes() == params_[i].second.sizes(), "optimizer state '", key,
                          "' has shape ", it->second.sizes(), ", expected ",
                          params_[i].second.sizes());
            (*pair)[i].copy_(it->second);
        }
    }
    auto it = s.find("t");
    DISTILL_CHECK(it != s.end() && it->second.numel() == 1, "optimizer state has no step count");
    t_ = it->second.item<int64_t>();
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio) {
    if (warmup > 0 && step < warmup) return lr * double(step + 1) / double(warmup);
    if (total <= warmup) return lr;
    const double progress = std::min(1.0, double(step - warmup) / double(total - warmup));
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
    return lr * (min_ratio + (1.0 - min_ratio) * cosine);
}

}  // namespace distill
