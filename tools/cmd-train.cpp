// distill train — a student from a teacher cache (offline), a live teacher (online), or the data
// alone (--loss ce, the no-teacher baseline).
#include <cstdlib>

#include "cli.h"
#include "distill/cross-tokenizer.h"
#include "distill/kd.h"
#include "distill/on-policy.h"
#include "distill/sequences.h"
#include "io/logit-cache.h"
#include "model/checkpoint.h"
#include "model/gguf-model.h"
#include "pipeline/pipeline.h"
#include "tokenizer/load.h"
#include "train/distributed.h"
#include "util/progress.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::string config, init, tokenizer, data, run_dir, cache, teacher, sequences, loss = "fkl";
    std::string teacher_data, teacher_tokenizer, xtok_map = "first";
    int64_t online_top_logprobs = 0;
    OnPolicyOptions on_policy;
    bool on_policy_set = false, sampling_flag_set = false;
    RemoteOptions teacher_api;                     // --teacher-url: an API teacher for --on-policy
    std::string api_key_env = "OPENAI_API_KEY";
    LossOptions lo;
    TrainOptions train;
    DistOptions dist;
};

// The student's tokenizer: --tokenizer, else --init's, else the teacher's.
Tokenizer student_tokenizer(const Options& o, const LoadedModel& teacher) {
    if (!o.tokenizer.empty()) return load_tokenizer(o.tokenizer);
    if (!o.init.empty() && (is_gguf_path(o.init) || file_exists(path_join(o.init, "tokenizer.json"))))
        return load_tokenizer(o.init);
    if (teacher.has_tokenizer) return teacher.tokenizer;
    throw UsageError("no tokenizer: pass --tokenizer (or a teacher / --init model that has one)");
}

// The student: --init's weights, or a new model of --config's shape.
std::pair<Llama, ModelConfig> make_student(const Options& o, const Tokenizer& tok) {
    if (!o.init.empty()) {
        LoadedModel init = load_model(o.init);
        return {init.model, init.config};
    }
    ModelConfig cfg = config_for(o.config, tok);
    Llama student(cfg);
    student->init_weights(o.train.seed);
    to_compute_device(student);
    return {student, cfg};
}

// A student from an API dataset (capture --teacher-url): sequence-level, or KD on its top log-probs.
int run_sequences(Options& o) {
    const int world = Distributed::world_from_env();
    DISTILL_USAGE(o.train.batch_size % world == 0, "--batch-size ", o.train.batch_size,
                  " is the global batch: it must divide into WORLD_SIZE=", world, " equal shares (use a multiple of ",
                  world, ")");
    DISTILL_USAGE(o.cache.empty() && o.teacher.empty() && o.data.empty(),
                  "--sequences trains on an API dataset: no --data, --cache or --teacher with it");
    DISTILL_USAGE(o.config.empty() != o.init.empty(), "pass exactly one of --config and --init");
    o.lo.kind = loss_kind_from_string(o.loss);
    LoadedModel none;
    Tokenizer tok = student_tokenizer(o, none);
    auto [student, cfg] = make_student(o, tok);
    TrainOptions& t = o.train;
    t.model_flops_per_token = cfg.flops_per_token(t.seq_len);
    SequenceSet set = load_sequences(o.sequences, tok, t.seq_len);
    std::fprintf(stderr,
                 "train: %lld sequences, %lld completion tokens; %lld of %lld samples map onto the student's "
                 "tokens and %lld more are another tokenizer's (aligned on bytes: %lld positions), %lld scored "
                 "prompts; %lld positions with top-%lld log-probs; the teacher's API reported %lld tokens\n",
                 static_cast<long long>(set.seqs.size()), static_cast<long long>(set.completion_tokens),
                 static_cast<long long>(set.mapped), static_cast<long long>(set.samples),
                 static_cast<long long>(set.cross_samples), static_cast<long long>(set.cross_aligned),
                 static_cast<long long>(set.prompts_scored), static_cast<long long>(set.kd_positions),
                 static_cast<long long>(set.top_k), static_cast<long long>(set.teacher_tokens));
    const nlohmann::json settings = sequence_settings(cfg, o.init, t, o.lo, set.fingerprint, tok);
    // data parallel (torchrun / distill launch): each rank takes its rows of every batch
    std::unique_ptr<Distributed> dist = Distributed::from_env(o.dist);
    auto result = run_training(student, tok, t, o.run_dir, settings, make_sequence_loss(student, set, t, o.lo, dist.get()),
                               "train", dist.get());
    if (!dist || dist->rank() == 0) print_train_result(o.run_dir, result);
    return 0;
}

// A student whose tokenizer differs from the teacher cache's: aligned on byte offsets with the
// shard the cache was captured on (docs/losses.md, "Across tokenizers").
int run_cross_tokenizer(Options& o, Distributed* dist) {
    DISTILL_USAGE(!o.cache.empty(), "--teacher-data goes with --cache (a cache of the teacher's tokens)");
    DISTILL_USAGE(!o.teacher_tokenizer.empty(), "--teacher-data needs --teacher-tokenizer (the cache's tokenizer)");
    DISTILL_USAGE(o.config.empty() != o.init.empty(), "pass exactly one of --config and --init");
    DISTILL_USAGE(!o.tokenizer.empty() || !o.init.empty(), "pass the student's --tokenizer (or --init a model that has one)");
    o.lo.kind = loss_kind_from_string(o.loss);
    DISTILL_USAGE(o.lo.kind != LossKind::kCrossEntropy, "--loss ce takes no teacher: drop --cache and --teacher-data");
    LoadedModel none;
    Tokenizer tok = student_tokenizer(o, none);
    Tokenizer teacher_tok = load_tokenizer(o.teacher_tokenizer);
    auto [student, cfg] = make_student(o, tok);
    TrainOptions& t = o.train;
    t.model_flops_per_token = cfg.flops_per_token(t.seq_len);
    TokenShard shard(o.data), teacher_shard(o.teacher_data);
    LogitCacheReader cache(o.cache);
    const CrossTokenizerMap map = build_cross_tokenizer_map(shard, tok, teacher_shard, teacher_tok, cache,
                                                            cross_tokenizer_mapping_from_string(o.xtok_map));
    std::fprintf(stderr,
                 "train: across tokenizers (%s): %lld of %lld student positions align with a cached teacher "
                 "position; %lld of %d teacher ids map onto student tokens (%lld exactly)\n",
                 o.xtok_map.c_str(), static_cast<long long>(map.aligned), static_cast<long long>(shard.size()),
                 static_cast<long long>(map.mapped_ids), cache.info().vocab_size,
                 static_cast<long long>(map.exact_ids));
    const nlohmann::json teacher_id = {{"cache", cache.info().teacher_fingerprint},
                                       {"top_k", cache.info().top_k},
                                       {"cross_tokenizer", {{"mapping", o.xtok_map}, {"alignment", map.fingerprint}}}};
    BatchSpec spec{t.batch_size, t.seq_len, t.seed, false};
    if (dist) std::tie(spec.row_begin, spec.row_end) = rank_rows(t.batch_size, dist->rank(), dist->world());
    auto result = run_training(student, tok, t, o.run_dir, distill_settings(cfg, o.init, t, o.lo, teacher_id, shard, tok),
                               make_cross_tokenizer_loss(student, shard, spec, o.lo, cache, map, dist), "train", dist);
    if (!dist || dist->rank() == 0) print_train_result(o.run_dir, result);
    return 0;
}

int run(Options& o) {
    if (!o.sequences.empty()) return run_sequences(o);
    DISTILL_USAGE(o.teacher_tokenizer.empty() || !o.teacher_data.empty(),
                  "--teacher-tokenizer goes with --teacher-data (a student across tokenizers)");
    o.on_policy_set = o.on_policy_set || o.on_policy.lambda > 0;
    // data parallel (torchrun / distill launch): joins the other ranks before any work is spent
    const int world = Distributed::world_from_env();
    DISTILL_USAGE(o.train.batch_size % world == 0, "--batch-size ", o.train.batch_size,
                  " is the global batch: it must divide into WORLD_SIZE=", world, " equal shares (use a multiple of ",
                  world, ")");
    std::unique_ptr<Distributed> dist = Distributed::from_env(o.dist);
    if (dist) {
        log_info(str_cat("train: rank ", dist->rank(), " of ", dist->world(), ", rows ",
                         rank_rows(o.train.batch_size, dist->rank(), dist->world()).first, "..",
                         rank_rows(o.train.batch_size, dist->rank(), dist->world()).second - 1,
                         " of each global batch of ", o.train.batch_size));
    }
    if (!o.teacher_data.empty()) return run_cross_tokenizer(o, dist.get());
    DISTILL_USAGE(!o.data.empty(), "train needs --data (a token shard), or --sequences (an API dataset)");
    DISTILL_USAGE(o.on_policy_set || !o.sampling_flag_set,
                  "--max-new-tokens goes with --on-policy (as do --sample-temperature, --sample-top-k, --sample-top-p)");
    const bool api_teacher = !o.teacher_api.url.empty();
    DISTILL_USAGE(!api_teacher || o.on_policy_set,
                  "--teacher-url goes with --on-policy (the API scores the student's samples); to learn from an "
                  "API's completions, capture them (capture --teacher-url) and train with --sequences");
    DISTILL_USAGE(!api_teacher || o.teacher.empty(), "pass --teacher or --teacher-url, not both");
    DISTILL_USAGE(!o.on_policy_set || !o.teacher.empty() || api_teacher,
                  "--on-policy needs --teacher or --teacher-url: a live teacher scores the student's samples");
    DISTILL_USAGE(!api_teacher || !o.tokenizer.empty() || !o.init.empty(),
                  "with --teacher-url, pass the student's --tokenizer (the endpoint model's tokenizer)");
    DISTILL_USAGE(o.cache.empty() || o.teacher.empty() || o.on_policy_set,
                  "pass --cache or --teacher, not both (both only with --on-policy: the cache for the data "
                  "batches, the teacher for the sampled ones)");
    DISTILL_USAGE(o.config.empty() != o.init.empty(), "pass exactly one of --config and --init");
    DISTILL_USAGE(o.online_top_logprobs == 0 || !o.teacher.empty() || api_teacher,
                  "--online-top-logprobs needs --teacher (or --teacher-url: the top log-probs asked for)");
    o.lo.kind = loss_kind_from_string(o.loss);
    LoadedModel teacher;
    if (!o.teacher.empty()) teacher = load_model_for_inference(o.teacher);
    Tokenizer tok = student_tokenizer(o, teacher);
    auto [student, cfg] = make_student(o, tok);
    TrainOptions& t = o.train;
    t.model_flops_per_token = cfg.flops_per_token(t.seq_len);
    TokenShard shard(o.data);
    DISTILL_CHECK(shard.info().tokenizer_fingerprint == tok.fingerprint(), "shard '", o.data,
                  "' was made with another tokenizer than the student's");
    std::unique_ptr<LogitCacheReader> cache;
    nlohmann::json teacher_id = nullptr;
    if (!o.cache.empty()) {
        cache = std::make_unique<LogitCacheReader>(o.cache);
        check_cache_fits(*cache, tok.fingerprint(), cfg.vocab_size, shard, t.seq_len);
        teacher_id = {{"cache", cache->info().teacher_fingerprint}, {"top_k", cache->info().top_k}};
    }
    if (teacher.model) {
        DISTILL_CHECK(teacher.has_tokenizer && teacher.tokenizer.fingerprint() == tok.fingerprint(),
                      "the teacher's tokenizer differs from the student's: logit distillation needs the "
                      "same token ids");
        teacher_id["teacher"] = teacher.fingerprint;
    }
    if (o.online_top_logprobs > 0) teacher_id["online_top_k"] = o.online_top_logprobs;
    BatchSpec spec{t.batch_size, t.seq_len, t.seed, cache != nullptr};
    if (dist) std::tie(spec.row_begin, spec.row_end) = rank_rows(t.batch_size, dist->rank(), dist->world());
    Llama* teacher_ptr = teacher.model ? &teacher.model : nullptr;
    // with a cache the data batches come from it; the live teacher then scores only the samples.
    // An API teacher scores only the samples: without a cache the data batches are cross-entropy.
    LossOptions data_loss = o.lo;
    if (api_teacher && !cache) data_loss.kind = LossKind::kCrossEntropy;
    LossFn loss_fn = make_student_loss(student, shard, spec, data_loss, cache.get(), cache ? nullptr : teacher_ptr,
                                       api_teacher ? 0 : o.online_top_logprobs);
    if (o.on_policy_set) {
        OnPolicyOptions& op = o.on_policy;
        teacher_id["on_policy"] = {{"lambda", op.lambda},
                                   {"max_new_tokens", op.max_new_tokens},
                                   {"temperature", op.sampling.temperature},
                                   {"top_k", op.sampling.top_k},
                                   {"top_p", op.sampling.top_p}};
        if (api_teacher) {
            if (const char* k = std::getenv(o.api_key_env.c_str())) o.teacher_api.api_key = k;
            const int64_t k = o.online_top_logprobs > 0 ? o.online_top_logprobs : 20;
            teacher_id["teacher_url"] = {{"model", remote_model_name(o.teacher_api)}, {"top_logprobs", k}};
            loss_fn = make_on_policy_loss_remote(student, tok, shard, spec, o.lo, op, o.teacher_api, k, loss_fn);
        } else {
            loss_fn = make_on_policy_loss(student, teacher.model, shard, spec, o.lo, op, o.online_top_logprobs, loss_fn);
        }
    }
    auto result = run_training(student, tok, t, o.run_dir, distill_settings(cfg, o.init, t, o.lo, teacher_id, shard, tok),
                               loss_fn, "train", dist.get());
    if (!dist || dist->rank() == 0) print_train_result(o.run_dir, result);
    return 0;
}
}  // namespace

Command add_train(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand("train", "train a student from a teacher cache or a live teacher");
    c->add_option("--config", o->config, "student config.json (a new student)")->check(CLI::ExistingFile);
    c->add_option("--init", o->init, "start from this model (directory or .gguf) instead");
    c->add_option("--tokenizer", o->tokenizer, "tokenizer.json, model directory or .gguf (default: --init's, "
                                               "else the teacher's)")
        ->check(CLI::ExistingPath);
    c->add_option("--data", o->data, "token shard prefix");
    c->add_option("--sequences", o->sequences,
                  "an API dataset (capture --teacher-url): learn the teacher's completions (--loss ce) or its "
                  "returned top log-probs (the KD losses)")
        ->check(CLI::ExistingDirectory);
    c->add_option("--run-dir", o->run_dir, "run directory (resumed if it exists)")->required();
    c->add_option("--cache", o->cache, "teacher logit cache (offline distillation)");
    c->add_option("--teacher", o->teacher, "teacher model directory or .gguf (online distillation)");
    c->add_option("--teacher-data", o->teacher_data,
                  "with --cache of another tokenizer: the shard the cache was captured on (the same text as "
                  "--data in the teacher's tokens); the student learns across tokenizers");
    c->add_option("--teacher-tokenizer", o->teacher_tokenizer, "the tokenizer the --cache was captured with")
        ->check(CLI::ExistingPath);
    c->add_option("--xtok-map", o->xtok_map,
                  "across tokenizers, a teacher token's probability goes to: first (the student token its "
                  "spelling starts with) or exact (only a student token of the same bytes)")
        ->check(CLI::IsMember({"first", "exact"}))->capture_default_str();
    c->add_option("--online-top-logprobs", o->online_top_logprobs,
                  "with --teacher: use its exact top K + rest (sparse loss) instead of the dense form")
        ->check(in_range(0, 1024))->capture_default_str();
    c->add_option("--on-policy", o->on_policy.lambda,
                  "GKD's lambda: the probability that a batch is the student's own continuations of prompts "
                  "cut from the data, scored by --teacher (0 = never, 1 = always)")
        ->check(in_range(0, 1))->capture_default_str()
        ->each([o](const std::string&) { o->on_policy_set = true; });
    const std::string api = "On-policy teacher through an API";
    c->add_option("--teacher-url", o->teacher_api.url,
                  "with --on-policy: an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1) that scores the "
                  "student's samples through /completions with echo and logprobs (--online-top-logprobs, default 20)")
        ->group(api);
    c->add_option("--teacher-model", o->teacher_api.model, "the model id to ask for (default: the first the API lists)")
        ->group(api);
    c->add_option("--api-key-env", o->api_key_env, "environment variable holding the API key")
        ->capture_default_str()->group(api);
    c->add_option("--max-new-tokens", o->on_policy.max_new_tokens,
                  "with --on-policy: tokens sampled per row; the prompt is the window's first --seq-len minus these")
        ->check(in_range(1, 1 << 20))->capture_default_str()
        ->each([o](const std::string&) { o->sampling_flag_set = true; });
    c->add_option("--sample-temperature", o->on_policy.sampling.temperature,
                  "with --on-policy: the student's sampling temperature (0 = greedy)")
        ->check(in_range(0, 100))->capture_default_str()
        ->each([o](const std::string&) { o->sampling_flag_set = true; });
    c->add_option("--sample-top-k", o->on_policy.sampling.top_k, "with --on-policy: sample from the top K (0 = off)")
        ->check(in_range(0, 1 << 30))->capture_default_str()
        ->each([o](const std::string&) { o->sampling_flag_set = true; });
    c->add_option("--sample-top-p", o->on_policy.sampling.top_p, "with --on-policy: nucleus sampling (1 = off)")
        ->check(in_range(0.0, 1.0))->capture_default_str()
        ->each([o](const std::string&) { o->sampling_flag_set = true; });
    c->add_option("--loss", o->loss, "fkl, rkl, jsd, sfkl, srkl, tv or ce")
        ->check(CLI::IsMember({"fkl", "rkl", "jsd", "sfkl", "srkl", "tv", "ce"}))->capture_default_str();
    c->add_option("--temperature", o->lo.temperature, "distillation temperature")->check(in_range(0.05, 100))
        ->capture_default_str();
    c->add_option("--ce-weight", o->lo.ce_weight, "weight of cross-entropy on the data")->check(in_range(0, 1))
        ->capture_default_str();
    c->add_option("--beta", o->lo.beta, "JSD beta")->check(in_range(0, 1))->capture_default_str();
    c->add_option("--alpha", o->lo.alpha, "skew KL alpha")->check(in_range(0, 1))->capture_default_str();
    add_train_flags(c, o->train);
    const std::string dgroup = "Data parallel (WORLD_SIZE > 1; docs/distributed.md)";
    c->add_option("--dist-timeout", o->dist.timeout_s,
                  "seconds that the rendezvous and each collective may take before every rank stops with an error")
        ->check(in_range(1, 86400))->capture_default_str()->group(dgroup);
    c->add_option("--dist-bucket-mb", o->dist.bucket_mb,
                  "MiB of gradients per all-reduce bucket (the first to be reduced: at most 1 MiB)")
        ->check(in_range(0.01, 4096))->capture_default_str()->group(dgroup);
    c->add_flag("!--dist-no-overlap", o->dist.overlap,
                "all-reduce the gradients after backward, not bucket by bucket during it")->group(dgroup);
    return {c, [o] { return run(*o); }};
}

}  // namespace distill::cli
