// distill — multiple-choice tasks with lm-evaluation-harness's conventions: JSONL items
// {"context", "choices", "gold"}, each choice scored as the log-likelihood of " " + choice after
// the context; acc, acc_norm (by characters), acc_bytes (by UTF-8 bytes), each with lm-eval's
// mean_stderr; results also in lm-eval's results JSON shape. And the built-in task made from a
// held-out text: pick a passage's true next sentence among four. docs/eval.md.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/scorer.h"

namespace distill {

struct McItem {
    std::string context;
    std::vector<std::string> choices;
    int64_t gold = 0;
    int64_t line = 0;  // 1-based line of the task file (0 for built-in items)
};

struct McTask {
    std::string name;  // the file's stem, or "next_sentence"
    std::string path;  // where it came from
    std::vector<McItem> items;
};

// Reads a JSONL task file; a line that is not an object with a string `context`, a non-empty
// array of non-empty strings `choices` and an integer `gold` in range is an Error naming
// "path:line". Blank lines are skipped; an empty file is an Error.
McTask read_mc_task(const std::string& path);
// The task as JSONL (one item a line, keys context / choices / gold).
std::string mc_task_jsonl(const McTask& task);

struct MeanStderr {
    double mean = 0, stderr_ = 0;  // stderr: sample standard deviation (n - 1) / sqrt(n)
};
MeanStderr mean_stderr(const std::vector<double>& xs);

struct McResult {
    std::string task;
    int64_t n = 0;
    MeanStderr acc, acc_norm, acc_bytes;
    std::vector<std::vector<double>> loglik;  // per item, per choice (nats)
    double seconds = 0;
    nlohmann::json to_json() const;
};

// Scores every choice of every item. A continuation longer than the scorer's window is an Error
// naming the file and line; a context too long is cut from the left (Scorer::loglikelihood).
McResult eval_mc_task(Scorer& scorer, const McTask& task, const std::string& progress_label = "");

// lm-eval's results file for one model: results.<task>["acc,none"], ["acc_stderr,none"], ...,
// with configs, versions, n-shot, higher_is_better, n-samples and config.
nlohmann::json lm_eval_results(const std::string& model_label, const std::string& model_args,
                               const std::vector<McTask>& tasks, const std::vector<McResult>& results);

struct BuiltinTaskOptions {
    int64_t items = 1000;           // items asked for (fewer when the text has too few sentences)
    int64_t passage_sentences = 3;  // sentences in each passage
    int64_t choices = 4;            // the true next sentence and choices - 1 distractors
    int64_t min_chars = 20, max_chars = 300;  // sentences shorter or longer are never used
    uint64_t seed = 0;
};
// The sentences of a text: split after . ! ? (with closing quotes) followed by whitespace,
// whitespace runs collapsed to one space, trimmed.
std::vector<std::string> split_sentences(const std::string& text);
// The built-in "next_sentence" task (docs/eval.md has the construction).
McTask builtin_next_sentence_task(const std::string& text, const BuiltinTaskOptions& o,
                                  const std::string& source = "");

}  // namespace distill
