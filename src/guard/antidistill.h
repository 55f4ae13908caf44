// distill — antidistillation sampling (Savani et al. 2025, "Antidistillation Sampling"; code
// locuslab/antidistillation-sampling): the served model samples from its logits plus λ·Δ, where
//   Δ(v) = [log p_{θ+εg}(v) − log p_{θ−εg}(v)] / 2ε
// is a finite difference of a proxy student's log-probs along g, the gradient of the proxy's
// cross-entropy on the owner's text. Δ(v) ≈ ⟨g, ∇θ log p_θ(v)⟩: a student that takes a gradient
// step on v raises its loss on that text by (step size)·Δ(v), so tokens with Δ > 0 are the ones
// that teach a distiller the wrong thing, and sampling leans towards them. docs/guard.md has the
// recipe and what it costs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace distill {

struct AntidistillOptions {
    std::string proxy;           // the proxy student: HF directory or GGUF, the served tokenizer
    std::string data;            // UTF-8 text whose cross-entropy gives g
    double lambda = 1.0;         // weight of Δ in the logits
    double eps = 1e-2;           // the finite difference's step along g (the paper's default)
    int64_t data_tokens = 65536; // at most this many tokens of `data`
    int64_t window = 256;        // tokens per window of `data` (at most the proxy's context)
};

// The two perturbed proxies and what went into them. The recipe, fixed so that it can be
// reproduced: the first n = min(data_tokens, all) ids of the served tokenizer's encoding of
// `data`; W = (n − 1) / L whole windows of L = min(window, proxy context) positions, window w
// predicting ids[wL + 1 .. wL + L] from ids[wL .. wL + L − 1]; g = ∇θ of the mean cross-entropy
// over all W·L positions (float32, summed over windows in order); θ± = θ ± ε·g.
struct Antidistill {
    Llama plus{nullptr}, minus{nullptr};
    double lambda = 1, eps = 1e-2;
    int64_t windows = 0, window = 0;  // W and L
    double data_loss = 0;             // the proxy's mean cross-entropy on the windows (nats)
    double grad_norm = 0;             // ||g||

    // λ·Δ for rows of logits from `plus` and `minus` (..., V), as float64 on the host.
    torch::Tensor term(const torch::Tensor& plus_logits, const torch::Tensor& minus_logits) const;
};

// Loads the proxy (twice), takes g on the data and builds θ±. Error (saying what to do) when the
// proxy does not share the served model's tokenizer or vocabulary, its context is shorter than
// `context`, the data is missing or too short for one window, or λ / ε are out of range.
// `tok` and `vocab` are the served model's; `device` where the proxies run.
std::shared_ptr<Antidistill> make_antidistill(const AntidistillOptions& o, const Tokenizer& tok, int64_t vocab,
                                              int64_t context, const torch::Device& device);

}  // namespace distill
