// distill — the evaluation suite: every model (local, or remote through an OpenAI-compatible API)
// through the same scorer: bits per byte on held-out text, multiple-choice tasks, agreement with
// a teacher, seeded generation samples, a cost ledger and teacher recovered %. docs/eval.md.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/scorer.h"
#include "eval/tasks.h"

namespace distill {

struct EvalModelSpec {
    std::string path;       // a local model (HF directory or .gguf), or
    std::string url;        // an OpenAI-compatible API base (…/v1)
    std::string tokenizer;  // for a URL: the endpoint model's tokenizer (a tokenizer.json, model dir or .gguf)
    std::string role;       // "model", "teacher" or "baseline"
};

struct EvalSuiteOptions {
    std::vector<EvalModelSpec> models;
    std::string text;                 // held-out text (bits per byte, agreement); may be empty
    std::vector<std::string> tasks;   // JSONL task files
    bool builtin_task = false;        // add the built-in next_sentence task, made from builtin_text
    std::string builtin_text;
    BuiltinTaskOptions builtin;
    WindowOptions window;
    RemoteOptions remote;             // retries, timeouts, key (the URL comes from each model)
    int64_t samples = 3;              // generation samples (local models), one per fixed prompt
    int64_t sample_tokens = 32;
    uint64_t seed = 0;
    std::string lm_eval_out;          // a directory: one lm-eval results.json per model
};

// The fixed prompts of the generation samples.
const std::vector<std::string>& eval_sample_prompts();

nlohmann::json run_eval_suite(const EvalSuiteOptions& o);

}  // namespace distill
