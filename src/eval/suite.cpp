#include "eval/suite.h"

#include <torch/torch.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>

#include "eval/agreement.h"
#include "eval/ledger.h"
#include "model/generate.h"
#include "pipeline/pipeline.h"
#include "tokenizer/load.h"
#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::vector<std::string>& eval_sample_prompts() {
    static const std::vector<std::string> p = {"It is a truth universally acknowledged", "She said that",
                                               "The house was"};
    return p;
}

namespace {

std::string label_of(const EvalModelSpec& m) {
    if (!m.url.empty()) return m.url;
    fs::path p(m.path);
    while (!p.empty() && p.filename().empty()) p = p.parent_path();
    if (p.filename() == "model" && p.has_parent_path() && !p.parent_path().filename().empty())
        return p.parent_path().filename().string();
    return p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
}

struct Entry {
    EvalModelSpec spec;
    std::string label;
    LoadedModel local;  // when spec.path is set
    std::unique_ptr<Scorer> scorer;
    json row;
};

// (baseline - x) / (baseline - teacher), in percent; null when the gap is zero
json recovered(double x, double baseline, double teacher) {
    const double gap = baseline - teacher;
    if (!std::isfinite(gap) || std::fabs(gap) < 1e-12) return nullptr;
    return 100.0 * (baseline - x) / gap;
}

}  // namespace

json run_eval_suite(const EvalSuiteOptions& o) {
    DISTILL_CHECK(!o.models.empty(), "no model to evaluate");
    // tasks first: a bad task file fails before any model is loaded
    std::vector<McTask> tasks;
    for (const auto& t : o.tasks) tasks.push_back(read_mc_task(t));
    if (o.builtin_task) {
        DISTILL_CHECK(!o.builtin_text.empty(), "the built-in task needs a text (--text or --builtin-text)");
        tasks.push_back(builtin_next_sentence_task(read_file(o.builtin_text), o.builtin, o.builtin_text));
    }
    std::map<std::string, int> names;
    for (auto& t : tasks)
        if (names[t.name]++) t.name += "_" + std::to_string(names[t.name]);
    const std::string text = o.text.empty() ? std::string() : read_file(o.text);

    std::vector<Entry> entries;
    std::map<std::string, int> labels;
    int teacher = -1, baseline = -1;
    for (const auto& spec : o.models) {
        Entry e;
        e.spec = spec;
        e.label = label_of(spec);
        if (labels[e.label]++) e.label += "#" + std::to_string(labels[e.label]);
        if (spec.role == "teacher") teacher = static_cast<int>(entries.size());
        if (spec.role == "baseline") baseline = static_cast<int>(entries.size());
        entries.push_back(std::move(e));
    }

    for (Entry& e : entries) {
        json& row = e.row;
        row["label"] = e.label;
        row["role"] = e.spec.role;
        if (!e.spec.url.empty()) {
            DISTILL_CHECK(!e.spec.tokenizer.empty(), "--model-url ", e.spec.url,
                          " needs the endpoint model's tokenizer (--url-tokenizer): prompts are sent as token ids, "
                          "as lm-evaluation-harness does");
            RemoteOptions ro = o.remote;
            ro.url = e.spec.url;
            e.scorer = make_remote_scorer(ro, load_tokenizer(e.spec.tokenizer), o.window);
            row["model"] = e.spec.url;
            row["kind"] = "remote";
        } else {
            e.local = load_model_for_inference(e.spec.path);
            DISTILL_CHECK(e.local.has_tokenizer, e.spec.path, " has no tokenizer");
            e.scorer = make_local_scorer(e.local, o.window);
            row["model"] = e.spec.path;
            row["kind"] = "local";
        }
        if (!text.empty()) {
            auto r = e.scorer->loglikelihood_rolling(text);
            row["bits_per_byte"] = r.nats / std::log(2.0) / double(text.size());
            row["nats_per_token"] = r.tokens ? r.nats / double(r.tokens) : 0.0;
            row["tokens"] = r.tokens;
            row["bytes"] = static_cast<int64_t>(text.size());
        }
        std::vector<McResult> results;
        json tj = json::object();
        for (const auto& t : tasks) {
            results.push_back(eval_mc_task(*e.scorer, t, str_cat(e.label, " ", t.name)));
            tj[t.name] = results.back().to_json();
        }
        row["tasks"] = tj;
        if (!o.lm_eval_out.empty() && !tasks.empty()) {
            std::string dir = e.label;
            for (char& c : dir)
                if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') c = '_';
            dir = path_join(o.lm_eval_out, dir);
            make_dirs(dir);
            const std::string args = e.spec.url.empty() ? "pretrained=" + e.spec.path : "base_url=" + e.spec.url;
            write_file_atomic(path_join(dir, "results.json"), lm_eval_results(e.label, args, tasks, results).dump(2) + "\n");
            row["lm_eval_results"] = path_join(dir, "results.json");
        }
        // generation samples (local models), seeded
        json samples = json::array();
        if (e.local.model) {
            const auto& prompts = eval_sample_prompts();
            for (int64_t i = 0; i < std::min<int64_t>(o.samples, static_cast<int64_t>(prompts.size())); ++i) {
                SamplingOptions so;
                so.temperature = 0.8;
                so.top_k = 40;
                so.seed = o.seed + static_cast<uint64_t>(i);
                so.max_new_tokens = o.sample_tokens;
                so.stop_ids = e.local.config.stop_ids();
                auto ids = generate(e.local.model, encode_for_eval(e.local.tokenizer, prompts[i]), so);
                std::vector<int32_t> v(ids.begin(), ids.end());
                samples.push_back({{"prompt", prompts[i]}, {"text", e.local.tokenizer.decode(v, true)}, {"seed", so.seed}});
            }
        }
        row["samples"] = samples;
        json cost = e.local.model ? cost_ledger(e.spec.path, e.local.config, o.window.context) : json::object();
        cost["inference_tokens_per_s"] =
            e.scorer->scoring_seconds > 0 ? double(e.scorer->scored_tokens) / e.scorer->scoring_seconds : 0.0;
        cost["scored_tokens"] = e.scorer->scored_tokens;
        row["cost"] = cost;
        row["seconds"] = e.scorer->scoring_seconds;
    }

    // against the teacher: agreement on the held-out text, cost per generated token
    if (teacher >= 0) {
        Entry& t = entries[teacher];
        for (int i = 0; i < static_cast<int>(entries.size()); ++i) {
            Entry& e = entries[i];
            json& cost = e.row["cost"];
            if (i != teacher && e.local.model && t.local.model && !text.empty())
                e.row["agreement"] = eval_agreement(t.local, e.local, text, o.window).to_json();
            if (i == teacher) e.row["agreement"] = {{"top1_agreement", 1.0}, {"kl_to_teacher", 0.0}};
            const double tt = t.row["cost"]["inference_tokens_per_s"].get<double>();
            const double et = cost["inference_tokens_per_s"].get<double>();
            cost["measured_cost_fraction_of_teacher"] = tt > 0 && et > 0 ? json(tt / et) : json(nullptr);
            if (cost.contains("forward_flops_per_token") && t.row["cost"].contains("forward_flops_per_token"))
                cost["flops_fraction_of_teacher"] = cost["forward_flops_per_token"].get<double>() /
                                                    t.row["cost"]["forward_flops_per_token"].get<double>();
        }
    }
    // teacher recovered % for each metric the teacher and the baseline both have
    if (teacher >= 0 && baseline >= 0) {
        auto metrics = [&](const json& row) {
            std::map<std::string, double> m;
            if (row.contains("bits_per_byte")) m["bits_per_byte"] = row["bits_per_byte"].get<double>();
            for (auto& [name, r] : row["tasks"].items())
                for (const char* k : {"acc", "acc_norm", "acc_bytes"}) m[name + "." + k] = r[k].get<double>();
            if (row.contains("agreement"))
                for (const char* k : {"top1_agreement", "kl_to_teacher"}) m[k] = row["agreement"][k].get<double>();
            return m;
        };
        const auto tm = metrics(entries[teacher].row), bm = metrics(entries[baseline].row);
        for (int i = 0; i < static_cast<int>(entries.size()); ++i) {
            if (i == teacher) continue;
            json rec = json::object();
            for (const auto& [k, x] : metrics(entries[i].row))
                if (tm.count(k) && bm.count(k)) rec[k] = recovered(x, bm.at(k), tm.at(k));
            entries[i].row["recovered_pct"] = rec;
        }
    }

    json out = {{"models", json::array()}, {"text", o.text.empty() ? json(nullptr) : json(o.text)}};
    out["teacher"] = teacher >= 0 ? json(entries[teacher].label) : json(nullptr);
    out["baseline"] = baseline >= 0 ? json(entries[baseline].label) : json(nullptr);
    json tl = json::array();
    for (const auto& t : tasks) tl.push_back({{"name", t.name}, {"path", t.path}, {"n", t.items.size()}});
    out["tasks"] = tl;
    for (auto& e : entries) out["models"].push_back(e.row);
    return out;
}

}  // namespace distill
