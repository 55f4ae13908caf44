// distill serve — an OpenAI-compatible HTTP server for a model (docs/serve.md).
#include <cstdio>

#include "cli.h"
#include "serve/server.h"

namespace distill::cli {

Command add_serve(CLI::App& app) {
    auto o = std::make_shared<ServeOptions>();
    CLI::App* c = app.add_subcommand("serve", "serve a model through an OpenAI-compatible HTTP API");
    add_model(c, o->model)->required();
    c->add_option("--alias", o->alias, "the model's id in the API (default: its file or folder name)");
    c->add_option("--host", o->host, "address to listen on")->capture_default_str();
    c->add_option("--port", o->port, "port to listen on (0 = any free port, printed at start)")
        ->check(in_range(0, 65535))->capture_default_str();
    c->add_option("--parallel", o->parallel, "requests decoded together in one batch (slots)")
        ->check(in_range(1, 1024))->capture_default_str();
    c->add_option("--http-threads", o->http_threads, "connections served at once (0 = 4 x parallel + 16)")
        ->check(in_range(0, 4096))->capture_default_str();
    c->add_option("--api-key-file", o->api_key_file, "file of API keys, one per line; requests need one")
        ->check(CLI::ExistingFile);
    c->add_option("--rate-limit-rpm", o->rate_rpm, "requests per minute per key (0 = no limit)")
        ->check(in_range(0, 1e9))->capture_default_str();
    c->add_option("--rate-limit-tpm", o->rate_tpm, "prompt + completion tokens per minute per key (0 = no limit)")
        ->check(in_range(0, 1e12))->capture_default_str();
    c->add_option("--max-body-bytes", o->max_body_bytes, "largest request body accepted (413 beyond)")
        ->check(in_range(1024, 1 << 30))->capture_default_str();
    c->add_option("--max-prompt-tokens", o->max_prompt_tokens, "longest prompt accepted (0 = the model's context)")
        ->check(in_range(0, 1 << 24))->capture_default_str();
    c->add_option("--max-tokens", o->max_tokens, "largest max_tokens a request may ask for")
        ->check(in_range(1, 1 << 24))->capture_default_str();
    c->add_option("--max-top-logprobs", o->max_top_logprobs, "largest top_logprobs / logprobs a request may ask for")
        ->check(in_range(0, 1 << 16))->capture_default_str();
    c->add_option("--key-token-quota", o->key_token_quota,
                  "prompt + completion tokens each key may use while the server runs (0 = no quota; 429 beyond)")
        ->check(in_range(0, 1e15))->capture_default_str();
    c->add_option("--logprob-decimals", o->logprob_decimals,
                  "round returned log-probs to this many decimals (-1 = as computed)")
        ->check(in_range(-1, 15))->capture_default_str();
    c->add_option("--logprob-noise", o->logprob_noise,
                  "standard deviation (nats) of the noise on returned log-probs, the same for the same context "
                  "(0 = none)")
        ->check(in_range(0, 100))->capture_default_str();
    c->add_option("--logprob-noise-seed", o->logprob_noise_seed, "the noise's key (0 = a random one at start)");
    c->add_option("--max-queue", o->max_queue, "requests waiting for a slot beyond this get 503")
        ->check(in_range(1, 1 << 20))->capture_default_str();
    c->add_option("--shutdown-timeout", o->shutdown_timeout_s, "seconds in-flight requests get to finish on SIGTERM")
        ->check(in_range(0, 86400))->capture_default_str();
    const std::string testing = "Testing";
    c->add_option("--inject-faults", o->fault_rate,
                  "answer this fraction of POSTs with a fault: 500, 429, a delay, a reset, a truncated or a malformed body")
        ->check(in_range(0, 1))->group(testing);
    c->add_option("--fault-seed", o->fault_seed, "which requests get faults")->group(testing);
    c->add_option("--fault-delay", o->fault_delay_s,
                  "seconds a 'timeout' fault holds the request before it closes the connection unanswered")
        ->check(in_range(0, 3600))->capture_default_str()->group(testing);
    auto wm = std::make_shared<WatermarkFlags>();
    add_watermark_flags(c, *wm, /*sampling=*/true);
    auto ad = std::make_shared<AntidistillOptions>();
    const std::string adg = "Antidistillation sampling";
    c->add_option("--antidistill-proxy", ad->proxy,
                  "a student model of the served tokenizer: sampling favours tokens that would raise its loss "
                  "on --antidistill-data if it trained on them (docs/guard.md)")
        ->group(adg);
    c->add_option("--antidistill-data", ad->data, "UTF-8 text the proxy's loss gradient is taken on")
        ->check(CLI::ExistingFile)->group(adg);
    c->add_option("--antidistill-lambda", ad->lambda, "weight of the antidistillation term in the logits")
        ->check(in_range(0, 1e6))->capture_default_str()->group(adg);
    c->add_option("--antidistill-eps", ad->eps, "finite-difference step along the proxy's gradient")
        ->check(in_range(1e-12, 1e3))->capture_default_str()->group(adg);
    c->add_option("--antidistill-tokens", ad->data_tokens, "at most this many tokens of the data")
        ->check(in_range(2, int64_t(1) << 40))->capture_default_str()->group(adg);
    c->add_option("--antidistill-window", ad->window, "tokens per window of the data")
        ->check(in_range(1, 1 << 20))->capture_default_str()->group(adg);
    return {c, [o, wm, ad] {
                if (!ad->proxy.empty()) o->antidistill = *ad;
                else if (!ad->data.empty())
                    throw Error("--antidistill-data needs --antidistill-proxy: the student whose gradient it gives");
                o->watermark = wm->resolve();
                if (const auto& w = o->watermark)
                    std::fprintf(stderr, "serve: watermarking with key %s (gamma %g, delta %g, context %lld)\n",
                                 watermark_key_id_hex(w->key).c_str(), w->gamma, w->delta,
                                 static_cast<long long>(w->context));
                return serve(*o);
            }};
}

}  // namespace distill::cli
