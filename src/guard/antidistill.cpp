#include "guard/antidistill.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "model/checkpoint.h"
#include "pipeline/pipeline.h"
#include "util/error.h"
#include "util/file.h"

namespace distill {

torch::Tensor Antidistill::term(const torch::Tensor& plus_logits, const torch::Tensor& minus_logits) const {
    auto lp = [](const torch::Tensor& x) { return torch::log_softmax(x.to(torch::kCPU, torch::kFloat64), -1); };
    return ((lp(plus_logits) - lp(minus_logits)) * (lambda / (2 * eps))).contiguous();
}

namespace {

LoadedModel load_proxy(const AntidistillOptions& o, const Tokenizer& tok, int64_t vocab, int64_t context,
                       const torch::Device& device) {
    LoadedModel m = load_model(o.proxy);
    DISTILL_CHECK(m.config.vocab_size == vocab, "the antidistillation proxy ", o.proxy, " has a vocabulary of ",
                  m.config.vocab_size, " tokens and the served model ", vocab,
                  ": the proxy must be a student of the served model's tokenizer");
    DISTILL_CHECK(!m.has_tokenizer || m.tokenizer.fingerprint() == tok.fingerprint(), "the antidistillation proxy ",
                  o.proxy, " has another tokenizer than the served model: train the proxy on the served model's");
    DISTILL_CHECK(m.config.max_position_embeddings >= context, "the antidistillation proxy ", o.proxy,
                  " reads ", m.config.max_position_embeddings, " positions and the served model ", context,
                  ": it must read at least as many");
    m.model->to(device);
    return m;
}

}  // namespace

std::shared_ptr<Antidistill> make_antidistill(const AntidistillOptions& o, const Tokenizer& tok, int64_t vocab,
                                              int64_t context, const torch::Device& device) {
    DISTILL_CHECK(std::isfinite(o.lambda) && o.lambda >= 0, "--antidistill-lambda must be >= 0, not ", o.lambda);
    DISTILL_CHECK(std::isfinite(o.eps) && o.eps > 0, "--antidistill-eps must be > 0, not ", o.eps);
    DISTILL_CHECK(o.window >= 1, "the antidistillation window must be >= 1 token, not ", o.window);
    DISTILL_CHECK(!o.data.empty() && std::filesystem::is_regular_file(o.data),
                  "antidistillation needs --antidistill-data: a UTF-8 text file (the owner's text whose loss "
                  "the proxy's gradient is taken on); '", o.data, "' is not one");
    auto ad = std::make_shared<Antidistill>();
    ad->lambda = o.lambda;
    ad->eps = o.eps;

    LoadedModel p = load_proxy(o, tok, vocab, context, device);
    const int64_t L = std::min(o.window, p.config.max_position_embeddings);
    std::vector<int32_t> ids = tok.encode(read_file(o.data));
    if (static_cast<int64_t>(ids.size()) > o.data_tokens) ids.resize(static_cast<size_t>(o.data_tokens));
    const int64_t n = static_cast<int64_t>(ids.size());
    const int64_t W = n > 0 ? (n - 1) / L : 0;
    DISTILL_CHECK(W >= 1, "the antidistillation data ", o.data, " holds ", n, " tokens (--antidistill-tokens ",
                  o.data_tokens, "); one window needs ", L + 1, ": give more text");
    ad->windows = W;
    ad->window = L;

    // g: the gradient of the mean cross-entropy over all W·L positions, a few windows at a time
    Llama& model = p.model;
    model->zero_grad();
    torch::Tensor all = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64);
    const int64_t per_batch = std::max<int64_t>(1, 4096 / L);
    double loss_sum = 0;
    for (int64_t w0 = 0; w0 < W; w0 += per_batch) {
        const int64_t b = std::min(per_batch, W - w0);
        torch::Tensor x = all.narrow(0, w0 * L, b * L).view({b, L}).to(device);
        torch::Tensor y = all.narrow(0, w0 * L + 1, b * L).view({b, L}).to(device);
        torch::Tensor logits = model->forward(x);
        torch::Tensor loss = torch::nn::functional::cross_entropy(
            logits.reshape({-1, logits.size(-1)}), y.reshape({-1}),
            torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
        loss_sum += loss.item<double>();
        (loss / static_cast<double>(W * L)).backward();
    }
    ad->data_loss = loss_sum / static_cast<double>(W * L);

    LoadedModel q = load_proxy(o, tok, vocab, context, device);
    {
        torch::NoGradGuard ng;
        auto qp = q.model->named_parameters();
        double sq = 0;
        for (auto& item : model->named_parameters()) {
            torch::Tensor g = item.value().grad();
            DISTILL_ASSERT(g.defined(), "no gradient for ", item.key());
            sq += g.to(torch::kFloat64).pow(2).sum().item<double>();
            item.value().add_(g, o.eps);
            qp[item.key()].sub_(g, o.eps);
        }
        ad->grad_norm = std::sqrt(sq);
    }
    model->zero_grad();
    model->eval();
    q.model->eval();
    ad->plus = model;
    ad->minus = q.model;
    return ad;
}

}  // namespace distill
