// distill — the training loop shared by pretraining and distillation: AdamW, warm-up + cosine,
// gradient clipping and accumulation, atomic checkpoints with exact resume, JSONL metrics and a
// live progress line.
#pragma once

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace distill {

class Distributed;

struct TrainOptions {
    int64_t steps = 1000;
    int64_t batch_size = 16;  // sequences per micro-batch
    int64_t seq_len = 128;
    int64_t grad_accum = 1;   // micro-batches per optimizer step
    double lr = 3e-3;
    double min_lr_ratio = 0.1;
    int64_t warmup = 50;
    double weight_decay = 0.1;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double grad_clip = 1.0;   // 0 = off
    uint64_t seed = 1;
    int64_t checkpoint_every = 100;
    int64_t log_every = 10;   // metrics.jsonl line every N steps
    // Held-out curve: with a text file eval_text, its bits per byte every eval_every steps (0:
    // every checkpoint_every) and at the last, logged to metrics.jsonl as heldout_bpb. Like
    // log_every these are not part of what identifies a run.
    int64_t eval_every = 0;
    std::string eval_text;
    // Forward FLOPs per token of the model being trained (ModelConfig::flops_per_token). Not a
    // setting: when known, metrics report the achieved training FLOP rate (3x forward).
    double model_flops_per_token = 0;

    nlohmann::json to_json() const;
    static TrainOptions from_json(const nlohmann::json& j);
};

// The loss of one micro-batch (a scalar averaged over its target tokens), and how many tokens
// it trained on. `extras` are logged to metrics.jsonl as they are.
struct StepLoss {
    torch::Tensor loss;
    int64_t tokens = 0;
    std::map<std::string, double> extras;
};
using LossFn = std::function<StepLoss(int64_t step, int64_t micro)>;

struct TrainResult {
    int64_t steps = 0;
    int64_t tokens = 0;          // training tokens seen over the whole run (all resumes)
    double seconds = 0;          // training wall time over the whole run (all resumes)
    double final_loss = 0;       // mean loss over the last log window
    bool resumed = false;
    bool already_done = false;   // the run dir held a finished run with the same settings
};

// Whether `run_dir` holds a finished model or a checkpoint of a run whose settings differ from
// `run_config` (one that run_training would refuse); false when it holds neither.
bool run_dir_holds_other_run(const std::string& run_dir, const nlohmann::json& run_config);

// Trains `model` in place. run_dir gets: checkpoint/ (model dir + optimizer.safetensors +
// state.json), metrics.jsonl, model/ (the final model dir) and done.json. `run_config` is the
// full description of the run (options, data and teacher fingerprints...): a run dir holding a
// checkpoint of a different run_config is refused, one holding a finished run of the same
// run_config is reused as it is.
// With `dist` (data parallel, docs/distributed.md): loss_fn computes this rank's rows of the
// global batch; the ranks check that they share run_config, start from rank 0's weights, average
// their gradients each step; only rank 0 writes to run_dir (every rank resumes from it).
TrainResult run_training(Llama& model, const Tokenizer& tokenizer, const TrainOptions& opts,
                         const std::string& run_dir, const nlohmann::json& run_config,
                         const LossFn& loss_fn, const std::string& label = "train",
                         Distributed* dist = nullptr);

// Cross-entropy of next-token prediction on tokens (B, T+1): mean over B*T positions.
torch::Tensor next_token_loss(Llama& model, const torch::Tensor& tokens);

}  // namespace distill
