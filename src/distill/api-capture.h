// distill — capturing a teacher through an OpenAI-compatible API: prompts in, the teacher's
// completions (and, where the endpoint gives them, the top log-probs of each token) out, into a
// dataset directory that survives kill -9 and resumes. docs/api-capture.md has the format.
//
//   DATASET/meta.json       the teacher (URL, model), the settings, the prompts' hash; totals
//   DATASET/samples.jsonl   one line per finished sample, appended and fsynced one by one
//   DATASET/failed.jsonl    the samples the last run gave up on (the next run retries them)
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace distill {

struct ApiCaptureOptions {
    std::string url;          // the API's base, e.g. http://127.0.0.1:8000/v1 or https://host/v1
    std::string api_key;      // sent as a Bearer token when not empty; never stored
    std::string model;        // empty: the first model GET /models lists
    std::string prompts;      // JSONL: a string, {"prompt": text} or {"messages": [...]} per line
    std::string out;          // dataset directory (created, or resumed)
    int64_t concurrency = 4;  // requests in flight
    int64_t samples = 1;      // samples per prompt
    int64_t max_tokens = 128;
    double temperature = 1.0, top_p = 1.0;
    uint64_t seed = 0;         // sample s of prompt p is asked for with seed + p * samples + s
    int64_t top_logprobs = 20; // asked for when the endpoint gives them (0 = never ask)
    // text prompts only: ask the legacy completions endpoint to echo the prompt with its
    // log-probs (`echo: true`), so the teacher's distribution on the prompt text is kept too
    // (with max_tokens 0 the prompts are scored and nothing is generated)
    bool score_prompts = false;
    int64_t max_teacher_tokens = 0;  // stop starting requests once the API reported this many (0 = no cap)
    int retries = 8;           // attempts after the first, per sample
    double timeout_s = 60;     // per request
    double backoff_s = 0.5, backoff_max_s = 30;  // exponential back-off with jitter
    bool progress = true;
};

struct ApiCaptureResult {
    int64_t total = 0;          // samples asked for (prompts x samples)
    int64_t done_before = 0;    // already in the dataset when this run began
    int64_t written = 0;        // finished by this run
    int64_t failed = 0;         // given up on by this run (in failed.jsonl)
    int64_t remaining = 0;      // not attempted (the token cap was reached)
    int64_t requests = 0;       // HTTP requests sent, retries included
    int64_t teacher_tokens = 0; // prompt + completion tokens the API reported, all runs
    bool logprobs = false;      // the endpoint returned log-probs
    std::map<std::string, int64_t> errors;  // by kind: status_429, status_5xx, timeout, ...
    double seconds = 0;
    nlohmann::json to_json() const;
};

ApiCaptureResult capture_from_api(const ApiCaptureOptions& opts);

// One sample line of samples.jsonl, read back (for training and tests).
struct ApiSample {
    int64_t prompt_index = 0, sample = 0;
    nlohmann::json record;
    uint64_t line_hash = 0;  // XXH3_64 of the line as stored (without its newline)
};
// What of each record to build.
enum class ApiFields {
    kAll,
    kNoLogprobs,  // the record without "logprobs" and "prompt_logprobs" (most of a dataset's bytes)
    kNone,        // prompt_index and sample alone (the rest of the line is still checked to be JSON)
};
// Each sample line of a dataset in the order the lines were written (a torn last line ends it),
// one at a time: neither the file nor its records are held in memory (a dataset with top-20
// log-probs takes about ten times its size as parsed JSON).
void for_each_api_sample(const std::string& dir, const std::function<void(ApiSample&&)>& fn,
                         ApiFields fields = ApiFields::kAll);
// The samples of a dataset, ordered by (prompt_index, sample).
std::vector<ApiSample> read_api_dataset(const std::string& dir);

}  // namespace distill
