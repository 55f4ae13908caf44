// distill pretrain — train a model from scratch with cross-entropy.
#include <cstdio>

#include "cli.h"
#include "io/shards.h"
#include "model/checkpoint.h"
#include "pipeline/pipeline.h"
#include "tokenizer/load.h"
#include "train/batches.h"
#include "train/trainer.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::string config, tokenizer, data, run_dir;
    TrainOptions train;
};
}  // namespace

Command add_pretrain(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("pretrain", "train a model from scratch with cross-entropy");
    c->add_option("--config", o->config, "model config.json (HF keys; vocab_size may be left out)")
        ->required()->check(CLI::ExistingFile);
    add_tokenizer(c, o->tokenizer)->required();
    c->add_option("--data", o->data, "token shard prefix (from `distill prepare`)")->required();
    c->add_option("--run-dir", o->run_dir, "run directory: checkpoints, metrics, model/ (resumed if it exists)")
        ->required();
    add_train_flags(c, o->train);
    return {c, [o] {
                Tokenizer tok = load_tokenizer(o->tokenizer);
                ModelConfig cfg = config_for(o->config, tok);
                TokenShard shard(o->data);
                DISTILL_CHECK(shard.info().tokenizer_fingerprint == tok.fingerprint(), "shard '", o->data,
                              "' was made with another tokenizer; re-run `distill prepare` with ", o->tokenizer);
                TrainOptions& t = o->train;
                Llama model(cfg);
                model->init_weights(t.seed);
                to_compute_device(model);
                t.model_flops_per_token = cfg.flops_per_token(t.seq_len);
                BatchSpec spec{t.batch_size, t.seq_len, t.seed, false};
                auto result = run_training(
                    model, tok, t, o->run_dir, pretrain_settings(cfg, t, shard, tok),
                    [&](int64_t step, int64_t micro) {
                        Batch b = sample_batch(shard, spec, step, micro);
                        return StepLoss{next_token_loss(model, b.tokens), t.batch_size * t.seq_len, {}};
                    },
                    "pretrain");
                print_train_result(o->run_dir, result);
                return 0;
            }};
}

}  // namespace distill::cli
