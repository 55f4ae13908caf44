// distill — the flag vocabulary shared by the subcommands (written down in docs/cli.md).
#include <cmath>
#include <cstdio>

#include "cli.h"
#include "eval/eval.h"
#include "train/trainer.h"
#include "util/file.h"

namespace distill::cli {

namespace {
CLI::Validator number_check(const std::string& desc, std::function<bool(double)> ok) {
    return CLI::Validator(
        [desc, ok](std::string& s) -> std::string {
            double v = 0;
            try {
                size_t used = 0;
                v = std::stod(s, &used);
                if (used != s.size()) return "'" + s + "' is not a number";
            } catch (const std::exception&) {
                return "'" + s + "' is not a number";
            }
            if (!std::isfinite(v) || !ok(v)) return "'" + s + "' is out of range: must be " + desc;
            return "";
        },
        desc);
}
// 1048576, not 1.04858e+06
std::string num(double v) {
    char buf[32];
    if (v == std::floor(v) && std::fabs(v) < 1e15)
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
    else
        std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}
}  // namespace

CLI::Validator in_range(double lo, double hi) {
    return number_check("in " + num(lo) + " .. " + num(hi), [lo, hi](double v) { return v >= lo && v <= hi; });
}
CLI::Validator above_up_to(double lo, double hi) {
    return number_check("in (" + num(lo) + ", " + num(hi) + "]", [lo, hi](double v) { return v > lo && v <= hi; });
}

CLI::Validator above_below(double lo, double hi) {
    return number_check("in (" + num(lo) + ", " + num(hi) + ")", [lo, hi](double v) { return v > lo && v < hi; });
}

CLI::Option* add_model(CLI::App* c, std::string& v, const std::string& what) {
    return c->add_option("-m,--model", v, what + ": a model directory (HF layout) or a .gguf file");
}
CLI::Option* add_seq_len(CLI::App* c, int64_t& v, const std::string& what) {
    return c->add_option("-c,--seq-len", v, what)->check(in_range(1, 1 << 20))->capture_default_str();
}
CLI::Option* add_batch_size(CLI::App* c, int64_t& v, const std::string& what) {
    return c->add_option("--batch-size", v, what)->check(in_range(1, 1 << 16))->capture_default_str();
}
CLI::Option* add_seed(CLI::App* c, uint64_t& v) {
    return c->add_option("-s,--seed", v, "random seed")->capture_default_str();
}
CLI::Option* add_text(CLI::App* c, std::string& v) {
    return c->add_option("--text", v, "UTF-8 text file")->check(CLI::ExistingFile);
}
CLI::Option* add_tokenizer(CLI::App* c, std::string& v) {
    return c->add_option("--tokenizer", v, "a tokenizer.json, a model directory or a .gguf file")
        ->check(CLI::ExistingPath);
}

void add_train_flags(CLI::App* c, TrainOptions& o) {
    c->add_option("--steps", o.steps, "optimizer steps")->check(in_range(1, 1e12))->capture_default_str();
    add_batch_size(c, o.batch_size, "sequences per micro-batch");
    add_seq_len(c, o.seq_len, "tokens per training sequence");
    c->add_option("--grad-accum", o.grad_accum, "micro-batches per optimizer step")
        ->check(in_range(1, 1 << 16))->capture_default_str();
    c->add_option("--lr", o.lr, "peak learning rate")->check(in_range(0, 10))->capture_default_str();
    c->add_option("--min-lr-ratio", o.min_lr_ratio, "final lr / peak lr (cosine decay)")
        ->check(in_range(0, 1))->capture_default_str();
    c->add_option("--warmup", o.warmup, "linear warm-up steps")->check(in_range(0, 1e12))->capture_default_str();
    c->add_option("--weight-decay", o.weight_decay, "AdamW weight decay")->check(in_range(0, 10))
        ->capture_default_str();
    c->add_option("--grad-clip", o.grad_clip, "clip the gradient norm (0 = off)")->check(in_range(0, 1e6))
        ->capture_default_str();
    add_seed(c, o.seed);
    c->add_option("--checkpoint-every", o.checkpoint_every, "steps between checkpoints")
        ->check(in_range(1, 1e12))->capture_default_str();
    c->add_option("--log-every", o.log_every, "steps between metrics.jsonl lines")->check(in_range(1, 1e12))
        ->capture_default_str();
    CLI::Option* text = c->add_option("--eval-text", o.eval_text,
                                      "held-out UTF-8 text: its bits per byte go into metrics.jsonl (heldout_bpb) "
                                      "every --eval-every steps and at the last")
                            ->check(CLI::ExistingFile);
    c->add_option("--eval-every", o.eval_every,
                  "steps between held-out evaluations (default: --checkpoint-every)")
        ->check(in_range(1, 1e12))
        ->needs(text);
}

void add_window_flags(CLI::App* c, WindowOptions& w) {
    add_seq_len(c, w.context, "tokens the model sees at once (window length)");
    c->add_option("--stride", w.stride, "new tokens scored per window after the first (<= --seq-len)")
        ->check(in_range(1, 1 << 20))->capture_default_str();
    add_batch_size(c, w.batch, "windows evaluated together");
}

std::optional<WatermarkOptions> WatermarkFlags::resolve() const {
    if (key_file.empty()) return std::nullopt;
    WatermarkOptions o = options;
    o.key = watermark_key_file(key_file);
    watermark_check(o);
    return o;
}

void add_watermark_flags(CLI::App* c, WatermarkFlags& w, bool sampling) {
    WatermarkOptions& o = w.options;
    const std::string group = "Watermark (docs/guard.md)";
    CLI::Option* key = sampling
        ? c->add_option("--watermark-key-file", w.key_file,
                        "watermark what is sampled with the secret key in this file (any bytes; e.g. 32 from /dev/urandom)")
        : c->add_option("--key-file", w.key_file, "the watermark's secret key file")->required();
    key->group(group);
    std::vector<CLI::Option*> opts = {
        c->add_option("--wm-gamma", o.gamma, "the green fraction of the vocabulary")->check(above_below(0, 1)),
        c->add_option("--wm-context", o.context, "previous tokens that pick the green list (h)")
            ->check(in_range(1, kWatermarkMaxContext)),
    };
    if (sampling)
        opts.push_back(c->add_option("--wm-delta", o.delta, "added to the logits of green tokens")->check(in_range(0, 100)));
    for (CLI::Option* opt : opts) {
        opt->capture_default_str()->group(group);
        if (sampling) opt->needs(key);
    }
}

void print_train_result(const std::string& run_dir, const TrainResult& r) {
    std::printf("%s\n", nlohmann::json({{"model", path_join(run_dir, "model")},
                                        {"steps", r.steps},
                                        {"tokens", r.tokens},
                                        {"seconds", r.seconds},
                                        {"final_loss", r.final_loss}})
                            .dump()
                            .c_str());
}

}  // namespace distill::cli
