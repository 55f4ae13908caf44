// distill — the command-line tool: parse flags, call the library, print.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "demo/demo.h"
#include "distill/capture.h"
#include "distill/kd.h"
#include "eval/eval.h"
#include "io/shards.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/gguf-model.h"
#include "tokenizer/chat-template.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/file.h"
#include "util/platform.h"
#include "util/progress.h"

using namespace distill;
using nlohmann::json;

namespace {

std::string read_stdin() {
    std::string s((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    return s;
}

void add_train_flags(CLI::App* cmd, TrainOptions& o) {
    cmd->add_option("--steps", o.steps, "optimizer steps")->capture_default_str();
    cmd->add_option("--batch-size", o.batch_size, "sequences per micro-batch")->capture_default_str();
    cmd->add_option("--seq-len", o.seq_len, "tokens per sequence")->capture_default_str();
    cmd->add_option("--grad-accum", o.grad_accum, "micro-batches per step")->capture_default_str();
    cmd->add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
    cmd->add_option("--min-lr-ratio", o.min_lr_ratio, "final lr / peak lr")->capture_default_str();
    cmd->add_option("--warmup", o.warmup, "linear warm-up steps")->capture_default_str();
    cmd->add_option("--weight-decay", o.weight_decay, "AdamW weight decay")->capture_default_str();
    cmd->add_option("--grad-clip", o.grad_clip, "clip the gradient norm (0 = off)")->capture_default_str();
    cmd->add_option("--seed", o.seed, "seed for init and batches")->capture_default_str();
    cmd->add_option("--checkpoint-every", o.checkpoint_every, "steps between checkpoints")
        ->capture_default_str();
    cmd->add_option("--log-every", o.log_every, "steps between metrics lines")->capture_default_str();
}

// Reads a model config: a config.json file, with vocab_size filled from the tokenizer if absent.
ModelConfig config_for(const std::string& path, const Tokenizer& tok) {
    json j = read_json_file(path);
    DISTILL_CHECK(j.is_object(), path, ": expected a JSON object");
    if (!j.contains("vocab_size")) j["vocab_size"] = tok.vocab_size();
    ModelConfig c = config_from_json(j, path);
    DISTILL_CHECK(c.vocab_size >= tok.vocab_size(), path, ": vocab_size ", c.vocab_size,
                  " is smaller than the tokenizer's ", tok.vocab_size());
    if (c.bos_token_id < 0) c.bos_token_id = tok.bos_id();
    if (c.eos_token_id < 0) c.eos_token_id = tok.eos_id();
    return c;
}

void print_train_result(const std::string& run_dir, const TrainResult& r) {
    std::printf("%s\n", json({{"model", path_join(run_dir, "model")},
                              {"steps", r.steps},
                              {"tokens", r.tokens},
                              {"seconds", r.seconds},
                              {"final_loss", r.final_loss}})
                            .dump()
                            .c_str());
}

int cmd_tokenize(const std::string& tok_path, bool decode, bool jsonl) {
    Tokenizer tok = load_tokenizer(tok_path);
    auto ids_of = [](const json& arr, const std::string& where) {
        DISTILL_CHECK(arr.is_array(), where, ": expected a JSON array of token ids");
        std::vector<int32_t> ids;
        for (const auto& v : arr) {
            DISTILL_CHECK(v.is_number_integer(), where, ": token ids must be integers");
            ids.push_back(v.get<int32_t>());
        }
        return ids;
    };
    auto encode_json = [&](const std::string& s) { return json(tok.encode(s)).dump(); };
    if (!jsonl) {
        std::string in = read_stdin();
        if (decode) {
            json arr;
            try {
                arr = json::parse(in);
            } catch (const json::exception& e) {
                throw Error(str_cat("stdin: not a JSON array of ids: ", e.what()));
            }
            std::cout << tok.decode(ids_of(arr, "stdin"));
        } else {
            std::cout << encode_json(in) << "\n";
        }
        return 0;
    }
    std::string line;
    int64_t n = 0;
    while (std::getline(std::cin, line)) {
        ++n;
        json v;
        try {
            v = json::parse(line);
        } catch (const json::exception& e) {
            throw Error(str_cat("stdin line ", n, ": not valid JSON: ", e.what()));
        }
        if (decode)
            std::cout << json(tok.decode(ids_of(v, str_cat("stdin line ", n)))).dump(-1, ' ', false,
                                                                                    json::error_handler_t::replace)
                      << "\n";
        else {
            DISTILL_CHECK(v.is_string(), "stdin line ", n, ": expected a JSON string");
            std::cout << encode_json(v.get<std::string>()) << "\n";
        }
    }
    return 0;
}

// Prints a conversation rendered with a tokenizer_config.json's chat template (exact bytes).
int cmd_chat_template(const std::string& config, const std::string& messages_path, bool add_generation_prompt,
                      const std::string& thinking, const std::string& tools_path, bool chatml_fallback) {
    ChatTemplate t = ChatTemplate::from_tokenizer_config(config, chatml_fallback);
    auto parse = [](const std::string& path) {
        try {
            return nlohmann::ordered_json::parse(read_file(path));
        } catch (const nlohmann::json::exception& e) {
            throw Error(str_cat(path, ": not valid JSON: ", e.what()));
        }
    };
    // An array of messages, or a request body {"messages": [...], "tools": [...]}.
    nlohmann::ordered_json msgs = parse(messages_path);
    ChatOptions opt;
    if (msgs.is_object() && msgs.contains("messages")) {
        if (msgs.contains("tools")) opt.tools = msgs["tools"];
        msgs = nlohmann::ordered_json(msgs["messages"]);
    }
    if (!tools_path.empty()) opt.tools = parse(tools_path);
    opt.add_generation_prompt = add_generation_prompt;
    if (!thinking.empty()) opt.enable_thinking = thinking == "true";
    std::string text = t.render(msgs, opt);
    std::fprintf(stderr, "chat template: %s (hash %s)\n", t.name().c_str(), t.hash().c_str());
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}

int cmd_score(const std::string& model_path, const std::string& text_path, int64_t top_k,
              const WindowOptions& wopts) {
    LoadedModel m = load_model_dir(model_path);
    DISTILL_CHECK(m.has_tokenizer, model_path, " has no tokenizer.json");
    DISTILL_CHECK(top_k >= 0 && top_k <= m.config.vocab_size, "--top-k must be in 0 .. vocab size");
    auto ids = encode_for_eval(m.tokenizer, read_file(text_path));
    for_each_window(m.model, ids, wopts,
                    [&](int64_t first, const torch::Tensor& lp, const torch::Tensor& targets) {
                        torch::Tensor top_v, top_i;
                        if (top_k > 0) std::tie(top_v, top_i) = lp.topk(top_k, -1);
                        for (int64_t r = 0; r < lp.size(0); ++r) {
                            const int64_t id = targets[r].item<int64_t>();
                            json line = {{"pos", first + r},
                                         {"id", id},
                                         {"logprob", lp[r][id].item<double>()}};
                            json top = json::array();
                            for (int64_t k = 0; k < top_k; ++k)
                                top.push_back({top_i[r][k].item<int64_t>(), top_v[r][k].item<double>()});
                            line["top"] = top;
                            std::cout << line.dump() << "\n";
                        }
                    });
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"distill — knowledge distillation for language models"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "distill 0.1.0");
    int threads = 0;
    bool quiet = false;
    app.add_option("--threads", threads, "CPU threads (0 = all cores)")->capture_default_str();
    app.add_flag("--quiet", quiet, "no progress output");

    // demo
    DemoOptions demo;
    auto* c_demo = app.add_subcommand("demo", "the whole story on six Jane Austen novels");
    c_demo->add_option("--run-dir", demo.run_dir, "where everything is built (reused)")->capture_default_str();
    c_demo->add_option("--vocab-size", demo.vocab_size)->capture_default_str();
    c_demo->add_option("--teacher-steps", demo.teacher_steps)->capture_default_str();
    c_demo->add_option("--student-steps", demo.student_steps)->capture_default_str();
    c_demo->add_option("--seed", demo.seed)->capture_default_str();
    c_demo->add_option("--student-seeds", demo.student_seeds,
                       "train the student pair for each of these seeds (default: --seed)")
        ->delimiter(',');
    c_demo->add_option("--top-k", demo.top_k, "teacher top-k to capture")->capture_default_str();
    c_demo->add_option("--loss", demo.loss, "distillation loss: fkl, rkl, jsd, sfkl, srkl, tv")->capture_default_str();
    c_demo->add_option("--temperature", demo.temperature)->capture_default_str();
    c_demo->add_option("--ce-weight", demo.ce_weight)->capture_default_str();
    c_demo->add_flag("--quick", demo.quick, "a much smaller run (a first look, and the tests)");

    // train-tokenizer
    std::vector<std::string> tok_inputs;
    std::string tok_out;
    TokenizerTrainOptions tok_opts;
    auto* c_tok = app.add_subcommand("train-tokenizer", "train a byte-level BPE tokenizer.json");
    c_tok->add_option("--input", tok_inputs, "UTF-8 text files")->required()->check(CLI::ExistingFile);
    c_tok->add_option("--vocab-size", tok_opts.vocab_size)->capture_default_str();
    c_tok->add_option("--min-frequency", tok_opts.min_frequency)->capture_default_str();
    c_tok->add_option("--out", tok_out, "tokenizer.json to write")->required();

    // prepare
    std::string prep_tok, prep_in, prep_out;
    auto* c_prep = app.add_subcommand("prepare", "tokenize a text file into a token shard");
    c_prep->add_option("--tokenizer", prep_tok, "tokenizer.json, model directory or .gguf")->required()->check(CLI::ExistingPath);
    c_prep->add_option("--input", prep_in, "UTF-8 text file")->required()->check(CLI::ExistingFile);
    c_prep->add_option("--out", prep_out, "shard prefix (writes PREFIX.bin and PREFIX.json)")->required();
    double prep_heldout = 0;
    std::string prep_heldout_out;
    c_prep->add_option("--heldout-fraction", prep_heldout,
                       "hold out this fraction of the text's end (cut at a line break)")
        ->check(CLI::Range(0.0, 0.9));
    c_prep->add_option("--heldout-out", prep_heldout_out, "where the held-out text is written");

    // pretrain
    TrainOptions pre;
    std::string pre_config, pre_tok, pre_data, pre_run;
    auto* c_pre = app.add_subcommand("pretrain", "train a model from scratch with cross-entropy");
    c_pre->add_option("--config", pre_config, "model config.json (HF keys)")->required()->check(CLI::ExistingFile);
    c_pre->add_option("--tokenizer", pre_tok, "tokenizer.json, model directory or .gguf")->required()->check(CLI::ExistingPath);
    c_pre->add_option("--data", pre_data, "token shard prefix (from `distill prepare`)")->required();
    c_pre->add_option("--run-dir", pre_run, "run directory (checkpoints, metrics, model/)")->required();
    add_train_flags(c_pre, pre);

    // capture
    std::string cap_teacher, cap_data, cap_out;
    CaptureOptions cap;
    auto* c_cap = app.add_subcommand("capture", "store a teacher's top-K per position in a logit cache");
    c_cap->add_option("--teacher", cap_teacher, "teacher model directory")->required();
    c_cap->add_option("--data", cap_data, "token shard prefix")->required();
    c_cap->add_option("--out", cap_out, "cache directory (created, or resumed)")->required();
    c_cap->add_option("--top-k", cap.top_k, "ids kept per position")->capture_default_str();
    c_cap->add_option("--window", cap.window, "positions per window (= the students' --seq-len)")
        ->capture_default_str();
    c_cap->add_option("--batch", cap.batch, "windows per teacher forward")->capture_default_str();
    c_cap->add_option("--max-windows", cap.max_windows, "capture only the first N windows (0 = all)")
        ->capture_default_str();

    // train (distill a student)
    TrainOptions kd;
    std::string kd_config, kd_init, kd_tok, kd_data, kd_run, kd_cache, kd_teacher, kd_loss = "fkl";
    LossOptions lo;
    auto* c_kd = app.add_subcommand("train", "train a student from a teacher cache or a live teacher");
    c_kd->add_option("--config", kd_config, "student config.json (a new student)");
    c_kd->add_option("--init", kd_init, "start from this model directory instead");
    c_kd->add_option("--tokenizer", kd_tok, "tokenizer.json (default: the teacher's / --init's)");
    c_kd->add_option("--data", kd_data, "token shard prefix")->required();
    c_kd->add_option("--run-dir", kd_run, "run directory")->required();
    c_kd->add_option("--cache", kd_cache, "teacher logit cache (offline distillation)");
    c_kd->add_option("--teacher", kd_teacher, "teacher model directory (online distillation)");
    int64_t kd_online_top_k = 0;
    c_kd->add_option("--online-top-k", kd_online_top_k,
                     "with --teacher: use its exact top-K + rest (sparse loss) instead of the dense form")
        ->capture_default_str();
    c_kd->add_option("--loss", kd_loss, "fkl, rkl, jsd, sfkl, srkl, tv or ce")->capture_default_str();
    c_kd->add_option("--temperature", lo.temperature)->capture_default_str();
    c_kd->add_option("--ce-weight", lo.ce_weight, "weight of cross-entropy on the data")->capture_default_str();
    c_kd->add_option("--beta", lo.beta, "JSD beta")->capture_default_str();
    c_kd->add_option("--alpha", lo.alpha, "skew KL alpha")->capture_default_str();
    add_train_flags(c_kd, kd);

    // eval
    std::string ev_model, ev_text, ev_json;
    WindowOptions wopts;
    auto* c_ev = app.add_subcommand("eval", "bits per byte of a model on a text file");
    c_ev->add_option("--model", ev_model, "model directory")->required();
    c_ev->add_option("--text", ev_text, "UTF-8 text file")->required()->check(CLI::ExistingFile);
    c_ev->add_option("--context", wopts.context, "window length in tokens")->capture_default_str();
    c_ev->add_option("--stride", wopts.stride, "new tokens per window")->capture_default_str();
    c_ev->add_option("--json", ev_json, "also write the result to this JSON file");

    // generate
    std::string gen_model, gen_prompt;
    SamplingOptions samp;
    auto* c_gen = app.add_subcommand("generate", "sample text from a model");
    c_gen->add_option("--model", gen_model, "model directory")->required();
    c_gen->add_option("--prompt", gen_prompt, "prompt text")->required();
    c_gen->add_option("--max-new-tokens", samp.max_new_tokens)->capture_default_str();
    c_gen->add_option("--temperature", samp.temperature, "0 = greedy")->capture_default_str();
    c_gen->add_option("--top-k", samp.top_k, "0 = off")->capture_default_str();
    c_gen->add_option("--top-p", samp.top_p, "1 = off")->capture_default_str();
    c_gen->add_option("--seed", samp.seed)->capture_default_str();

    // tokenize
    std::string tz_tok;
    bool tz_decode = false, tz_jsonl = false;
    auto* c_tz = app.add_subcommand("tokenize", "text on stdin -> JSON ids (or back with --decode)");
    c_tz->add_option("--tokenizer", tz_tok, "tokenizer.json, model directory or .gguf")->required();
    c_tz->add_flag("--decode", tz_decode, "read a JSON array of ids, print the text");
    c_tz->add_flag("--jsonl", tz_jsonl, "one JSON string (or id array) per input line");

    // score
    std::string sc_model, sc_text;
    int64_t sc_top_k = 5;
    WindowOptions sc_w;
    auto* c_sc = app.add_subcommand("score", "per-position log-probs and top-K as JSON lines");
    c_sc->add_option("--model", sc_model, "model directory")->required();
    c_sc->add_option("--text", sc_text, "UTF-8 text file")->required()->check(CLI::ExistingFile);
    c_sc->add_option("--top-k", sc_top_k, "top-K [id, logprob] pairs per position")->capture_default_str();
    c_sc->add_option("--context", sc_w.context)->capture_default_str();
    c_sc->add_option("--stride", sc_w.stride)->capture_default_str();

    // chat-template
    std::string ct_config, ct_messages, ct_thinking, ct_tools;
    bool ct_prompt = false, ct_fallback = false;
    auto* c_ct = app.add_subcommand("chat-template", "render a conversation with a model's chat template");
    c_ct->add_option("--tokenizer-config", ct_config, "tokenizer_config.json")->required()->check(CLI::ExistingFile);
    c_ct->add_option("--messages", ct_messages, "JSON: [{role, content}, ...] or {messages, tools}")
        ->required()->check(CLI::ExistingFile);
    c_ct->add_flag("--add-generation-prompt", ct_prompt, "end with the header of the assistant's turn");
    c_ct->add_option("--enable-thinking", ct_thinking, "Qwen3: true or false")->check(CLI::IsMember({"true", "false"}));
    c_ct->add_option("--tools", ct_tools, "JSON file: an array of tool schemas")->check(CLI::ExistingFile);
    c_ct->add_flag("--chatml-fallback", ct_fallback, "render an unknown template as generic ChatML");
    // export
    std::string ex_model, ex_format = "gguf", ex_out, ex_type = "f32", ex_name;
    auto* c_ex = app.add_subcommand("export", "write a model as GGUF (llama.cpp, ollama) or an HF model directory");
    c_ex->add_option("--model", ex_model, "model directory or .gguf file")->required();
    c_ex->add_option("--format", ex_format, "gguf or hf")->check(CLI::IsMember({"gguf", "hf"}))->capture_default_str();
    c_ex->add_option("--out", ex_out, "the .gguf file (or HF directory) to write")->required();
    c_ex->add_option("--type", ex_type, "GGUF type of the weight matrices: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k")
        ->capture_default_str();
    c_ex->add_option("--name", ex_name, "GGUF general.name");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    // Commands that do heavy math get a fast BLAS kernel (this may re-execute the program once);
    // quick ones (tokenize, --help) do not pay for it.
    if (!*c_tz && !*c_ct) ensure_fast_blas(argc, argv);

    try {
        Progress::quiet = quiet;
        tune_allocator();
    set_threads(threads);
        demo.threads = threads;
        if (*c_demo) return run_demo(demo);
        if (*c_tok) {
            std::string corpus;
            for (const auto& f : tok_inputs) corpus += read_file(f);
            Tokenizer tok = Tokenizer::train(corpus, tok_opts);
            tok.save(tok_out);
            log_info(str_cat("wrote ", tok_out, " (", tok.vocab_size(), " tokens)"));
            return 0;
        }
        if (*c_prep) {
            Tokenizer tok = load_tokenizer(prep_tok);
            std::string text = read_file(prep_in);
            DISTILL_CHECK((prep_heldout > 0) == !prep_heldout_out.empty(),
                          "--heldout-fraction and --heldout-out go together");
            if (prep_heldout > 0) {
                // deterministic: the last fraction of the text, starting after a line break
                size_t cut = static_cast<size_t>(double(text.size()) * (1.0 - prep_heldout));
                size_t nl = text.find('\n', cut);
                cut = nl == std::string::npos ? text.size() : nl + 1;
                write_file_atomic(prep_heldout_out, text.substr(cut));
                log_info(str_cat("held out the last ", text.size() - cut, " bytes in ", prep_heldout_out));
                text.resize(cut);
            }
            auto ids = tok.encode(text);
            ShardInfo info = write_shard(prep_out, ids, tok.vocab_size(), tok.fingerprint(), prep_in,
                                         static_cast<int64_t>(text.size()));
            log_info(str_cat("wrote ", prep_out, ".bin: ", info.num_tokens, " tokens, ",
                             double(text.size()) / std::max<int64_t>(1, info.num_tokens),
                             " bytes/token"));
            return 0;
        }
        if (*c_pre) {
            Tokenizer tok = load_tokenizer(pre_tok);
            ModelConfig cfg = config_for(pre_config, tok);
            TokenShard shard(pre_data);
            DISTILL_CHECK(shard.info().tokenizer_fingerprint == tok.fingerprint(), "shard '", pre_data,
                          "' was made with another tokenizer; re-run `distill prepare` with ", pre_tok);
            Llama model(cfg);
            model->init_weights(pre.seed);
            pre.model_flops_per_token = cfg.flops_per_token(pre.seq_len);
            BatchSpec spec{pre.batch_size, pre.seq_len, pre.seed, false};
            json run = {{"kind", "pretrain"},
                        {"model", config_to_json(cfg)},
                        {"train", pre.to_json()},
                        {"data", shard.info().fingerprint},
                        {"tokenizer", tok.fingerprint()}};
            auto result = run_training(
                model, tok, pre, pre_run, run,
                [&](int64_t step, int64_t micro) {
                    Batch b = sample_batch(shard, spec, step, micro);
                    return StepLoss{next_token_loss(model, b.tokens), pre.batch_size * pre.seq_len, {}};
                },
                "pretrain");
            print_train_result(pre_run, result);
            return 0;
        }
        if (*c_cap) {
            LoadedModel t = load_model_dir(cap_teacher);
            DISTILL_CHECK(t.has_tokenizer, cap_teacher, " has no tokenizer.json");
            TokenShard shard(cap_data);
            auto r = capture_teacher(t.model, t.fingerprint, t.tokenizer, shard, cap_out, cap);
            std::printf("%s\n", json({{"cache", cap_out},
                                      {"windows", r.windows},
                                      {"positions", r.positions},
                                      {"top_k", cap.top_k},
                                      {"bytes_per_token", r.bytes_per_token},
                                      {"kl_full_to_stored", r.kl_full_to_stored},
                                      {"kl_quantization", r.kl_quantization},
                                      {"max_abs_logprob_error", r.max_abs_logprob_error},
                                      {"seconds", r.seconds}})
                                    .dump()
                                    .c_str());
            return 0;
        }
        if (*c_kd) {
            lo.kind = loss_kind_from_string(kd_loss);
            DISTILL_CHECK(kd_cache.empty() || kd_teacher.empty(), "pass --cache or --teacher, not both");
            DISTILL_CHECK(kd_config.empty() != kd_init.empty(), "pass exactly one of --config and --init");
            LoadedModel teacher;
            if (!kd_teacher.empty()) teacher = load_model_dir(kd_teacher);
            Tokenizer tok;
            std::string tok_from;
            if (!kd_tok.empty()) {
                tok = load_tokenizer(kd_tok);
            } else if (!kd_init.empty() && (is_gguf_path(kd_init) ||
                                            file_exists(path_join(kd_init, "tokenizer.json")))) {
                tok = load_tokenizer(kd_init);
            } else if (teacher.has_tokenizer) {
                tok = teacher.tokenizer;
            } else {
                throw Error("no tokenizer: pass --tokenizer");
            }
            Llama student{nullptr};
            ModelConfig cfg;
            if (!kd_init.empty()) {
                LoadedModel init = load_model_dir(kd_init);
                cfg = init.config;
                student = init.model;
            } else {
                cfg = config_for(kd_config, tok);
                student = Llama(cfg);
                student->init_weights(kd.seed);
            }
            kd.model_flops_per_token = cfg.flops_per_token(kd.seq_len);
            TokenShard shard(kd_data);
            DISTILL_CHECK(shard.info().tokenizer_fingerprint == tok.fingerprint(), "shard '", kd_data,
                          "' was made with another tokenizer than the student's");
            std::unique_ptr<LogitCacheReader> cache;
            json teacher_id = nullptr;
            if (!kd_cache.empty()) {
                cache = std::make_unique<LogitCacheReader>(kd_cache);
                check_cache_fits(*cache, tok.fingerprint(), cfg.vocab_size, shard, kd.seq_len);
                teacher_id = {{"cache", cache->info().teacher_fingerprint}, {"top_k", cache->info().top_k}};
            } else if (teacher.model) {
                DISTILL_CHECK(teacher.has_tokenizer && teacher.tokenizer.fingerprint() == tok.fingerprint(),
                              "the teacher's tokenizer differs from the student's: logit distillation "
                              "needs the same token ids");
                teacher_id = {{"teacher", teacher.fingerprint}};
            }
            DISTILL_CHECK(kd_online_top_k == 0 || teacher.model, "--online-top-k needs --teacher");
            if (kd_online_top_k > 0) teacher_id["online_top_k"] = kd_online_top_k;
            BatchSpec spec{kd.batch_size, kd.seq_len, kd.seed, cache != nullptr};
            json run = {{"kind", "distill"},
                        {"model", config_to_json(cfg)},
                        {"init", kd_init},
                        {"train", kd.to_json()},
                        {"loss", {{"kind", loss_kind_name(lo.kind)}, {"temperature", lo.temperature},
                                  {"ce_weight", lo.ce_weight}, {"beta", lo.beta}, {"alpha", lo.alpha}}},
                        {"teacher", teacher_id},
                        {"data", shard.info().fingerprint},
                        {"tokenizer", tok.fingerprint()}};
            Llama* teacher_ptr = teacher.model ? &teacher.model : nullptr;
            auto result = run_training(student, tok, kd, kd_run, run,
                                       make_student_loss(student, shard, spec, lo, cache.get(), teacher_ptr,
                                                         kd_online_top_k),
                                       "train");
            print_train_result(kd_run, result);
            return 0;
        }
        if (*c_ev) {
            LoadedModel m = load_model_dir(ev_model);
            DISTILL_CHECK(m.has_tokenizer, ev_model, " has no tokenizer.json");
            auto r = eval_bpb(m.model, m.tokenizer, read_file(ev_text), wopts);
            json out = {{"model", ev_model},         {"text", ev_text},
                        {"bits_per_byte", r.bits_per_byte}, {"nats_per_token", r.nats_per_token},
                        {"tokens", r.tokens},        {"bytes", r.bytes},
                        {"seconds", r.seconds}};
            std::printf("%s\n", out.dump().c_str());
            if (!ev_json.empty()) write_file_atomic(ev_json, out.dump(2) + "\n");
            return 0;
        }
        if (*c_gen) {
            LoadedModel m = load_model_dir(gen_model);
            DISTILL_CHECK(m.has_tokenizer, gen_model, " has no tokenizer.json");
            std::vector<int64_t> prompt = encode_for_eval(m.tokenizer, gen_prompt);
            samp.eos_id = m.tokenizer.eos_id();
            std::cout << gen_prompt << std::flush;
            // print as we go; decode the whole tail each time so multi-byte characters come out whole
            std::vector<int32_t> out;
            std::string printed;
            generate(m.model, prompt, samp, [&](int64_t id) {
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
        if (*c_ex) {
            LoadedModel m = load_model_dir(ex_model);
            DISTILL_CHECK(m.has_tokenizer, ex_model, " has no tokenizer: export needs one");
            json out = {{"out", ex_out}, {"format", ex_format}};
            if (ex_format == "gguf") {
                out["tensors"] = save_gguf_model(ex_out, m.model, m.tokenizer, {ex_type, ex_name});
            } else {
                DISTILL_CHECK(ex_type == "f32", "--type applies to --format gguf only (hf is float32)");
                save_model_dir(ex_out, m.model, &m.tokenizer);
            }
            std::printf("%s\n", out.dump().c_str());
            return 0;
        }
        if (*c_tz) return cmd_tokenize(tz_tok, tz_decode, tz_jsonl);
        if (*c_sc) return cmd_score(sc_model, sc_text, sc_top_k, sc_w);
        if (*c_ct) return cmd_chat_template(ct_config, ct_messages, ct_prompt, ct_thinking, ct_tools, ct_fallback);
    } catch (const Error& e) {
        std::fprintf(stderr, "\ndistill: error: %s\n", e.what());
        return 1;
    } catch (const c10::Error& e) {
        std::fprintf(stderr, "\ndistill: error: %s\n", e.what_without_backtrace());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "\ndistill: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
