// distill capture — a teacher's top log-probs per position into a compact, resumable logit cache.
#include <cstdio>

#include "cli.h"
#include "distill/capture.h"
#include "io/shards.h"
#include "model/checkpoint.h"
#include "pipeline/pipeline.h"

namespace distill::cli {

namespace {
struct Options {
    std::string teacher, data, out;
    CaptureOptions capture;
};
}  // namespace

Command add_capture(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CaptureOptions& cap = o->capture;
    CLI::App* c = app.add_subcommand("capture", "store a teacher's top log-probs per position in a logit cache");
    c->add_option("--teacher", o->teacher, "the teacher: a model directory or a .gguf file")->required();
    c->add_option("--data", o->data, "token shard prefix (from `distill prepare`)")->required();
    c->add_option("-o,--out", o->out, "cache directory (created, or resumed)")->required();
    c->add_option("--top-logprobs", cap.top_k, "log-probs stored per position (the teacher's top K)")
        ->check(in_range(1, 1024))->capture_default_str();
    add_seq_len(c, cap.window, "positions per window (= the students' --seq-len)");
    add_batch_size(c, cap.batch, "windows per teacher forward");
    c->add_option("--max-windows", cap.max_windows, "capture only the first N windows (0 = all)")
        ->check(in_range(0, 1e12))->capture_default_str();
    return {c, [o] {
                LoadedModel t = load_model(o->teacher);
                DISTILL_CHECK(t.has_tokenizer, o->teacher, " has no tokenizer");
                TokenShard shard(o->data);
                const CaptureOptions& cap = o->capture;
                auto r = capture_teacher(t.model, t.fingerprint, t.tokenizer, shard, o->out, cap);
                std::printf("%s\n", nlohmann::json({{"cache", o->out},
                                                    {"windows", r.windows},
                                                    {"positions", r.positions},
                                                    {"top_logprobs", cap.top_k},
                                                    {"bytes_per_token", r.bytes_per_token},
                                                    {"kl_full_to_stored", r.kl_full_to_stored},
                                                    {"kl_quantization", r.kl_quantization},
                                                    {"max_abs_logprob_error", r.max_abs_logprob_error},
                                                    {"seconds", r.seconds}})
                                        .dump()
                                        .c_str());
                return 0;
            }};
}

}  // namespace distill::cli
