// distill eval — every model through one scorer (docs/eval.md): bits per byte on held-out text,
// multiple-choice tasks (lm-evaluation-harness conventions and results JSON), agreement with a
// teacher, generation samples, the cost ledger and teacher recovered %, as JSON.
#include <algorithm>
#include <cstdio>

#include "cli.h"
#include "eval/suite.h"
#include "util/file.h"

namespace distill::cli {

namespace {
struct Options {
    std::vector<std::string> models, urls, url_tokenizers, tasks;
    std::string teacher, baseline, text, builtin_text, write_builtin, out, lm_eval_out;
    bool builtin = false;
    EvalSuiteOptions suite;
};

int run(Options& o, bool stride_given) {
    EvalSuiteOptions& s = o.suite;
    // a --seq-len below the default stride, without --stride: half the window
    if (!stride_given && s.window.stride > s.window.context) s.window.stride = std::max<int64_t>(1, s.window.context / 2);
    DISTILL_USAGE(s.window.stride <= s.window.context, "--stride ", s.window.stride, " must not exceed --seq-len ",
                  s.window.context);
    const std::string builtin_text = o.builtin_text.empty() ? o.text : o.builtin_text;
    s.builtin.seed = s.seed;
    if (!o.write_builtin.empty()) {
        DISTILL_USAGE(!builtin_text.empty(), "--write-builtin-task needs --text (or --builtin-text)");
        McTask t = builtin_next_sentence_task(read_file(builtin_text), s.builtin, builtin_text);
        write_file_atomic(o.write_builtin, mc_task_jsonl(t));
        std::fprintf(stderr, "eval: wrote %zu items of the built-in task to %s\n", t.items.size(),
                     o.write_builtin.c_str());
        if (o.models.empty() && o.urls.empty() && o.teacher.empty() && o.baseline.empty()) return 0;
    }
    DISTILL_USAGE(!o.models.empty() || !o.urls.empty() || !o.teacher.empty(),
                  "eval needs a model: --model, --model-url or --teacher");
    DISTILL_USAGE(o.url_tokenizers.size() <= 1 || o.url_tokenizers.size() == o.urls.size(),
                  "give one --url-tokenizer for all --model-url, or one per --model-url (", o.urls.size(), ")");
    DISTILL_USAGE(!o.text.empty() || !o.tasks.empty() || o.builtin,
                  "nothing to evaluate: give --text, --tasks or --builtin-task");
    DISTILL_USAGE(o.baseline.empty() || !o.teacher.empty(), "--baseline is compared through a --teacher: give one");
    auto add = [&](const std::string& path, const std::string& role) {
        for (auto& m : s.models)
            if (m.url.empty() && m.path == path) {
                if (role != "model") m.role = role;
                return;
            }
        s.models.push_back({path, "", "", role});
    };
    if (!o.teacher.empty()) add(o.teacher, "teacher");
    for (const auto& m : o.models) add(m, "model");
    if (!o.baseline.empty()) add(o.baseline, "baseline");
    for (size_t i = 0; i < o.urls.size(); ++i)
        s.models.push_back({"", o.urls[i],
                            o.url_tokenizers.empty() ? "" : o.url_tokenizers[o.url_tokenizers.size() == 1 ? 0 : i],
                            "model"});
    s.text = o.text;
    s.tasks = o.tasks;
    s.builtin_task = o.builtin;
    s.builtin_text = builtin_text;
    s.lm_eval_out = o.lm_eval_out;
    nlohmann::json out = run_eval_suite(s);
    // the single-model form keeps its flat keys (model, text, bits_per_byte, ...)
    if (out["models"].size() == 1 && !o.text.empty()) {
        const auto& m = out["models"][0];
        for (const char* k : {"model", "bits_per_byte", "nats_per_token", "tokens", "bytes", "seconds"}) out[k] = m[k];
    }
    std::printf("%s\n", out.dump().c_str());
    if (!o.out.empty()) write_file_atomic(o.out, out.dump(2) + "\n");
    return 0;
}
}  // namespace

Command add_eval(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand(
        "eval", "score models side by side: bits per byte, multiple-choice tasks, agreement with a teacher, cost");
    c->add_option("-m,--model", o->models, "a model directory (HF layout) or a .gguf file (repeat for more)");
    c->add_option("--teacher", o->teacher, "the teacher (local): agreement, cost fraction and recovered % against it");
    c->add_option("--baseline", o->baseline, "a same-size model trained without the teacher (teacher recovered %)");
    c->add_option("--model-url", o->urls, "an OpenAI-compatible API base (e.g. http://127.0.0.1:8000/v1; repeat)");
    c->add_option("--url-tokenizer", o->url_tokenizers,
                  "the tokenizer of the --model-url model (one for all, or one per URL): prompts go as token ids")
        ->check(CLI::ExistingPath);
    c->add_option("--api-key", o->suite.remote.api_key, "Bearer key for --model-url")->envname("DISTILL_API_KEY");
    c->add_option("--retries", o->suite.remote.retries, "attempts after the first on 429 / 5xx / timeouts")
        ->check(in_range(0, 100))->capture_default_str();
    c->add_option("--timeout", o->suite.remote.timeout_s, "seconds per API request")
        ->check(above_up_to(0, 86400))->capture_default_str();
    add_text(c, o->text);
    c->add_option("--tasks", o->tasks, "multiple-choice task JSONL files ({context, choices, gold} per line)")
        ->check(CLI::ExistingFile);
    c->add_flag("--builtin-task", o->builtin, "add the built-in next-sentence task, made from --text");
    c->add_option("--builtin-text", o->builtin_text, "make the built-in task from this text instead of --text")
        ->check(CLI::ExistingFile);
    c->add_option("--builtin-items", o->suite.builtin.items, "items of the built-in task")
        ->check(in_range(1, 1e7))->capture_default_str();
    c->add_option("--write-builtin-task", o->write_builtin, "write the built-in task as JSONL to this file");
    add_seed(c, o->suite.seed);
    c->add_option("--samples", o->suite.samples, "generation samples per local model (fixed prompts, seeded)")
        ->check(in_range(0, 3))->capture_default_str();
    c->add_option("--sample-tokens", o->suite.sample_tokens, "tokens per generation sample")
        ->check(in_range(1, 4096))->capture_default_str();
    add_window_flags(c, o->suite.window);
    c->add_option("-o,--out", o->out, "also write the result to this JSON file");
    c->add_option("--lm-eval-out", o->lm_eval_out, "write lm-evaluation-harness results (DIR/<model>/results.json)");
    return {c, [o, c] { return run(*o, c->count("--stride") > 0); }};
}

}  // namespace distill::cli
