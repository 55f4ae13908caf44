// distill score — one JSON line per position: the target id, its log-prob, and the top log-probs.
#include <iostream>

#include "cli.h"
#include "eval/eval.h"
#include "model/checkpoint.h"
#include "pipeline/pipeline.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::string model, text;
    int64_t top_logprobs = 5;
    WindowOptions window;
};

int run(const Options& o) {
    DISTILL_USAGE(o.window.stride <= o.window.context, "--stride ", o.window.stride, " must not exceed --seq-len ",
                  o.window.context);
    LoadedModel m = load_model_for_inference(o.model);
    DISTILL_CHECK(m.has_tokenizer, o.model, " has no tokenizer");
    const int64_t K = o.top_logprobs;
    DISTILL_CHECK(K <= m.config.vocab_size, "--top-logprobs ", K, " exceeds the vocabulary (", m.config.vocab_size,
                  ")");
    auto ids = encode_for_eval(m.tokenizer, read_file(o.text));
    for_each_window_top(m.model, ids, o.window, K,
                        [&](int64_t first, const torch::Tensor& lp_dev, const torch::Tensor& top_v_dev,
                            const torch::Tensor& top_i_dev, const torch::Tensor& tg) {
        // one copy to the host per window, then plain reads
        auto lp = lp_dev.to(torch::kCPU, torch::kFloat64).contiguous();
        auto top_v = top_v_dev.to(torch::kCPU, torch::kFloat64).contiguous();
        auto top_i = top_i_dev.to(torch::kCPU, torch::kInt64).contiguous();
        auto targets = tg.to(torch::kCPU, torch::kInt64).contiguous();
        auto lpa = lp.accessor<double, 1>();
        auto va = top_v.accessor<double, 2>();
        auto ia = top_i.accessor<int64_t, 2>();
        auto ta = targets.accessor<int64_t, 1>();
        for (int64_t r = 0; r < lp.size(0); ++r) {
            nlohmann::json line = {{"pos", first + r}, {"id", ta[r]}, {"logprob", lpa[r]}};
            nlohmann::json top = nlohmann::json::array();
            for (int64_t k = 0; k < K; ++k) top.push_back({ia[r][k], va[r][k]});
            line["top"] = top;
            std::cout << line.dump() << "\n";
        }
    });
    return 0;
}
}  // namespace

Command add_score(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("score", "per-position log-probs and the top log-probs, as JSON lines");
    add_model(c, o->model)->required();
    add_text(c, o->text)->required();
    c->add_option("--top-logprobs", o->top_logprobs, "[id, logprob] pairs printed per position")
        ->check(in_range(0, 1 << 20))->capture_default_str();
    add_window_flags(c, o->window);
    return {c, [o] { return run(*o); }};
}

}  // namespace distill::cli
