#include "train/trainer.h"

#include <torch/torch.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "distill/losses.h"
#include "eval/eval.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "train/distributed.h"
#include "train/optimizer.h"
#include "util/device.h"
#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill {

nlohmann::json TrainOptions::to_json() const {
    return {{"steps", steps},           {"batch_size", batch_size},
            {"seq_len", seq_len},       {"grad_accum", grad_accum},
            {"lr", lr},                 {"min_lr_ratio", min_lr_ratio},
            {"warmup", warmup},         {"weight_decay", weight_decay},
            {"beta1", beta1},           {"beta2", beta2},
            {"grad_clip", grad_clip},   {"seed", seed},
            {"checkpoint_every", checkpoint_every}, {"log_every", log_every},
            {"eval_every", eval_every}, {"eval_text", eval_text}};
}

TrainOptions TrainOptions::from_json(const nlohmann::json& j) {
    TrainOptions o;
    o.steps = j.value("steps", o.steps);
    o.batch_size = j.value("batch_size", o.batch_size);
    o.seq_len = j.value("seq_len", o.seq_len);
    o.grad_accum = j.value("grad_accum", o.grad_accum);
    o.lr = j.value("lr", o.lr);
    o.min_lr_ratio = j.value("min_lr_ratio", o.min_lr_ratio);
    o.warmup = j.value("warmup", o.warmup);
    o.weight_decay = j.value("weight_decay", o.weight_decay);
    o.beta1 = j.value("beta1", o.beta1);
    o.beta2 = j.value("beta2", o.beta2);
    o.grad_clip = j.value("grad_clip", o.grad_clip);
    o.seed = j.value("seed", o.seed);
    o.checkpoint_every = j.value("checkpoint_every", o.checkpoint_every);
    o.log_every = j.value("log_every", o.log_every);
    o.eval_every = j.value("eval_every", o.eval_every);
    o.eval_text = j.value("eval_text", o.eval_text);
    return o;
}

torch::Tensor next_token_loss(Llama& model, const torch::Tensor& tokens) {
    // tokens: (B, T+1) -> inputs (B, T), targets (B, T); logits (B, T, V)
    const int64_t T = tokens.size(1) - 1;
    auto inputs = tokens.narrow(1, 0, T);
    auto targets = tokens.narrow(1, 1, T);
    auto logits = model->forward_for_loss(inputs);
    return loss_cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

namespace {

// What identifies a run: everything in run_config except the settings that cannot change its
// result (how often it checkpoints, logs and measures the held-out curve).
std::string run_fingerprint(nlohmann::json run_config) {
    if (run_config.contains("train") && run_config["train"].is_object()) {
        for (const char* k : {"checkpoint_every", "log_every", "eval_every", "eval_text"})
            run_config["train"].erase(k);
    }
    return hash_hex(run_config.dump());
}

// Keeps the metrics lines up to `step` (inclusive), dropping what a killed run wrote after its
// last checkpoint, so that resumed metrics have no duplicates.
void trim_metrics(const std::string& path, int64_t step) {
    if (!file_exists(path)) return;
    std::istringstream in(read_file(path));
    std::string line, kept;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        try {
            auto j = nlohmann::json::parse(line);
            if (j.value("step", int64_t{0}) <= step) kept += line + "\n";
        } catch (const nlohmann::json::exception&) {
            // a torn last line from a killed process
        }
    }
    write_file_atomic(path, kept);
}

// Copies the weights of the model directory `dir` (written by this run) into `model`.
void load_weights_from(Llama& model, const std::string& dir) {
    LoadedModel m = load_model_dir(dir);
    torch::NoGradGuard ng;
    auto src = model_state(m.model);
    for (auto& p : model->named_parameters()) p.value().copy_(src.at(p.key()));
}

// What `run_dir` holds of a run whose fingerprint is not `fp`: "a finished model", "a checkpoint",
// or "" (nothing, or this run's). A finished model counts only beside its done.json.
std::string other_run_in(const std::string& run_dir, const std::string& fp) {
    const std::string done_path = path_join(run_dir, "done.json");
    if (file_exists(done_path) && dir_exists(path_join(run_dir, "model")))
        return read_json_file(done_path).value("fingerprint", "") != fp ? "a finished model" : "";
    const std::string ckpt_dir = path_join(run_dir, "checkpoint");
    recover_dir(ckpt_dir);
    const std::string state_path = path_join(ckpt_dir, "state.json");
    return file_exists(state_path) && read_json_file(state_path).value("fingerprint", "") != fp ? "a checkpoint" : "";
}

}  // namespace

bool run_dir_holds_other_run(const std::string& run_dir, const nlohmann::json& run_config) {
    return !other_run_in(run_dir, run_fingerprint(run_config)).empty();
}

TrainResult run_training(Llama& model, const Tokenizer& tokenizer, const TrainOptions& opts,
                         const std::string& run_dir, const nlohmann::json& run_config,
                         const LossFn& loss_fn, const std::string& label, Distributed* dist) {
    DISTILL_CHECK(opts.steps > 0 && opts.batch_size > 0 && opts.seq_len > 0 && opts.grad_accum > 0,
                  "steps, batch size, sequence length and grad accumulation must be positive");
    DISTILL_CHECK(opts.lr > 0 && std::isfinite(opts.lr), "learning rate must be positive");
    DISTILL_CHECK(opts.eval_every >= 0, "the held-out evaluation interval must not be negative");
    DISTILL_CHECK(opts.eval_every == 0 || !opts.eval_text.empty(), "a held-out curve (every ",
                  opts.eval_every, " steps) needs a text file: pass --eval-text");
    // the held-out curve's text, read (and checked) before any training is spent
    std::string eval_text;
    int64_t eval_every = 0;
    if (!opts.eval_text.empty()) {
        eval_text = read_file(opts.eval_text);
        DISTILL_CHECK(!eval_text.empty(), "--eval-text file '", opts.eval_text, "' is empty");
        eval_every = opts.eval_every > 0 ? opts.eval_every : opts.checkpoint_every;
    }
    // data parallel: only rank 0 writes the run directory
    const bool writer = !dist || dist->rank() == 0;
    if (dist) dist->check_same_settings(run_config);
    if (writer) make_dirs(run_dir);
    const std::string fp = run_fingerprint(run_config);
    const std::string ckpt_dir = path_join(run_dir, "checkpoint");
    const std::string final_dir = path_join(run_dir, "model");
    const std::string done_path = path_join(run_dir, "done.json");
    const std::string metrics_path = path_join(run_dir, "metrics.jsonl");
    TrainResult result;

    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value());
    AdamW opt(params, {opts.lr, opts.beta1, opts.beta2, 1e-8, opts.weight_decay});
    std::vector<torch::Tensor> param_list;
    for (auto& p : params) param_list.push_back(p.second);

    // Only rank 0 reads the run directory (a finished model, or the last checkpoint); the other
    // ranks get what it found through the process group, so the run directory need not be shared
    // between machines. 0: a fresh run, 1: resumed, 2: already finished, -1: rank 0 failed.
    enum : int { kFresh = 0, kResumed = 1, kDone = 2, kFailed = -1 };
    int found = kFresh;
    int64_t start_step = 0;
    std::string failure;
    if (writer) {
        try {
            const std::string other = other_run_in(run_dir, fp);
            DISTILL_CHECK(other.empty(), "run directory '", run_dir, "' holds ", other,
                          " of a run with different settings; use another --run-dir, or delete it to start over");
            if (file_exists(done_path) && dir_exists(final_dir)) {
                const auto done = read_json_file(done_path);
                load_weights_from(model, final_dir);
                result.steps = done.value("steps", int64_t{0});
                result.tokens = done.value("tokens", int64_t{0});
                result.seconds = done.value("seconds", 0.0);
                result.final_loss = done.value("final_loss", 0.0);
                found = kDone;
            } else {
                recover_dir(ckpt_dir);
                if (dir_exists(ckpt_dir) && file_exists(path_join(ckpt_dir, "state.json"))) {
                    const auto state = read_json_file(path_join(ckpt_dir, "state.json"));
                    load_weights_from(model, ckpt_dir);
                    SafetensorsFile st(path_join(ckpt_dir, "optimizer.safetensors"));
                    std::map<std::string, torch::Tensor> s;
                    for (const auto& [name, e] : st.entries())
                        s[name] = st.get(name, name == "t" ? torch::kInt64 : torch::kFloat32);
                    opt.load_state(s);
                    start_step = state.at("step").get<int64_t>();
                    result.tokens = state.value("tokens", int64_t{0});
                    result.seconds = state.value("seconds", 0.0);
                    found = kResumed;
                }
            }
        } catch (const Error& e) {
            if (!dist) throw;
            failure = e.what();
            found = kFailed;
        }
    }
    if (dist) {
        dist->attach_gradient_hooks(param_list);
        std::vector<torch::Tensor> head{torch::tensor(
            {double(found), double(start_step), double(result.tokens), result.seconds, result.final_loss,
             double(result.steps)},
            torch::kFloat64)};
        dist->broadcast(head);
        if (!failure.empty()) throw Error(failure);
        const auto h = head[0];
        found = static_cast<int>(h[0].item<double>());
        DISTILL_CHECK(found != kFailed, "rank ", dist->rank(), ": rank 0 could not use the run directory '", run_dir,
                      "' (its message says why)");
        start_step = static_cast<int64_t>(h[1].item<double>());
        result.tokens = static_cast<int64_t>(h[2].item<double>());
        result.seconds = h[3].item<double>();
        result.final_loss = h[4].item<double>();
        result.steps = static_cast<int64_t>(h[5].item<double>());
        // every rank takes rank 0's weights and optimizer state (made from the same seed, or read
        // from its checkpoint); the step count is a fresh tensor in state(), so it is put back
        std::vector<torch::Tensor> state = param_list;
        auto opt_state = opt.state();
        if (found != kDone)
            for (auto& [name, t] : opt_state) state.push_back(t);
        dist->broadcast(state);
        if (found != kDone) opt.load_state(opt_state);
    }
    if (found == kDone) {
        result.already_done = true;
        log_info(str_cat(label, ": reusing the finished run in ", run_dir));
        return result;
    }
    if (found == kResumed) {
        result.resumed = true;
        if (writer) trim_metrics(metrics_path, start_step);
        log_info(str_cat(label, ": resuming from the checkpoint at step ", start_step, " in ", ckpt_dir));
    } else if (writer) {
        write_file_atomic(metrics_path, "");
    }
    if (writer) write_file_atomic(path_join(run_dir, "run.json"), run_config.dump(2) + "\n");

    auto save_checkpoint = [&](int64_t step) {
        nlohmann::json state = {{"step", step},
                                {"tokens", result.tokens},
                                {"seconds", result.seconds},
                                {"fingerprint", fp}};
        const std::string tmp = ckpt_dir + ".tmp-" + std::to_string(::getpid());
        save_model_dir(tmp, model, &tokenizer);
        save_safetensors(path_join(tmp, "optimizer.safetensors"), opt.state());
        write_file_atomic(path_join(tmp, "state.json"), state.dump(2) + "\n");
        replace_dir(tmp, ckpt_dir);
    };

    // Bits per byte of the held-out text, in windows of the training length overlapping by half.
    // Its time is not training time: the clock restarts after it.
    WindowOptions eval_window;
    eval_window.context = opts.seq_len;
    eval_window.stride = std::max<int64_t>(1, opts.seq_len / 2);
    eval_window.batch = opts.batch_size;
    auto heldout_bpb = [&] {
        model->eval();
        const BpbResult b = eval_bpb(model, tokenizer, eval_text, eval_window, "");
        model->train();
        return b;
    };

    std::ofstream metrics;
    if (writer) metrics.open(metrics_path, std::ios::app);
    // The products' precision is not part of the run's identity: a run may resume on a machine
    // that chooses the other one. Each metrics line and done.json say which ran.
    const std::string precision = precision_name(train_precision());
    if (writer) log_info(str_cat(label, ": matrix products in ", train_precision_reason()));
    model->train();
    const bool quiet_before = Progress::quiet;
    if (!writer) Progress::quiet = true;
    Progress progress(label);
    double allreduce_ms = 0;
    double window_loss = 0;
    int64_t window_n = 0;
    double t_last = now_seconds();
    int64_t tokens_at_start = result.tokens;
    double t_start = t_last;
    for (int64_t step = start_step; step < opts.steps; ++step) {
        const double lr = lr_at(step, opts.steps, opts.warmup, opts.lr, opts.min_lr_ratio);
        opt.zero_grad();
        const int64_t tokens_before_step = result.tokens;
        double step_loss = 0;
        std::map<std::string, double> extras;
        for (int64_t micro = 0; micro < opts.grad_accum; ++micro) {
            StepLoss sl = loss_fn(step, micro);
            DISTILL_ASSERT(sl.loss.defined() && sl.loss.numel() == 1, "loss must be a scalar");
            // data parallel: the last micro-batch's backward starts the gradient all-reduce
            if (dist && micro == opts.grad_accum - 1) dist->expect_last_backward(opts.grad_accum == 1);
            (sl.loss / double(opts.grad_accum)).backward();
            step_loss += sl.loss.item<double>() / double(opts.grad_accum);
            result.tokens += sl.tokens;
            for (const auto& [k, v] : sl.extras) extras[k] += v / double(opts.grad_accum);
        }
        if (dist) {
            allreduce_ms = dist->all_reduce_gradients(param_list);
            // the step's loss is the mean over the ranks' equal shares; the step's tokens add up
            std::vector<double> v{step_loss, double(result.tokens - tokens_before_step)};
            dist->all_reduce_sum(v);
            step_loss = v[0] / dist->world();
            result.tokens = tokens_before_step + static_cast<int64_t>(v[1]);
        }
        DISTILL_CHECK(std::isfinite(step_loss), label, ": the loss became ", step_loss, " at step ",
                      step + 1, "; lower --lr or check the data (the last checkpoint is kept)");
        double grad_norm = 0;
        if (opts.grad_clip > 0)
            grad_norm = opt.clip_grad_norm(opts.grad_clip, /*defer=*/true);  // applied by step()
        opt.step(lr);
        const double t_now = now_seconds();
        result.seconds += t_now - t_last;
        t_last = t_now;
        window_loss += step_loss;
        ++window_n;
        const int64_t done = step + 1;
        const double tok_s = double(result.tokens - tokens_at_start) / std::max(1e-9, t_now - t_start);
        char detail[128];
        std::snprintf(detail, sizeof detail, "loss %.4f  lr %.2e  %s tok/s", step_loss, lr,
                      format_count(tok_s).c_str());
        progress.update(done, opts.steps, detail);
        const bool eval_now = eval_every > 0 && (done % eval_every == 0 || done == opts.steps);
        if (done % opts.log_every == 0 || done == opts.steps || eval_now) {
            nlohmann::json line = {{"step", done},
                                   {"loss", window_loss / window_n},
                                   {"lr", lr},
                                   {"grad_norm", grad_norm},
                                   {"tokens", result.tokens},
                                   {"seconds", result.seconds},
                                   {"tokens_per_second", tok_s},
                                   {"precision", precision}};
            if (opts.model_flops_per_token > 0)
                line["model_gflops_per_second"] = 3.0 * opts.model_flops_per_token * tok_s / 1e9;
            for (const auto& [k, v] : extras) line[k] = v;
            if (dist) {
                line["world_size"] = dist->world();
                line["allreduce_ms"] = allreduce_ms;
            }
            if (eval_now && writer) {
                const BpbResult b = heldout_bpb();
                line["heldout_bpb"] = b.bits_per_byte;
                line["heldout_seconds"] = b.seconds;
                t_last = now_seconds();
                t_start += b.seconds;
            }
            if (writer) {
                metrics << line.dump() << "\n";
                metrics.flush();
            }
            result.final_loss = window_loss / window_n;
            window_loss = 0;
            window_n = 0;
        }
        if (done % opts.checkpoint_every == 0 && done < opts.steps && writer) save_checkpoint(done);
    }
    result.steps = opts.steps;
    model->eval();
    // every rank holds the same weights; rank 0 writes them, the others wait until it has
    if (dist) {
        Progress::quiet = quiet_before;
        if (!writer) {
            dist->barrier();
            return result;
        }
    }
    save_model_dir(final_dir, model, &tokenizer);
    nlohmann::json done = {{"fingerprint", fp},       {"steps", result.steps},
                           {"tokens", result.tokens}, {"seconds", result.seconds},
                           {"final_loss", result.final_loss}, {"precision", precision}};
    write_file_atomic(done_path, done.dump(2) + "\n");
    std::error_code ec;
    std::filesystem::remove_all(ckpt_dir, ec);
    progress.finish(str_cat("loss ", result.final_loss));
    if (dist) dist->barrier();
    return result;
}

}  // namespace distill
