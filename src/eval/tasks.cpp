#include "eval/tasks.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <set>
#include <sstream>

#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"
#include "util/utf8.h"

namespace distill {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

std::string task_name_of(const std::string& path) {
    std::string base = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
    for (const char* ext : {".jsonl", ".json"})
        if (base.size() > std::strlen(ext) && base.compare(base.size() - std::strlen(ext), std::string::npos, ext) == 0)
            return base.substr(0, base.size() - std::strlen(ext));
    return base;
}

}  // namespace

McTask read_mc_task(const std::string& path) {
    McTask task;
    task.path = path;
    task.name = task_name_of(path);
    std::istringstream in(read_file(path));
    std::string line;
    int64_t n = 0;
    auto bad = [&](const std::string& what) {
        return Error(str_cat(path, ":", n, ": ", what,
                             "; each line is {\"context\": \"...\", \"choices\": [\"...\", ...], \"gold\": index}"));
    };
    while (std::getline(in, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j = json::parse(line, nullptr, false);
        if (j.is_discarded()) throw bad("not JSON");
        if (!j.is_object()) throw bad("not a JSON object");
        McItem it;
        it.line = n;
        if (!j.contains("context") || !j["context"].is_string()) throw bad("no string 'context'");
        it.context = j["context"].get<std::string>();
        if (!j.contains("choices") || !j["choices"].is_array()) throw bad("no array 'choices'");
        if (j["choices"].size() < 2) throw bad(str_cat("'choices' has ", j["choices"].size(), " entries, at least 2 are needed"));
        for (size_t c = 0; c < j["choices"].size(); ++c) {
            const json& x = j["choices"][c];
            if (!x.is_string()) throw bad(str_cat("choice ", c, " is not a string"));
            if (x.get<std::string>().empty()) throw bad(str_cat("choice ", c, " is empty"));
            it.choices.push_back(x.get<std::string>());
        }
        if (!j.contains("gold") || !j["gold"].is_number_integer()) throw bad("no integer 'gold'");
        it.gold = j["gold"].get<int64_t>();
        if (it.gold < 0 || it.gold >= static_cast<int64_t>(it.choices.size()))
            throw bad(str_cat("gold ", it.gold, " is out of range (", it.choices.size(), " choices: 0 .. ",
                              it.choices.size() - 1, ")"));
        if (!utf8_valid(it.context)) throw bad("the context is not valid UTF-8");
        for (const auto& c : it.choices)
            if (!utf8_valid(c)) throw bad("a choice is not valid UTF-8");
        task.items.push_back(std::move(it));
    }
    DISTILL_CHECK(!task.items.empty(), path, " holds no task items");
    return task;
}

std::string mc_task_jsonl(const McTask& task) {
    std::string out;
    for (const auto& it : task.items) {
        ojson j = {{"context", it.context}, {"choices", it.choices}, {"gold", it.gold}};
        out += j.dump() + "\n";
    }
    return out;
}

MeanStderr mean_stderr(const std::vector<double>& xs) {
    MeanStderr r;
    if (xs.empty()) return r;
    const double n = double(xs.size());
    for (double x : xs) r.mean += x;
    r.mean /= n;
    if (xs.size() < 2) return r;
    double ss = 0;
    for (double x : xs) ss += (x - r.mean) * (x - r.mean);
    r.stderr_ = std::sqrt(ss / (n - 1)) / std::sqrt(n);
    return r;
}

json McResult::to_json() const {
    return {{"n", n},
            {"acc", acc.mean},
            {"acc_stderr", acc.stderr_},
            {"acc_norm", acc_norm.mean},
            {"acc_norm_stderr", acc_norm.stderr_},
            {"acc_bytes", acc_bytes.mean},
            {"acc_bytes_stderr", acc_bytes.stderr_},
            {"seconds", seconds},
            {"loglik", loglik}};
}

McResult eval_mc_task(Scorer& scorer, const McTask& task, const std::string& progress_label) {
    const double t0 = now_seconds();
    McResult r;
    r.task = task.name;
    r.n = static_cast<int64_t>(task.items.size());
    // every request first, so that a bad item fails before any scoring
    std::vector<LoglikRequest> reqs;
    for (const auto& it : task.items)
        for (size_t c = 0; c < it.choices.size(); ++c) {
            try {
                reqs.push_back(scorer.encode_pair(it.context, " " + it.choices[c]));
            } catch (const Error& e) {
                throw Error(str_cat(task.path, ":", it.line, ": choice ", c, ": ", e.what()));
            }
            const int64_t n = static_cast<int64_t>(reqs.back().continuation.size());
            DISTILL_CHECK(n < scorer.window().context, task.path, ":", it.line, ": choice ", c, " is ", n,
                          " tokens, which does not fit the window of ", scorer.window().context,
                          " tokens (raise --seq-len)");
        }
    std::vector<LoglikResult> got;
    Progress progress(progress_label.empty() ? "eval" : progress_label);
    const size_t chunk = 64;
    for (size_t i = 0; i < reqs.size(); i += chunk) {
        std::vector<LoglikRequest> part(reqs.begin() + static_cast<std::ptrdiff_t>(i),
                                        reqs.begin() + static_cast<std::ptrdiff_t>(std::min(reqs.size(), i + chunk)));
        auto g = scorer.loglikelihood(part);
        got.insert(got.end(), g.begin(), g.end());
        if (!progress_label.empty())
            progress.update(static_cast<int64_t>(got.size()), static_cast<int64_t>(reqs.size()), "choices");
    }
    // argmax with ties to the first, as np.argmax
    auto argmax = [](const std::vector<double>& v) {
        return static_cast<int64_t>(std::max_element(v.begin(), v.end()) - v.begin());
    };
    std::vector<double> acc, acc_norm, acc_bytes;
    size_t k = 0;
    for (const auto& it : task.items) {
        std::vector<double> ll, by_chars, by_bytes;
        for (const auto& c : it.choices) {
            const double x = got[k++].logprob;
            ll.push_back(x);
            by_chars.push_back(x / double(utf8_code_points(c).size()));
            by_bytes.push_back(x / double(c.size()));
        }
        acc.push_back(argmax(ll) == it.gold ? 1.0 : 0.0);
        acc_norm.push_back(argmax(by_chars) == it.gold ? 1.0 : 0.0);
        acc_bytes.push_back(argmax(by_bytes) == it.gold ? 1.0 : 0.0);
        r.loglik.push_back(ll);
    }
    r.acc = mean_stderr(acc);
    r.acc_norm = mean_stderr(acc_norm);
    r.acc_bytes = mean_stderr(acc_bytes);
    r.seconds = now_seconds() - t0;
    return r;
}

json lm_eval_results(const std::string& model_label, const std::string& model_args,
                     const std::vector<McTask>& tasks, const std::vector<McResult>& results) {
    ojson res = ojson::object(), configs = ojson::object(), versions = ojson::object(), nshot = ojson::object(),
          hib = ojson::object(), nsamples = ojson::object(), groups = ojson::object();
    for (size_t i = 0; i < results.size(); ++i) {
        const McResult& r = results[i];
        res[r.task] = {{"alias", r.task},
                       {"acc,none", r.acc.mean},
                       {"acc_stderr,none", r.acc.stderr_},
                       {"acc_norm,none", r.acc_norm.mean},
                       {"acc_norm_stderr,none", r.acc_norm.stderr_},
                       {"acc_bytes,none", r.acc_bytes.mean},
                       {"acc_bytes_stderr,none", r.acc_bytes.stderr_}};
        ojson metrics = ojson::array();
        for (const char* m : {"acc", "acc_norm", "acc_bytes"})
            metrics.push_back({{"metric", m}, {"aggregation", "mean"}, {"higher_is_better", true}});
        configs[r.task] = {{"task", r.task},
                           {"dataset_path", tasks[i].path},
                           {"output_type", "multiple_choice"},
                           {"doc_to_text", "{{context}}"},
                           {"doc_to_choice", "{{choices}}"},
                           {"doc_to_target", "{{gold}}"},
                           {"target_delimiter", " "},
                           {"num_fewshot", 0},
                           {"metric_list", metrics},
                           {"metadata", {{"version", 1.0}}}};
        versions[r.task] = 1.0;
        nshot[r.task] = 0;
        hib[r.task] = {{"acc", true}, {"acc_norm", true}, {"acc_bytes", true}};
        nsamples[r.task] = {{"original", r.n}, {"effective", r.n}};
        groups[r.task] = ojson::array();
    }
    ojson out = {{"results", res},
                 {"group_subtasks", groups},
                 {"configs", configs},
                 {"versions", versions},
                 {"n-shot", nshot},
                 {"higher_is_better", hib},
                 {"n-samples", nsamples},
                 {"config", {{"model", "distill"},
                             {"model_args", model_args},
                             {"model_name", model_label},
                             {"batch_size", 1},
                             {"limit", nullptr},
                             {"bootstrap_iters", 0}}},
                 {"model_name", model_label},
                 {"date", static_cast<double>(std::time(nullptr))}};
    return json::parse(out.dump());
}

std::vector<std::string> split_sentences(const std::string& text) {
    std::vector<std::string> out;
    std::string cur;
    auto flush = [&] {
        while (!cur.empty() && cur.back() == ' ') cur.pop_back();
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
    };
    for (size_t i = 0; i < text.size(); ++i) {
        const char ch = text[i];
        if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r') {
            if (!cur.empty() && cur.back() != ' ') cur.push_back(' ');
            continue;
        }
        cur.push_back(ch);
        if (ch == '.' || ch == '!' || ch == '?') {
            size_t j = i + 1;
            while (j < text.size() && (text[j] == '"' || text[j] == '\'' || text[j] == ')')) cur.push_back(text[j++]);
            if (j >= text.size() || text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r') {
                flush();
            }
            i = j - 1;
        }
    }
    flush();
    return out;
}

McTask builtin_next_sentence_task(const std::string& text, const BuiltinTaskOptions& o, const std::string& source) {
    DISTILL_CHECK(o.items >= 1 && o.passage_sentences >= 1 && o.choices >= 2, "bad built-in task options");
    const auto sents = split_sentences(text);
    const int64_t S = static_cast<int64_t>(sents.size());
    auto usable = [&](int64_t i) {
        const int64_t n = static_cast<int64_t>(sents[i].size());
        return n >= o.min_chars && n <= o.max_chars;
    };
    std::vector<int64_t> cand;
    for (int64_t i = o.passage_sentences; i < S; ++i)
        if (usable(i)) cand.push_back(i);
    int64_t pool = 0;  // sentences a distractor may be drawn from
    for (int64_t i = 0; i < S; ++i) pool += usable(i);
    DISTILL_CHECK(static_cast<int64_t>(cand.size()) >= 1 && pool > o.choices + 2 * o.passage_sentences + 2,
                  "the text has too few sentences (", S, ", ", cand.size(), " usable) for the built-in task");
    // a seeded Fisher-Yates shuffle with plain modulo draws: the same on every platform
    std::mt19937_64 rng(o.seed);
    for (size_t i = cand.size(); i > 1; --i) std::swap(cand[i - 1], cand[rng() % i]);
    cand.resize(std::min<size_t>(cand.size(), static_cast<size_t>(o.items)));
    std::sort(cand.begin(), cand.end());
    McTask task;
    task.name = "next_sentence";
    task.path = source.empty() ? "builtin:next_sentence" : source;
    for (int64_t i : cand) {
        McItem it;
        for (int64_t k = i - o.passage_sentences; k < i; ++k) it.context += (it.context.empty() ? "" : " ") + sents[k];
        std::set<std::string> used = {sents[i]};
        std::vector<std::string> distractors;
        for (int tries = 0; tries < 1000 && static_cast<int64_t>(distractors.size()) < o.choices - 1; ++tries) {
            const int64_t d = static_cast<int64_t>(rng() % static_cast<uint64_t>(S));
            if (std::llabs(d - i) <= o.passage_sentences + 1 || !usable(d) || used.count(sents[d])) continue;
            used.insert(sents[d]);
            distractors.push_back(sents[d]);
        }
        if (static_cast<int64_t>(distractors.size()) < o.choices - 1) continue;
        it.gold = static_cast<int64_t>(rng() % static_cast<uint64_t>(o.choices));
        it.choices = distractors;
        it.choices.insert(it.choices.begin() + it.gold, sents[i]);
        task.items.push_back(std::move(it));
    }
    DISTILL_CHECK(!task.items.empty(), "the text has too few distinct sentences for the built-in task");
    return task;
}

}  // namespace distill
