// distill generate — sample from a model, printing as it goes; stops on the model's EOS ids.
// With --watermark-key-file the sampled tokens carry the watermark of docs/guard.md.
#include <iostream>

#include "cli.h"
#include "eval/eval.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "pipeline/pipeline.h"

namespace distill::cli {

namespace {
struct Options {
    std::string model, prompt;
    SamplingOptions sampling;
    WatermarkFlags watermark;
};

int run(Options& o) {
    o.sampling.watermark = o.watermark.resolve();
    LoadedModel m = load_model_for_inference(o.model);
    DISTILL_CHECK(m.has_tokenizer, o.model, " has no tokenizer");
    std::vector<int64_t> prompt = encode_for_eval(m.tokenizer, o.prompt);
    // the model's own EOS ids (config.json / generation_config.json / GGUF), else the tokenizer's
    o.sampling.stop_ids = m.config.stop_ids();
    o.sampling.vocab_limit = m.tokenizer.vocab_size();
    if (o.sampling.stop_ids.empty() && m.tokenizer.eos_id() >= 0) o.sampling.stop_ids = {m.tokenizer.eos_id()};
    std::cout << o.prompt << std::flush;
    // print as we go; decode the whole tail each time so multi-byte characters come out whole
    std::vector<int32_t> out;
    std::string printed;
    generate(m.model, prompt, o.sampling, [&](int64_t id) {
        out.push_back(static_cast<int32_t>(id));
        std::string text = m.tokenizer.decode(out, true);
        if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0 &&
            text.find("\xEF\xBF\xBD", printed.size()) == std::string::npos) {
            std::cout << text.substr(printed.size()) << std::flush;
            printed = text;
        }
    });
    std::string text = m.tokenizer.decode(out, true);
    if (text.size() > printed.size()) std::cout << text.substr(printed.size());
    std::cout << "\n";
    return 0;
}
}  // namespace

Command add_generate(CLI::App& app) {
    auto o = std::make_shared<Options>();
    SamplingOptions& s = o->sampling;
    CLI::App* c = app.add_subcommand("generate", "sample text from a model");
    add_model(c, o->model)->required();
    c->add_option("-p,--prompt", o->prompt, "prompt text")->required();
    c->add_option("-n,--max-new-tokens", s.max_new_tokens, "tokens to generate at most")
        ->check(in_range(1, 1 << 24))->capture_default_str();
    c->add_option("--temperature", s.temperature, "0 = greedy")->check(in_range(0, 100))->capture_default_str();
    c->add_option("--top-k", s.top_k, "sample among the K most likely tokens (0 = off)")->check(in_range(0, 1 << 24))
        ->capture_default_str();
    c->add_option("--top-p", s.top_p, "nucleus sampling: the smallest set with this mass (1 = off)")
        ->check(above_up_to(0, 1))->capture_default_str();
    add_seed(c, s.seed);
    add_watermark_flags(c, o->watermark, /*sampling=*/true);
    return {c, [o] { return run(*o); }};
}

}  // namespace distill::cli
