// distill capture — a teacher's top log-probs per position into a compact, resumable logit cache.
#include <cstdio>
#include <cstdlib>

#include "cli.h"
#include "distill/api-cache.h"
#include "distill/api-capture.h"
#include "distill/capture.h"
#include "io/shards.h"
#include "model/checkpoint.h"
#include "pipeline/pipeline.h"
#include "tokenizer/load.h"
#include "train/distributed.h"
#include "util/progress.h"

namespace distill::cli {

namespace {
struct Options {
    std::string teacher, data, out, tokenizer;
    CaptureOptions capture;
    ApiCaptureOptions api;
    std::string api_key_env = "OPENAI_API_KEY";
    DistOptions dist;
};

// Through an OpenAI-compatible API, the windows of a token shard into a logit cache (the
// black-box counterpart of a local capture).
int run_api_cache(Options& o, bool top_given, bool batch_given) {
    const ApiCaptureOptions& a = o.api;
    DISTILL_USAGE(!o.tokenizer.empty(), "--teacher-url with --data needs --tokenizer (the shard's, which the API's "
                  "model must use)");
    DISTILL_USAGE(!a.score_prompts, "--score-prompts is for --prompts; with --data every position is scored");
    ApiCacheOptions c;
    c.remote.url = a.url;
    c.remote.model = a.model;
    if (const char* k = std::getenv(o.api_key_env.c_str())) c.remote.api_key = k;
    c.remote.retries = a.retries;
    c.remote.timeout_s = a.timeout_s;
    c.remote.backoff_s = a.backoff_s;
    c.top_k = top_given ? o.capture.top_k : 20;  // the OpenAI API's cap
    c.window = o.capture.window;
    c.windows_per_request = batch_given ? o.capture.batch : 4;
    c.concurrency = a.concurrency;
    c.max_windows = o.capture.max_windows;
    c.progress = !Progress::quiet;
    Tokenizer tok = load_tokenizer(o.tokenizer);
    TokenShard shard(o.data);
    ApiCacheResult r = capture_cache_from_api(tok, shard, o.out, c);
    nlohmann::json j = r.to_json();
    j["cache"] = o.out;
    j["top_logprobs"] = c.top_k;
    std::printf("%s\n", j.dump().c_str());
    return 0;
}

// Through an OpenAI-compatible API: prompts in, completions and top log-probs out.
int run_api(Options& o, bool top_given) {
    ApiCaptureOptions& a = o.api;
    DISTILL_USAGE(o.teacher.empty(), "--teacher-url and --teacher are two teachers: give one");
    DISTILL_USAGE(!a.prompts.empty(), "--teacher-url needs --prompts FILE.jsonl (completions into a dataset) or "
                  "--data SHARD --tokenizer T (the shard's windows into a logit cache)");
    a.out = o.out;
    a.top_logprobs = top_given ? o.capture.top_k : 20;  // the OpenAI API's cap
    DISTILL_USAGE(a.top_logprobs >= 1 || !a.score_prompts, "--score-prompts keeps the prompts' log-probs: it needs "
                  "--top-logprobs 1 or more");
    if (const char* k = std::getenv(o.api_key_env.c_str())) a.api_key = k;
    a.progress = !Progress::quiet;
    ApiCaptureResult r = capture_from_api(a);
    nlohmann::json j = r.to_json();
    j["dataset"] = o.out;
    std::printf("%s\n", j.dump().c_str());
    if (r.failed > 0) {
        std::fprintf(stderr, "capture: %lld samples failed (listed in %s/failed.jsonl); run the same command again to retry them\n",
                     static_cast<long long>(r.failed), o.out.c_str());
        return 1;
    }
    return 0;
}
}  // namespace

Command add_capture(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CaptureOptions& cap = o->capture;
    CLI::App* c = app.add_subcommand("capture", "store a teacher's top log-probs per position in a logit cache");
    c->add_option("--teacher", o->teacher, "the teacher: a model directory or a .gguf file");
    c->add_option("--data", o->data, "token shard prefix (from `distill prepare`)");
    c->add_option("-o,--out", o->out, "cache directory (created, or resumed)")->required();
    c->add_option("--top-logprobs", cap.top_k,
                  "log-probs stored per position (the teacher's top K; with --teacher-url and --prompts, default 20, "
                  "and 0 keeps the completions' text only)")
        ->check(in_range(0, 1024))->capture_default_str();
    add_seq_len(c, cap.window, "positions per window (= the students' --seq-len)");
    add_batch_size(c, cap.batch, "windows per teacher forward (with --teacher-url and --data: per request, default 4)");
    c->add_option("--max-windows", cap.max_windows, "capture only the first N windows (0 = all)")
        ->check(in_range(0, 1e12))->capture_default_str();
    const std::string dgroup = "Data parallel (WORLD_SIZE > 1; docs/distributed.md)";
    c->add_option("--dist-timeout", o->dist.timeout_s,
                  "seconds that the rendezvous and each collective may take before every rank stops with an error")
        ->check(in_range(1, 86400))->capture_default_str()->group(dgroup);
    // through an API (docs/api-capture.md)
    ApiCaptureOptions& a = o->api;
    const std::string api = "Teacher through an API";
    auto* url = c->add_option("--teacher-url", a.url, "an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
                    ->group(api);
    c->add_option("--teacher-model", a.model, "the model id to ask for (default: the first the API lists)")->group(api);
    c->add_option("--tokenizer", o->tokenizer,
                  "with --data: the shard's tokenizer (a tokenizer.json, model directory or .gguf), which the API's "
                  "model must share")
        ->group(api);
    c->add_option("--api-key-env", o->api_key_env, "environment variable holding the API key")
        ->capture_default_str()->group(api);
    c->add_option("--prompts", a.prompts, "JSONL: a string, {\"prompt\": ...} or {\"messages\": [...]} per line")
        ->check(CLI::ExistingFile)->group(api);
    c->add_option("--samples", a.samples, "completions per prompt")->check(in_range(1, 1 << 16))
        ->capture_default_str()->group(api);
    c->add_option("--concurrency", a.concurrency, "requests in flight")->check(in_range(1, 1024))
        ->capture_default_str()->group(api);
    c->add_option("--max-tokens", a.max_tokens, "tokens per completion (0: with --score-prompts, score only)")
        ->check(in_range(0, 1 << 20))->capture_default_str()->group(api);
    c->add_flag("--score-prompts", a.score_prompts,
                "also keep the teacher's top log-probs on the prompt text (legacy completions' echo; text prompts)")
        ->group(api);
    c->add_option("--temperature", a.temperature, "sampling temperature")->check(in_range(0, 2))
        ->capture_default_str()->group(api);
    c->add_option("--top-p", a.top_p, "nucleus sampling")->check(above_up_to(0, 1))->capture_default_str()->group(api);
    add_seed(c, a.seed)->group(api);
    c->add_option("--max-teacher-tokens", a.max_teacher_tokens, "stop once the API reported this many tokens (0 = no cap)")
        ->check(in_range(0, 1e15))->capture_default_str()->group(api);
    c->add_option("--retries", a.retries, "retries per sample (429, 5xx, timeouts, resets, malformed bodies)")
        ->check(in_range(0, 1000))->capture_default_str()->group(api);
    c->add_option("--timeout", a.timeout_s, "seconds per request")->check(above_up_to(0, 86400))
        ->capture_default_str()->group(api);
    c->add_option("--backoff", a.backoff_s, "first retry's back-off in seconds (doubles each retry, with jitter)")
        ->check(in_range(0, 3600))->capture_default_str()->group(api);
    return {c, [o, c, url] {
                // a dataset of completions may be text only; a logit cache (local, or through the
                // API with --data) needs log-probs
                DISTILL_USAGE(o->capture.top_k >= 1 || (*url && o->data.empty()),
                              "--top-logprobs 0 keeps no log-probs: a logit cache needs at least 1 a position");
                if (*url) {
                    DISTILL_USAGE(Distributed::world_from_env() == 1,
                                  "--teacher-url runs in one process (its --concurrency spreads the requests); "
                                  "start it without launch/torchrun");
                    const bool top_given = c->get_option("--top-logprobs")->count() > 0;
                    DISTILL_USAGE(o->data.empty() || o->api.prompts.empty(),
                                  "--teacher-url takes --prompts (a dataset of completions) or --data (a logit "
                                  "cache), not both");
                    if (!o->data.empty())
                        return run_api_cache(*o, top_given, c->get_option("--batch-size")->count() > 0);
                    return run_api(*o, top_given);
                }
                DISTILL_USAGE(!o->api.score_prompts, "--score-prompts asks an API to echo its prompts: it needs --teacher-url "
                              "(a local teacher already scores every position of --data)");
                DISTILL_USAGE(!o->teacher.empty() && !o->data.empty(),
                              "capture needs --teacher and --data (a local teacher), or --teacher-url and --prompts");
                LoadedModel t = load_model_for_inference(o->teacher);
                DISTILL_CHECK(t.has_tokenizer, o->teacher, " has no tokenizer");
                TokenShard shard(o->data);
                const CaptureOptions& cap = o->capture;
                // data parallel (torchrun / distill launch): the ranks split the windows
                std::unique_ptr<Distributed> dist = Distributed::from_env(o->dist);
                if (dist)
                    log_info(str_cat("capture: rank ", dist->rank(), " of ", dist->world(), ", ", cap.batch,
                                     " windows per forward"));
                auto r = capture_teacher(t.model, t.fingerprint, t.tokenizer, shard, o->out, cap, dist.get());
                if (dist && dist->rank() != 0) return 0;
                std::printf("%s\n", nlohmann::json({{"cache", o->out},
                                                    {"windows", r.windows},
                                                    {"positions", r.positions},
                                                    {"top_logprobs", cap.top_k},
                                                    {"bytes_per_token", r.bytes_per_token},
                                                    {"kl_full_to_stored", r.kl_full_to_stored},
                                                    {"kl_quantization", r.kl_quantization},
                                                    {"max_abs_logprob_error", r.max_abs_logprob_error},
                                                    {"seconds", r.seconds},
                                                    {"capture_seconds", r.capture_seconds}})
                                        .dump()
                                        .c_str());
                return 0;
            }};
}

}  // namespace distill::cli
