// distill guard — the model owner's tools (docs/guard.md). `guard detect`: is this text
// watermarked with our key? Text on stdin (or one JSON text a line with --jsonl), one JSON result
// out per text. `guard radioactivity`: was a suspect model trained on our watermarked texts?
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "distill/api-capture.h"
#include "guard/detect.h"
#include "guard/radioactivity.h"
#include "model/checkpoint.h"
#include "pipeline/pipeline.h"
#include "tokenizer/load.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill::cli {

namespace {
struct DetectFlags {
    WatermarkFlags watermark;
    std::string tokenizer;
    bool jsonl = false;
};

// The text of one --jsonl line: a JSON string, or an object with a string "text".
std::string text_of(const std::string& line, int64_t n) {
    using nlohmann::json;
    json v;
    try {
        v = json::parse(line);
    } catch (const json::exception& e) {
        throw Error(str_cat("stdin line ", n, ": not valid JSON: ", e.what()));
    }
    if (v.is_object() && v.contains("text")) v = v["text"];
    DISTILL_CHECK(v.is_string(), "stdin line ", n,
                  R"(: expected a JSON string or an object {"text": "..."})");
    return v.get<std::string>();
}

struct RadioFlags {
    WatermarkFlags watermark;
    std::string tokenizer, suspect, texts, dataset, filter_texts;
    std::string score = "top1", text;  // --score soft reads --text
    int64_t top_m = 0;                 // soft: 0 = 64 open, 20 closed
    int64_t min_count = 2;
    int64_t top_k = 1;
    WindowOptions window;
    ApiCaptureOptions api;
    std::string api_key_env = "OPENAI_API_KEY";
};

// The texts of a JSONL file, as detect --jsonl reads them (an API dataset's samples.jsonl too).
std::vector<std::string> read_texts(const std::string& path) {
    std::ifstream in(path);
    DISTILL_CHECK(in, "cannot read '", path, "'");
    std::vector<std::string> texts;
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
            texts.push_back(text_of(line, n));
        } catch (const Error& e) {
            throw Error(str_cat(path, ": ", e.what()));
        }
    }
    DISTILL_CHECK(!texts.empty(), "'", path, "' holds no texts (one JSON string or {\"text\": ...} a line)");
    return texts;
}

// An API dataset's samples as (prompt, completion): a chat's prompt is its messages' contents.
std::vector<SuspectSample> read_suspect_samples(const std::string& dir) {
    std::vector<SuspectSample> out;
    for (const ApiSample& s : read_api_dataset(dir)) {
        SuspectSample x;
        const nlohmann::json& r = s.record;
        if (r.contains("prompt") && r["prompt"].is_string()) x.prompt = r["prompt"].get<std::string>();
        if (r.contains("messages") && r["messages"].is_array())
            for (const auto& m : r["messages"])
                if (m.contains("content") && m["content"].is_string()) x.prompt += m["content"].get<std::string>() + "\n";
        DISTILL_CHECK(r.contains("text") && r["text"].is_string(), dir, "/samples.jsonl: sample ", s.prompt_index, "/",
                      s.sample, " has no \"text\"");
        x.completion = r["text"].get<std::string>();
        out.push_back(std::move(x));
    }
    DISTILL_CHECK(!out.empty(), "the dataset '", dir, "' holds no samples");
    return out;
}

// --score soft: the suspect's distribution over a key-independent text (docs/guard.md).
int run_soft_radioactivity(RadioFlags& o, const WatermarkOptions& wm) {
    DISTILL_USAGE(!o.text.empty(), "--score soft reads a text that does not depend on the key: --text FILE");
    DISTILL_USAGE(o.texts.empty() && o.dataset.empty() && o.filter_texts.empty() && o.top_k == 1,
                  "--texts, --dataset, --filter-texts and --top-k belong to --score top1");
    const bool open = !o.suspect.empty();
    DISTILL_USAGE(open != !o.api.url.empty(), "--score soft takes --suspect MODEL (open) or --suspect-url URL (closed)");
    DISTILL_USAGE(o.window.stride <= o.window.context, "--stride ", o.window.stride, " must not exceed --seq-len ",
                  o.window.context);
    const std::string text = read_file(o.text);
    nlohmann::ordered_json out;
    SoftRadioactivityResult r;
    if (open) {
        LoadedModel m = load_model_for_inference(o.suspect);
        const Tokenizer tok = o.tokenizer.empty() ? m.tokenizer : load_tokenizer(o.tokenizer);
        DISTILL_CHECK(!o.tokenizer.empty() || m.has_tokenizer, o.suspect, " has no tokenizer: pass --tokenizer");
        DISTILL_CHECK(!m.has_tokenizer || m.tokenizer.fingerprint() == tok.fingerprint(),
                      "the suspect's tokenizer is not --tokenizer: the soft test needs the same tokens");
        const int64_t top_m = o.top_m > 0 ? o.top_m : 64;
        r = radioactivity_soft_open(m.model, tok, text, wm, o.window, top_m);
        out["mode"] = "open";
        out["suspect"] = o.suspect;
        out["top_m"] = top_m;
    } else {
        DISTILL_USAGE(!o.tokenizer.empty(), "closed mode needs our tokenizer (the suspect's API must share it): --tokenizer");
        const Tokenizer tok = load_tokenizer(o.tokenizer);
        RemoteOptions remote;
        remote.url = o.api.url;
        remote.model = o.api.model;
        if (const char* k = std::getenv(o.api_key_env.c_str())) remote.api_key = k;
        const int64_t top_m = o.top_m > 0 ? o.top_m : 20;
        r = radioactivity_soft_closed(remote, tok, text, wm, o.window, top_m);
        out["mode"] = "closed";
        out["suspect_url"] = o.api.url;
        out["top_m"] = top_m;
    }
    out["text"] = o.text;
    const nlohmann::ordered_json scored = soft_result_json(wm, r);
    for (const auto& [k, v] : scored.items()) out[k] = v;
    std::cout << out.dump() << "\n";
    return 0;
}

int run_radioactivity(RadioFlags& o) {
    const std::optional<WatermarkOptions> key = o.watermark.resolve();
    DISTILL_CHECK(key, "guard radioactivity needs the watermark's key: --key-file F");
    const WatermarkOptions wm = *key;
    if (o.score == "soft") return run_soft_radioactivity(o, wm);
    DISTILL_USAGE(o.text.empty() && o.top_m == 0, "--text and --top-m belong to --score soft");
    const bool open = !o.suspect.empty();
    DISTILL_USAGE(open != !o.dataset.empty(),
                  "pass --suspect MODEL (open mode) or --dataset DIR (closed mode: the suspect's completions, "
                  "captured with --suspect-url or `distill capture --teacher-url`), not both");
    nlohmann::ordered_json out;
    RadioactivityResult r;
    if (open) {
        DISTILL_USAGE(!o.texts.empty(), "open mode reads our watermarked texts: --texts FILE.jsonl");
        DISTILL_USAGE(o.filter_texts.empty() && o.api.url.empty(), "--filter-texts and --suspect-url are closed-mode flags");
        DISTILL_USAGE(o.window.stride <= o.window.context, "--stride ", o.window.stride, " must not exceed --seq-len ",
                      o.window.context);
        LoadedModel m = load_model_for_inference(o.suspect);
        const Tokenizer tok = o.tokenizer.empty() ? m.tokenizer : load_tokenizer(o.tokenizer);
        DISTILL_CHECK(!o.tokenizer.empty() || m.has_tokenizer, o.suspect, " has no tokenizer: pass --tokenizer");
        DISTILL_CHECK(!m.has_tokenizer || m.tokenizer.fingerprint() == tok.fingerprint(), "the suspect's tokenizer is not --tokenizer: open mode needs the same tokens (use closed mode, --dataset, for another tokenizer)");
        r = radioactivity_open(m.model, tok, read_texts(o.texts), wm, o.window, o.top_k);
        out["mode"] = "open";
        out["top_k"] = o.top_k;
        out["suspect"] = o.suspect;
    } else {
        DISTILL_USAGE(!o.tokenizer.empty(), "closed mode needs our tokenizer: --tokenizer");
        DISTILL_USAGE(o.texts.empty(), "--texts is an open-mode flag (closed mode filters with --filter-texts)");
        DISTILL_USAGE(o.top_k == 1, "--top-k is an open-mode flag (closed mode scores the tokens the API sampled)");
        const Tokenizer tok = load_tokenizer(o.tokenizer);
        if (!o.api.url.empty()) {
            DISTILL_USAGE(!o.api.prompts.empty(), "--suspect-url needs --prompts FILE.jsonl");
            o.api.out = o.dataset;
            o.api.top_logprobs = 0;  // only its tokens are scored
            if (const char* k = std::getenv(o.api_key_env.c_str())) o.api.api_key = k;
            o.api.progress = !Progress::quiet;
            const ApiCaptureResult c = capture_from_api(o.api);
            DISTILL_CHECK(c.failed == 0, c.failed, " of the suspect's samples failed (listed in ", o.dataset,
                          "/failed.jsonl); run the same command again to retry them");
            out["capture"] = c.to_json();
        }
        ContextCounts counts;
        if (!o.filter_texts.empty()) counts = watermark_context_counts(tok, read_texts(o.filter_texts), wm.context);
        r = radioactivity_closed(tok, read_suspect_samples(o.dataset), wm, o.filter_texts.empty() ? nullptr : &counts,
                                 o.min_count);
        out["mode"] = "closed";
        out["dataset"] = o.dataset;
        out["in_prompt"] = r.in_prompt;
        if (!o.filter_texts.empty()) {
            out["filter"] = {{"texts", o.filter_texts}, {"min_count", o.min_count}, {"contexts", counts.size()}};
            out["filtered_out"] = r.filtered_out;
        }
    }
    out["texts"] = r.texts;
    out["positions"] = r.positions;
    const nlohmann::ordered_json detected = detect_result_json(wm, r.detect);
    for (const auto& [k, v] : detected.items()) out[k] = v;
    std::cout << out.dump() << "\n";
    return 0;
}

int run_detect(const DetectFlags& o) {
    const std::optional<WatermarkOptions> key = o.watermark.resolve();
    DISTILL_CHECK(key, "guard detect needs the watermark's key: --key-file F");
    const WatermarkOptions wm = *key;
    const Tokenizer tok = load_tokenizer(o.tokenizer);
    // the text's own tokens, no BOS: whatever produced the text, it is what the reader has
    auto detect = [&](const std::string& text) {
        std::vector<int64_t> ids;
        for (int32_t t : tok.encode(text)) ids.push_back(t);
        std::cout << detect_result_json(wm, watermark_detect(wm, ids)).dump() << "\n" << std::flush;
    };
    if (!o.jsonl) {
        detect(std::string((std::istreambuf_iterator<char>(std::cin)),
                           std::istreambuf_iterator<char>()));
        return 0;
    }
    std::string line;
    int64_t n = 0;
    while (std::getline(std::cin, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos)
            continue;  // blank lines are not texts
        detect(text_of(line, n));
    }
    return 0;
}
}  // namespace

Command add_guard(CLI::App& app) {
    CLI::App* g = app.add_subcommand(
        "guard", "the model owner's tools: detect the watermark, test a suspect for it (docs/guard.md)");
    g->require_subcommand(1);
    auto d = std::make_shared<DetectFlags>();
    CLI::App* c = g->add_subcommand(
        "detect", "is the text on stdin watermarked with this key? JSON out: z, p");
    add_watermark_flags(c, d->watermark, /*sampling=*/false);
    add_tokenizer(c, d->tokenizer)->required();
    c->add_flag("--jsonl", d->jsonl,
                R"(one text a line: a JSON string or {"text": "..."}; one result a line)");

    auto r = std::make_shared<RadioFlags>();
    CLI::App* rc = g->add_subcommand(
        "radioactivity", "was a suspect model trained on our watermarked texts? open: --suspect MODEL "
                         "--texts F; closed: --dataset DIR (from --suspect-url --prompts). JSON out: z, p");
    add_watermark_flags(rc, r->watermark, /*sampling=*/false);
    add_tokenizer(rc, r->tokenizer);
    const std::string open = "Open mode (the suspect's weights)", closed = "Closed mode (the suspect's API)";
    rc->add_option("--suspect", r->suspect, "the suspect model: a directory or .gguf")->group(open);
    rc->add_option("--texts", r->texts, "our watermarked texts, JSONL: a string or {\"text\": ...} a line "
                                        "(an API dataset's samples.jsonl reads as it is)")
        ->check(CLI::ExistingFile)->group(open);
    add_seq_len(rc, r->window.context, "tokens the suspect sees at once")->group(open);
    rc->add_option("--stride", r->window.stride, "new positions per window after the first (<= --seq-len)")
        ->check(in_range(1, 1 << 20))->capture_default_str()->group(open);
    add_batch_size(rc, r->window.batch, "windows per forward")->group(open);
    rc->add_option("--top-k", r->top_k,
                   "score the suspect's K most likely tokens at each position, each a tuple (1: its top-1)")
        ->check(in_range(1, 1 << 20))->capture_default_str()->group(open);
    const std::string soft = "The soft test (--score soft; docs/guard.md)";
    rc->add_option("--score", r->score,
                   "top1: the suspect's top-1 (top-K) tokens as tuples, an exact binomial p (the paper's); soft: its "
                   "whole next-token distribution over --text, Chernoff's bound on p")
        ->check(CLI::IsMember({"top1", "soft"}))->capture_default_str()->group(soft);
    rc->add_option("--text", r->text, "soft: a plain text the suspect reads that does not depend on the key "
                                      "(a public or held-out text; not our watermarked outputs)")
        ->check(CLI::ExistingFile)->group(soft);
    rc->add_option("--top-m", r->top_m, "soft: the suspect's most likely tokens each position weighs (0: 64 open, "
                                        "20 closed)")
        ->check(in_range(0, 1 << 20))->capture_default_str()->group(soft);
    rc->add_option("--dataset", r->dataset, "the suspect's completions: an API dataset directory (written "
                                            "first when --suspect-url is given)")->group(closed);
    rc->add_option("--suspect-url", r->api.url, "the suspect's OpenAI-compatible API, e.g. http://host:8000/v1")
        ->group(closed);
    rc->add_option("--suspect-model", r->api.model, "the model id to ask for (default: the first listed)")->group(closed);
    rc->add_option("--api-key-env", r->api_key_env, "environment variable holding the suspect API's key")
        ->capture_default_str()->group(closed);
    rc->add_option("--prompts", r->api.prompts, "JSONL prompts for the suspect (as capture --prompts)")
        ->check(CLI::ExistingFile)->group(closed);
    rc->add_option("--samples", r->api.samples, "completions per prompt")->check(in_range(1, 1 << 16))
        ->capture_default_str()->group(closed);
    rc->add_option("--max-tokens", r->api.max_tokens, "tokens per completion")->check(in_range(1, 1 << 20))
        ->capture_default_str()->group(closed);
    rc->add_option("--temperature", r->api.temperature, "sampling temperature")->check(in_range(0, 2))
        ->capture_default_str()->group(closed);
    add_seed(rc, r->api.seed)->group(closed);
    rc->add_option("--concurrency", r->api.concurrency, "requests in flight")->check(in_range(1, 1024))
        ->capture_default_str()->group(closed);
    rc->add_option("--filter-texts", r->filter_texts, "keep only contexts seen in these watermarked texts (JSONL)")
        ->check(CLI::ExistingFile)->group(closed);
    rc->add_option("--min-count", r->min_count, "with --filter-texts: how often a context must occur there")
        ->check(in_range(1, 1e12))->capture_default_str()->group(closed);
    return {g,
            [d, c, r, rc] {
                if (rc->parsed()) return run_radioactivity(*r);
                DISTILL_ASSERT(c->parsed(), "guard: no subcommand");
                return run_detect(*d);
            },
            true};  // radioactivity's open mode runs the suspect
}

}  // namespace distill::cli
