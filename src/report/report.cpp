// distill report (docs/report.md): reads demo runs, training runs and eval results, merges them
// into one JSON document, and renders it as Markdown and as a self-contained HTML page whose
// script draws the tables and the Chart.js charts from that same JSON.
#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"

namespace distill {

// The Chart.js bundle (Debian's libjs-chart.js), embedded at build time by cmake/embed.cmake.
extern const unsigned char kChartJs[];
extern const size_t kChartJs_size;

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int kReportVersion = 1;

std::string chart_js() { return std::string(reinterpret_cast<const char*>(kChartJs), kChartJs_size); }

// "3.9.1", from the bundle's banner ("Chart.js v3.9.1")
std::string chart_js_version() {
    const std::string head = chart_js().substr(0, 200);
    const size_t at = head.find("Chart.js v");
    if (at == std::string::npos) return "unknown";
    size_t end = at + 10;
    while (end < head.size() && (std::isdigit(static_cast<unsigned char>(head[end])) || head[end] == '.')) ++end;
    return head.substr(at + 10, end - at - 10);
}

// ---- reading, with errors that name the file and the key --------------------------------------

// j[key] when it is a number; null when absent or null; an Error when it is something else.
json num(const json& j, const std::string& key, const std::string& where) {
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return nullptr;
    DISTILL_CHECK(j[key].is_number(), where, ": \"", key, "\" is ", j[key].type_name(), ", not a number");
    return j[key];
}

json str(const json& j, const std::string& key, const std::string& where) {
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return nullptr;
    DISTILL_CHECK(j[key].is_string(), where, ": \"", key, "\" is ", j[key].type_name(), ", not a string");
    return j[key];
}

const json& obj(const json& j, const std::string& key, const std::string& where) {
    static const json empty = json::object();
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return empty;
    DISTILL_CHECK(j[key].is_object(), where, ": \"", key, "\" is ", j[key].type_name(), ", not an object");
    return j[key];
}

std::string base_name(const std::string& path) {
    fs::path p(path);
    while (!p.empty() && p.filename().empty()) p = p.parent_path();
    const std::string b = p.filename().string();
    return b.empty() || b == "." ? fs::absolute(p).lexically_normal().filename().string() : b;
}

std::string canonical(const std::string& path) {
    std::error_code ec;
    const fs::path c = fs::weakly_canonical(path, ec);
    return ec ? path : c.string();
}

// A training run's curves from its metrics.jsonl: the training loss from every line, held-out
// bits per byte from the lines that have "heldout_bpb". A line that is not an object with an
// integer step is an Error naming FILE:LINE, except an unterminated last line, which a running
// trainer may be halfway through writing: it is left out.
json read_curve(const std::string& run_dir) {
    const std::string path = path_join(run_dir, "metrics.jsonl");
    const std::string text = read_file(path);
    json loss = json::array(), heldout = json::array();
    size_t pos = 0;
    int64_t line_no = 0;
    while (pos < text.size()) {
        const size_t nl = text.find('\n', pos);
        const bool unterminated = nl == std::string::npos;
        const std::string line = text.substr(pos, unterminated ? std::string::npos : nl - pos);
        pos = unterminated ? text.size() : nl + 1;
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const json j = json::parse(line, nullptr, false);
        if (unterminated && j.is_discarded()) break;
        const std::string where = str_cat(path, ":", line_no);
        DISTILL_CHECK(!j.is_discarded() && j.is_object(), where, ": not a JSON object");
        DISTILL_CHECK(j.contains("step") && j["step"].is_number_integer(), where, ": no integer \"step\"");
        const int64_t step = j["step"].get<int64_t>();
        const json l = num(j, "loss", where), h = num(j, "heldout_bpb", where);
        if (!l.is_null()) loss.push_back({step, l});
        if (!h.is_null()) heldout.push_back({step, h});
    }
    return {{"metrics", path},
            {"loss", loss},
            {"heldout_bpb", heldout},
            {"steps", loss.empty() ? json(nullptr) : loss.back()[0]},
            {"final_loss", loss.empty() ? json(nullptr) : loss.back()[1]},
            {"heldout_points", heldout.size()},
            {"final_heldout_bpb", heldout.empty() ? json(nullptr) : heldout.back()[1]}};
}

// (baseline - x) / (baseline - teacher) in percent, as `distill eval` computes it; null when
// the gap is zero or a value is missing
json recovered_pct(const json& x, const json& baseline, const json& teacher) {
    if (!x.is_number() || !baseline.is_number() || !teacher.is_number()) return nullptr;
    const double gap = baseline.get<double>() - teacher.get<double>();
    if (!std::isfinite(gap) || std::fabs(gap) < 1e-12) return nullptr;
    return 100.0 * (baseline.get<double>() - x.get<double>()) / gap;
}

// binomial standard error of an agreement rate over n positions (positions are not independent,
// so this is a lower bound on the real uncertainty)
json agreement_stderr(const json& p, const json& n) {
    if (!p.is_number() || !n.is_number() || n.get<double>() < 1) return nullptr;
    const double q = p.get<double>();
    return std::sqrt(std::max(0.0, q * (1 - q)) / n.get<double>());
}

// ---- the report being built ---------------------------------------------------------------------

class Builder {
public:
    json models = json::array(), curves = json::array(), task_results = json::array(),
         recovered = json::array(), ledger = json::array(), summary = json::array(),
         samples = json::array(), notes = json::array(), inputs = json::array();
    std::vector<std::string> task_names;

    // A model row with every column present (null where the input does not say).
    json& add_model(const std::string& name, const std::string& role, const std::string& source) {
        json row = {{"name", unique(name, source, model_names_)}, {"role", role}, {"source", source}};
        for (const char* k : {"params", "bpb", "top1_agreement", "top1_agreement_stderr", "agreement_positions",
                              "kl_to_teacher", "train_seconds", "train_tokens", "teacher_tokens", "run_dir"})
            row[k] = nullptr;
        models.push_back(row);
        return models.back();
    }

    // The curves of a run directory once, however many inputs name it.
    void add_curve(const std::string& name, const std::string& source, const std::string& run_dir, bool required) {
        if (!required && !file_exists(path_join(run_dir, "metrics.jsonl"))) {
            notes.push_back(str_cat(name, " (", source, "): no training curves, ", path_join(run_dir, "metrics.jsonl"),
                                    " is missing"));
            return;
        }
        if (!curve_dirs_.insert(canonical(run_dir)).second) return;
        json c = {{"name", unique(name, source, curve_names_)}, {"source", source}, {"run_dir", run_dir}};
        c.update(read_curve(run_dir));
        curves.push_back(c);
    }

    void add_ledger(const json& row) {
        json r = row;
        for (const char* k : {"params", "weight_bytes", "forward_flops_per_token", "train_steps", "train_tokens",
                              "train_flops", "train_seconds", "teacher_tokens", "inference_tokens_per_s",
                              "flops_fraction_of_teacher", "measured_cost_fraction_of_teacher", "run_kind"})
            if (!r.contains(k)) r[k] = nullptr;
        ledger.push_back(r);
    }

    void add_fact(const std::string& source, const std::string& label, const json& value, const std::string& fmt) {
        summary.push_back({{"source", source}, {"label", label}, {"value", value}, {"fmt", fmt}});
    }

    void add_task_name(const std::string& t) {
        if (std::find(task_names.begin(), task_names.end(), t) == task_names.end()) task_names.push_back(t);
    }

    // A label for an input: its base name, or the path as given when two inputs share one.
    std::string source_label(const std::string& path) {
        std::string s = base_name(path);
        if (!source_names_.insert(s).second) s = path;
        source_names_.insert(s);
        return s;
    }

private:
    // names stay unique across inputs: a repeat gets its source in brackets
    static std::string unique(const std::string& name, const std::string& source, std::set<std::string>& seen) {
        std::string n = name;
        if (seen.count(n)) n = str_cat(name, " [", source, "]");
        for (int i = 2; seen.count(n); ++i) n = str_cat(name, " [", source, " #", i, "]");
        seen.insert(n);
        return n;
    }
    std::set<std::string> model_names_, curve_names_, curve_dirs_, source_names_;
};

bool is_eval_result(const json& j) {
    return j.is_object() && j.contains("models") && j["models"].is_array() && !j["models"].empty() &&
           j["models"][0].is_object() && j["models"][0].contains("label");
}

bool is_demo_report(const json& j) {
    return j.is_object() && j.contains("models") && j["models"].is_array() && !j["models"].empty() &&
           j["models"][0].is_object() && j["models"][0].contains("name") && !j.contains("report_version");
}

// A demo row's run directory: the demo records absolute (or cwd-relative) paths; when the demo
// directory was moved, the same <group>/<name> inside it.
std::string demo_run_dir(const std::string& demo_dir, const std::string& recorded) {
    const fs::path p(recorded);
    const std::string inside = path_join(demo_dir, (p.parent_path().filename() / p.filename()).string());
    return dir_exists(inside) ? inside : recorded;
}

void add_demo(Builder& b, const std::string& dir, const std::string& file, const json& r) {
    const std::string source = b.source_label(dir);
    b.inputs.push_back({{"path", dir}, {"kind", "demo"}, {"label", source}});
    const json positions = num(obj(r, "corpus", file), "heldout_tokens", file + ": corpus");
    std::vector<size_t> rows;
    for (size_t i = 0; i < r["models"].size(); ++i) {
        const json& m = r["models"][i];
        const std::string where = str_cat(file, ": models[", i, "]");
        DISTILL_CHECK(m.is_object(), where, " is not an object");
        const json name = str(m, "name", where);
        DISTILL_CHECK(name.is_string(), where, " has no \"name\"");
        const std::string n = name.get<std::string>();
        json& row = b.add_model(n, n == "teacher" ? "teacher" : n == "student_baseline" ? "baseline" : "student", source);
        for (const char* k : {"params", "bpb", "top1_agreement", "kl_to_teacher", "train_seconds", "train_tokens",
                              "teacher_tokens"})
            row[k] = num(m, k, where);
        if (n != "teacher") {
            row["agreement_positions"] = positions;
            row["top1_agreement_stderr"] = agreement_stderr(row["top1_agreement"], positions);
        }
        const json rd = str(m, "run_dir", where);
        if (n == "teacher")
            row["run_dir"] = path_join(dir, "teacher");
        else if (rd.is_string())
            row["run_dir"] = demo_run_dir(dir, rd.get<std::string>());
        b.add_ledger({{"model", row["name"]},
                      {"source", source},
                      {"params", row["params"]},
                      {"train_tokens", row["train_tokens"]},
                      {"train_seconds", row["train_seconds"]},
                      {"teacher_tokens", row["teacher_tokens"]}});
        rows.push_back(b.models.size() - 1);
    }
    // teacher recovered % of each student, against this demo's teacher and baseline
    const json* teacher = nullptr;
    const json* baseline = nullptr;
    for (size_t i : rows) {
        if (b.models[i]["role"] == "teacher") teacher = &b.models[i];
        if (b.models[i]["role"] == "baseline") baseline = &b.models[i];
    }
    if (teacher && baseline)
        for (size_t i : rows) {
            const json& m = b.models[i];
            if (m["role"] != "student") continue;
            for (const char* k : {"bpb", "top1_agreement", "kl_to_teacher"})
                b.recovered.push_back({{"model", m["name"]},
                                       {"source", source},
                                       {"metric", k == std::string("bpb") ? "bits_per_byte" : k},
                                       {"pct", recovered_pct(m[k], (*baseline)[k], (*teacher)[k])}});
        }
    for (size_t i : rows) {
        const json m = b.models[i];
        if (m["run_dir"].is_string()) b.add_curve(m["name"], source, m["run_dir"], false);
    }
    const json xz = num(r, "xz_bpb", file);
    if (!xz.is_null()) {
        json& row = b.add_model("xz -9e", "reference", source);
        row["bpb"] = xz;
    }

    // the demo's own findings
    const json& d = obj(r, "distillation", file);
    const std::string dw = file + ": distillation";
    if (!d.empty()) {
        b.add_fact(source, "distillation loss", str(d, "loss", dw), "text");
        b.add_fact(source, "distillation temperature", num(d, "temperature", dw), "ratio");
        b.add_fact(source, "cross-entropy weight", num(d, "ce_weight", dw), "ratio");
        b.add_fact(source, "bpb margin (baseline − KD student; positive: distillation helped)",
                   num(d, "bpb_margin", dw), "metric");
        b.add_fact(source, "top-1 agreement margin (KD student − baseline)", num(d, "agreement_margin", dw), "metric");
        if (d.contains("seeds") && d["seeds"].is_array() && d["seeds"].size() > 1) {
            b.add_fact(source, str_cat("mean bpb margin over ", d["seeds"].size(), " seeds"),
                       num(d, "mean_bpb_margin", dw), "metric");
            b.add_fact(source, "smallest bpb margin over the seeds", num(d, "min_bpb_margin", dw), "metric");
            b.add_fact(source, "smallest agreement margin over the seeds", num(d, "min_agreement_margin", dw),
                       "metric");
        }
        // an integer, or {student_kd_step (null: not reached), baseline_steps, ...}
        if (d.contains("steps_to_baseline")) {
            const json& s = d["steps_to_baseline"];
            const std::string what = "steps for the KD student's held-out curve to reach the baseline's final bpb";
            if (s.is_object()) {
                const json bs = num(s, "baseline_steps", dw + ".steps_to_baseline");
                b.add_fact(source, bs.is_null() ? what : str_cat(what, " (the baseline trained ", bs.dump(), ")"),
                           num(s, "student_kd_step", dw + ".steps_to_baseline"), "steps");
            } else {
                DISTILL_CHECK(s.is_null() || s.is_number_integer(), dw, ": \"steps_to_baseline\" is ", s.type_name(),
                              ", not an integer, an object or null");
                b.add_fact(source, what, s, "steps");
            }
        }
    }
    const json& c = obj(r, "cache", file);
    if (!c.empty()) {
        b.add_fact(source, "teacher cache: top-k log-probs per position", num(c, "top_k", file + ": cache"), "int");
        b.add_fact(source, "teacher cache: bytes per token", num(c, "bytes_per_token", file + ": cache"), "ratio");
        b.add_fact(source, "teacher cache: KL(full ‖ stored), nats/token", num(c, "kl_full_to_stored", file + ": cache"),
                   "metric");
    }
    const json& a = obj(r, "api", file);
    if (!a.empty()) {
        const std::string aw = file + ": api";
        b.add_fact(source, "API capture: prompts", num(a, "prompts", aw), "int");
        b.add_fact(source, "API capture: fault rate of the served teacher", num(a, "fault_rate", aw), "ratio");
        b.add_fact(source, "API capture: teacher tokens (as the API's usage reported them)",
                   num(a, "teacher_tokens", aw), "count");
        const json& cap = obj(a, "capture", aw);
        if (!cap.empty()) b.add_fact(source, "API capture: requests", num(cap, "requests", aw + ".capture"), "int");
        for (const auto& [name, share] : obj(a, "share_of_whitebox_gain", aw).items()) {
            DISTILL_CHECK(share.is_number() || share.is_null(), aw, ".share_of_whitebox_gain: \"", name,
                          "\" is not a number");
            b.add_fact(source, str_cat("share of the white-box student's bpb gain kept by ", name, " (%)"),
                       share.is_number() ? json(100.0 * share.get<double>()) : json(nullptr), "pct");
        }
    }
    const json sample = str(r, "sample", file);
    if (sample.is_string())
        b.samples.push_back({{"model", "teacher"}, {"source", source}, {"prompt", nullptr}, {"text", sample}});
}

void add_eval(Builder& b, const std::string& file, const json& r) {
    const std::string source = b.source_label(file);
    b.inputs.push_back({{"path", file}, {"kind", "eval"}, {"label", source}});
    for (size_t i = 0; i < r["models"].size(); ++i) {
        const json& m = r["models"][i];
        const std::string where = str_cat(file, ": models[", i, "]");
        DISTILL_CHECK(m.is_object(), where, " is not an object");
        const json label = str(m, "label", where);
        DISTILL_CHECK(label.is_string(), where, " has no \"label\"");
        const json role = str(m, "role", where);
        const std::string rs = role.is_string() ? role.get<std::string>() : "model";
        json& row = b.add_model(label, rs == "teacher" || rs == "baseline" ? rs : "student", source);
        const std::string name = row["name"];
        const json& cost = obj(m, "cost", where);
        const json& agr = obj(m, "agreement", where);
        const std::string cw = where + ".cost", aw = where + ".agreement";
        row["params"] = num(cost, "parameters", cw);
        row["bpb"] = num(m, "bits_per_byte", where);
        row["top1_agreement"] = num(agr, "top1_agreement", aw);
        row["kl_to_teacher"] = num(agr, "kl_to_teacher", aw);
        row["agreement_positions"] = num(agr, "positions", aw);
        if (rs != "teacher")
            row["top1_agreement_stderr"] = agreement_stderr(row["top1_agreement"], row["agreement_positions"]);
        row["train_seconds"] = num(cost, "train_seconds", cw);
        row["train_tokens"] = num(cost, "train_tokens", cw);
        row["teacher_tokens"] = num(cost, "teacher_tokens", cw);
        row["run_dir"] = str(cost, "run_dir", cw);
        json led = {{"model", name}, {"source", source}, {"params", row["params"]}};
        for (const char* k : {"weight_bytes", "forward_flops_per_token", "train_steps", "train_tokens", "train_flops",
                              "train_seconds", "teacher_tokens", "inference_tokens_per_s", "flops_fraction_of_teacher",
                              "measured_cost_fraction_of_teacher"})
            led[k] = num(cost, k, cw);
        led["run_kind"] = str(cost, "run_kind", cw);
        b.add_ledger(led);
        for (const auto& [task, t] : obj(m, "tasks", where).items()) {
            const std::string tw = str_cat(where, ".tasks.", task);
            DISTILL_CHECK(t.is_object(), tw, " is not an object");
            json tr = {{"model", name}, {"source", source}, {"task", task}};
            for (const char* k : {"n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}) tr[k] = num(t, k, tw);
            b.task_results.push_back(tr);
            b.add_task_name(task);
        }
        for (const auto& [metric, pct] : obj(m, "recovered_pct", where).items()) {
            DISTILL_CHECK(pct.is_number() || pct.is_null(), where, ".recovered_pct: \"", metric, "\" is not a number");
            b.recovered.push_back({{"model", name}, {"source", source}, {"metric", metric}, {"pct", pct}});
        }
        if (m.contains("samples") && m["samples"].is_array())
            for (const json& s : m["samples"]) {
                DISTILL_CHECK(s.is_object(), where, ".samples: an entry is not an object");
                b.samples.push_back({{"model", name},
                                     {"source", source},
                                     {"prompt", str(s, "prompt", where + ".samples")},
                                     {"text", str(s, "text", where + ".samples")}});
            }
    }
    // the training curves of the models that are run directories, after the rows (so that the
    // rows' names are final)
    for (const json& m : b.models)
        if (m["source"] == source && m["run_dir"].is_string()) b.add_curve(m["name"], source, m["run_dir"], false);
}

void add_run(Builder& b, const std::string& dir) {
    const std::string source = b.source_label(dir);
    b.inputs.push_back({{"path", dir}, {"kind", "run"}, {"label", source}});
    b.add_curve(source, source, dir, true);
    json led = {{"model", source}, {"source", source}};
    const std::string done = path_join(dir, "done.json"), run = path_join(dir, "run.json");
    if (file_exists(done)) {
        const json d = read_json_file(done);
        led["train_steps"] = num(d, "steps", done);
        led["train_tokens"] = num(d, "tokens", done);
        led["train_seconds"] = num(d, "seconds", done);
    }
    if (file_exists(run)) {
        const json r = read_json_file(run);
        json kind = str(r, "kind", run);
        if (kind.is_null()) kind = str(r, "stage", run);
        led["run_kind"] = kind;
    }
    b.add_ledger(led);
}

void add_input(Builder& b, const std::string& path) {
    std::error_code ec;
    const auto st = fs::status(path, ec);
    DISTILL_CHECK(!ec && fs::exists(st), path, ": no such file or directory (give a demo run directory, a training ",
                  "run directory or an eval result JSON)");
    if (fs::is_regular_file(st)) {
        const json j = read_json_file(path);
        DISTILL_CHECK(!(j.is_object() && j.contains("report_version")), path,
                      " is a report that `distill report` wrote; give the runs it was made from");
        if (is_eval_result(j)) return add_eval(b, path, j);
        if (is_demo_report(j)) {
            const std::string dir = fs::path(path).has_parent_path() ? fs::path(path).parent_path().string() : ".";
            return add_demo(b, dir, path, j);
        }
        throw Error(str_cat(path, ": neither an eval result (models[].label, as `distill eval -o` writes) nor a ",
                            "demo report.json (models[].name)"));
    }
    DISTILL_CHECK(fs::is_directory(st), path, ": not a file or a directory");
    const std::string report = path_join(path, "report.json");
    if (file_exists(report)) {
        const json j = read_json_file(report);
        DISTILL_CHECK(!(j.is_object() && j.contains("report_version")), report,
                      " is a report that `distill report` wrote; give the runs it was made from");
        DISTILL_CHECK(is_demo_report(j), report, ": not a demo report (no models[].name)");
        return add_demo(b, path, report, j);
    }
    if (file_exists(path_join(path, "metrics.jsonl"))) return add_run(b, path);
    // a directory holding eval results
    std::vector<std::string> files, unreadable;
    for (const auto& e : fs::directory_iterator(path, ec))
        if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    int found = 0;
    for (const auto& f : files) {
        const json j = json::parse(read_file(f), nullptr, false);
        if (j.is_discarded()) unreadable.push_back(f);
        if (is_eval_result(j)) {
            add_eval(b, f, j);
            ++found;
        }
    }
    std::string also;
    for (const auto& f : unreadable) also += str_cat(also.empty() ? " (" : ", ", f, " is not valid JSON");
    if (!also.empty()) also += ")";
    DISTILL_CHECK(found > 0, path, ": holds no report.json (a demo run), no metrics.jsonl (a training run) and no ",
                  "eval result *.json", also);
}

// ---- formatting: the same rules in report.md and on the page (see kPageJs: fmt) -----------------

std::string fmt(const json& v, const std::string& kind) {
    if (v.is_null()) return kind == "steps" ? "not reached" : "–";
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
    if (!v.is_number()) return v.dump();
    const double x = v.get<double>();
    char buf[64];
    if (kind == "metric")
        std::snprintf(buf, sizeof buf, "%.4f", x);
    else if (kind == "pct" || kind == "seconds")
        std::snprintf(buf, sizeof buf, "%.1f", x);
    else if (kind == "ratio")
        std::snprintf(buf, sizeof buf, "%.3g", x);
    else if (kind == "count")
        return format_count(x);
    else
        std::snprintf(buf, sizeof buf, "%.0f", x);  // int, steps
    return buf;
}

// a Markdown table cell: no pipe or newline may break the row
std::string cell(std::string s) {
    std::string out;
    for (char c : s) {
        if (c == '|')
            out += "\\|";
        else if (c == '\n' || c == '\r')
            out += ' ';
        else
            out += c;
    }
    return out;
}

// a report.json string field (every name, role, source and path is one)
std::string txt(const json& v) { return v.is_string() ? v.get<std::string>() : fmt(v, "text"); }

// `text`: how many leading columns hold text (left-aligned); the rest are numbers
std::string md_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows,
                     size_t text) {
    std::string out = "|";
    for (const auto& h : head) out += " " + h + " |";
    out += "\n|";
    for (size_t i = 0; i < head.size(); ++i) out += i < text ? " --- |" : " ---: |";
    out += "\n";
    for (const auto& r : rows) {
        out += "|";
        for (const auto& c : r) out += " " + cell(c) + " |";
        out += "\n";
    }
    return out + "\n";
}

// ---- the page -----------------------------------------------------------------------------------

const char* const kPageCss = R"CSS(
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #1b1b1b; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 7px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; font-size: 13px; }
th { background: #f4f4f4; } td:first-child, th:first-child, .text { text-align: left; }
.wide { overflow-x: auto; max-width: 100%; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart { position: relative; width: 560px; height: 340px; }
.muted { color: #666; } .sample { white-space: pre-wrap; background: #f8f8f8; padding: 8px; margin: 4px 0 12px; }
)CSS";

const char* const kPageJs = R"JS(
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  // the same rules as fmt() in src/report/report.cpp
  function fmt(v, kind) {
    if (v === null || v === undefined) return kind === 'steps' ? 'not reached' : '\u2013';
    if (typeof v === 'string') return v;
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (kind === 'metric') return v.toFixed(4);
    if (kind === 'pct' || kind === 'seconds') return v.toFixed(1);
    if (kind === 'ratio') return Number(v.toPrecision(3)).toString();
    if (kind === 'count') {
      const a = Math.abs(v);
      if (a >= 1e12) return (v / 1e12).toFixed(2) + 'T';
      if (a >= 1e9) return (v / 1e9).toFixed(2) + 'G';
      if (a >= 1e6) return (v / 1e6).toFixed(2) + 'M';
      if (a >= 1e3) return (v / 1e3).toFixed(1) + 'k';
      return v.toFixed(0);
    }
    return v.toFixed(0);
  }
  // A table of rows drawn from data[name]; each numeric cell names its value in report.json
  // (data-key="name.i.field") so that a test can compare the page with the data.
  function table(id, name, rows, cols) {
    const t = document.getElementById(id);
    const hr = el('tr');
    for (const c of cols) hr.appendChild(el('th', c.fmt === 'text' ? { class: 'text' } : {}, c.title));
    t.appendChild(el('thead')).appendChild(hr);
    const body = t.appendChild(el('tbody'));
    for (const r of rows) {
      const tr = body.appendChild(el('tr'));
      for (const c of cols) {
        const v = c.value ? c.value(r) : r[c.field];
        const td = el('td', {}, fmt(v, c.fmt));
        if (c.fmt === 'text') td.className = 'text';
        else if (!c.value) { td.dataset.key = name + '.' + r.__i + '.' + c.field; td.dataset.fmt = c.fmt; }
        tr.appendChild(td);
      }
    }
  }
  const indexed = (name) => data[name].map((r, i) => Object.assign({ __i: i }, r));
  const hide = (id, why) => {
    const s = document.getElementById(id);
    s.querySelectorAll('.wide, .charts').forEach((e) => e.remove());
    s.appendChild(el('p', { class: 'muted' }, why));
  };

  document.getElementById('generated').textContent = data.generator;
  const ul = document.getElementById('inputs');
  for (const i of data.inputs) ul.appendChild(el('li', {}, i.kind + ': ' + i.path));
  for (const n of data.notes) ul.appendChild(el('li', { class: 'muted' }, n));

  table('results', 'models', indexed('models'), [
    { title: 'model', field: 'name', fmt: 'text' }, { title: 'role', field: 'role', fmt: 'text' },
    { title: 'source', field: 'source', fmt: 'text' }, { title: 'params', field: 'params', fmt: 'count' },
    { title: 'held-out bpb', field: 'bpb', fmt: 'metric' },
    { title: 'top-1 agreement', field: 'top1_agreement', fmt: 'metric' },
    { title: '\u00b1 s.e.', field: 'top1_agreement_stderr', fmt: 'metric' },
    { title: 'KL to teacher', field: 'kl_to_teacher', fmt: 'metric' },
    { title: 'train s', field: 'train_seconds', fmt: 'seconds' },
    { title: 'train tokens', field: 'train_tokens', fmt: 'count' },
    { title: 'teacher tokens', field: 'teacher_tokens', fmt: 'count' }]);

  if (data.summary.length) table('summary', 'summary', indexed('summary'), [
    { title: 'finding', field: 'label', fmt: 'text' }, { title: 'source', field: 'source', fmt: 'text' },
    { title: 'value', field: 'value', fmt: null }]);
  else hide('sec-summary', 'No findings: no demo run among the inputs.');
  // each summary value has its own format
  document.querySelectorAll('#summary td[data-key]').forEach((td) => {
    const r = data.summary[Number(td.dataset.key.split('.')[1])];
    td.dataset.fmt = r.fmt; td.textContent = fmt(r.value, r.fmt);
    if (r.fmt === 'text') { td.className = 'text'; delete td.dataset.key; delete td.dataset.fmt; }
  });

  if (data.curves.length) table('curves', 'curves', indexed('curves'), [
    { title: 'run', field: 'name', fmt: 'text' }, { title: 'source', field: 'source', fmt: 'text' },
    { title: 'last step', field: 'steps', fmt: 'int' }, { title: 'last training loss', field: 'final_loss', fmt: 'metric' },
    { title: 'held-out points', field: 'heldout_points', fmt: 'int' },
    { title: 'last held-out bpb', field: 'final_heldout_bpb', fmt: 'metric' },
    { title: 'metrics', field: 'metrics', fmt: 'text' }]);

  if (data.task_results.length) table('tasks', 'task_results', indexed('task_results'), [
    { title: 'model', field: 'model', fmt: 'text' }, { title: 'source', field: 'source', fmt: 'text' },
    { title: 'task', field: 'task', fmt: 'text' }, { title: 'n', field: 'n', fmt: 'int' },
    { title: 'acc', field: 'acc', fmt: 'metric' }, { title: '\u00b1 s.e.', field: 'acc_stderr', fmt: 'metric' },
    { title: 'acc_norm', field: 'acc_norm', fmt: 'metric' },
    { title: '\u00b1 s.e.', field: 'acc_norm_stderr', fmt: 'metric' }]);
  else hide('sec-tasks', 'No task results: give an eval result made with --tasks or --builtin-task.');

  if (data.recovered.length) {
    // one row a model, one column a metric
    const metrics = [...new Set(data.recovered.map((r) => r.metric))];
    const keyOf = (r) => r.source + '\u0000' + r.model;
    const byModel = new Map();
    data.recovered.forEach((r, i) => {
      if (!byModel.has(keyOf(r))) byModel.set(keyOf(r), { model: r.model, source: r.source, cells: {} });
      byModel.get(keyOf(r)).cells[r.metric] = i;
    });
    const t = document.getElementById('recovered');
    const hr = t.appendChild(el('thead')).appendChild(el('tr'));
    for (const h of ['model', 'source', ...metrics]) hr.appendChild(el('th', metrics.includes(h) ? {} : { class: 'text' }, h));
    const body = t.appendChild(el('tbody'));
    for (const m of byModel.values()) {
      const tr = body.appendChild(el('tr'));
      tr.appendChild(el('td', { class: 'text' }, m.model)); tr.appendChild(el('td', { class: 'text' }, m.source));
      for (const k of metrics) {
        const i = m.cells[k];
        const td = tr.appendChild(el('td', {}, i === undefined ? '' : fmt(data.recovered[i].pct, 'pct')));
        if (i !== undefined) { td.dataset.key = 'recovered.' + i + '.pct'; td.dataset.fmt = 'pct'; }
      }
    }
  } else hide('sec-recovered', 'No teacher recovered %: it needs a teacher and a baseline in one input.');

  table('ledger', 'ledger', indexed('ledger'), [
    { title: 'model', field: 'model', fmt: 'text' }, { title: 'source', field: 'source', fmt: 'text' },
    { title: 'run kind', field: 'run_kind', fmt: 'text' },
    { title: 'params', field: 'params', fmt: 'count' }, { title: 'weight bytes', field: 'weight_bytes', fmt: 'count' },
    { title: 'FLOPs/token', field: 'forward_flops_per_token', fmt: 'count' },
    { title: 'train steps', field: 'train_steps', fmt: 'int' }, { title: 'train tokens', field: 'train_tokens', fmt: 'count' },
    { title: 'train FLOPs', field: 'train_flops', fmt: 'count' }, { title: 'train s', field: 'train_seconds', fmt: 'seconds' },
    { title: 'teacher tokens', field: 'teacher_tokens', fmt: 'count' },
    { title: 'inference tok/s', field: 'inference_tokens_per_s', fmt: 'count' },
    { title: 'FLOPs vs teacher', field: 'flops_fraction_of_teacher', fmt: 'metric' },
    { title: 'measured cost vs teacher', field: 'measured_cost_fraction_of_teacher', fmt: 'metric' }]);

  const samples = document.getElementById('samples');
  for (const s of data.samples) {
    samples.appendChild(el('div', {}, s.model + ' (' + s.source + ')' + (s.prompt ? ' \u2014 prompt: ' + s.prompt : '')));
    samples.appendChild(el('div', { class: 'sample' }, s.text || ''));
  }
  if (!data.samples.length) hide('sec-samples', 'No samples among the inputs.');

  // ---- charts (Chart.js, inlined above); one colour per model name across all of them ----
  const palette = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf',
                   '#bcbd22', '#393b79', '#637939', '#e7298a'];
  const colours = new Map();
  const colour = (name) => {
    if (!colours.has(name)) colours.set(name, palette[colours.size % palette.length]);
    return colours.get(name);
  };
  data.models.forEach((m) => colour(m.name));
  // error bars: ds.errors[i] is the standard error of ds.data[i]
  const errorBars = {
    id: 'errorBars',
    afterDatasetsDraw(chart) {
      const ctx = chart.ctx, y = chart.scales.y;
      chart.data.datasets.forEach((ds, i) => {
        const meta = chart.getDatasetMeta(i);
        if (!ds.errors || meta.hidden) return;
        meta.data.forEach((bar, j) => {
          const v = ds.data[j], e = ds.errors[j];
          if (v === null || e === null || e === undefined) return;
          const top = y.getPixelForValue(v + e), bottom = y.getPixelForValue(v - e), w = 4;
          ctx.save();
          ctx.strokeStyle = '#111'; ctx.lineWidth = 1.5; ctx.beginPath();
          ctx.moveTo(bar.x, top); ctx.lineTo(bar.x, bottom);
          ctx.moveTo(bar.x - w, top); ctx.lineTo(bar.x + w, top);
          ctx.moveTo(bar.x - w, bottom); ctx.lineTo(bar.x + w, bottom);
          ctx.stroke(); ctx.restore();
        });
      });
    },
  };
  const base = (xTitle, yTitle, title) => ({
    animation: false, responsive: true, maintainAspectRatio: false,
    plugins: { title: { display: true, text: title }, legend: { position: 'bottom' } },
    scales: { x: { title: { display: true, text: xTitle } }, y: { title: { display: true, text: yTitle } } },
  });
  const lineChart = (canvas, field, yTitle, title) => {
    const datasets = data.curves.filter((c) => c[field].length).map((c) => ({
      label: c.name, data: c[field].map((p) => ({ x: p[0], y: p[1] })), borderColor: colour(c.name),
      backgroundColor: colour(c.name), borderWidth: 2, pointRadius: c[field].length > 40 ? 0 : 2, tension: 0,
    }));
    const o = base('step', yTitle, title);
    o.scales.x.type = 'linear';
    return new Chart(canvas, { type: 'line', data: { datasets }, options: o });
  };
  const makers = {
    loss: (c) => lineChart(c, 'loss', 'training loss (nats/token, each run\u2019s own objective)', 'Training loss'),
    heldout_bpb: (c) => lineChart(c, 'heldout_bpb', 'held-out bits per byte', 'Held-out bpb during training'),
    agreement: (c) => {
      const ms = data.models.filter((m) => m.top1_agreement !== null);
      const o = base('model', 'top-1 agreement with the teacher', 'Top-1 agreement (\u00b1 1 s.e.)');
      o.scales.y.min = 0; o.scales.y.max = 1; o.plugins.legend.display = false;
      return new Chart(c, {
        type: 'bar', plugins: [errorBars], options: o,
        data: { labels: ms.map((m) => m.name), datasets: [{ label: 'top-1 agreement', data: ms.map((m) => m.top1_agreement),
          errors: ms.map((m) => m.top1_agreement_stderr), backgroundColor: ms.map((m) => colour(m.name)) }] },
      });
    },
    tasks: (c) => {
      const keys = [...new Set(data.task_results.map((r) => r.source + '\u0000' + r.model))];
      const datasets = keys.map((k) => {
        const rs = data.task_results.filter((r) => r.source + '\u0000' + r.model === k);
        const at = (t) => rs.find((r) => r.task === t) || { acc: null, acc_stderr: null };
        return { label: rs[0].model, backgroundColor: colour(rs[0].model), data: data.tasks.map((t) => at(t).acc),
                 errors: data.tasks.map((t) => at(t).acc_stderr) };
      });
      const o = base('task', 'acc', 'Task accuracy (\u00b1 1 s.e.)');
      o.scales.y.min = 0; o.scales.y.max = 1;
      return new Chart(c, { type: 'bar', plugins: [errorBars], data: { labels: data.tasks, datasets }, options: o });
    },
  };
  window.reportCharts = {};
  for (const ch of data.charts) {
    const canvas = document.getElementById('chart-' + ch.id);
    window.reportCharts[ch.id] = makers[ch.id](canvas);
  }
  for (const id of ['loss', 'heldout_bpb', 'agreement', 'tasks'])
    if (!data.charts.some((c) => c.id === id)) {
      const box = document.getElementById('chart-' + id).parentNode;
      box.replaceWith(el('p', { class: 'muted' }, document.getElementById('chart-' + id).dataset.empty));
    }
  // drawn synchronously (no animation); one more frame for the layout, then ready
  requestAnimationFrame(() => requestAnimationFrame(() => { document.body.dataset.ready = '1'; }));
})();
)JS";

// JSON inside a <script> element: no '<' at all (so no "</script" or "<!--"); outside strings
// JSON has none, inside them \u003c means the same
std::string script_json(const json& j) {
    const std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        if (c == '<')
            out += "\\u003c";
        else
            out += c;
    }
    return out;
}

}  // namespace

json collect_report(const std::vector<std::string>& inputs) {
    DISTILL_CHECK(!inputs.empty(), "report: no input; give demo run directories, training run directories or eval ",
                  "results");
    Builder b;
    for (const auto& in : inputs) add_input(b, in);
    json charts = json::array();
    auto has = [&](const char* field) {
        for (const auto& c : b.curves)
            if (!c[field].empty()) return true;
        return false;
    };
    if (has("loss")) charts.push_back({{"id", "loss"}, {"title", "Training loss"}});
    if (has("heldout_bpb")) charts.push_back({{"id", "heldout_bpb"}, {"title", "Held-out bpb during training"}});
    bool agreement = false;
    for (const auto& m : b.models) agreement = agreement || m["top1_agreement"].is_number();
    if (agreement) charts.push_back({{"id", "agreement"}, {"title", "Top-1 agreement"}});
    if (!b.task_results.empty()) charts.push_back({{"id", "tasks"}, {"title", "Task accuracy"}});
    return {{"report_version", kReportVersion},
            {"generator", str_cat("distill 0.1.0 report (Chart.js ", chart_js_version(), " inlined)")},
            {"inputs", b.inputs},
            {"notes", b.notes},
            {"models", b.models},
            {"curves", b.curves},
            {"tasks", b.task_names},
            {"task_results", b.task_results},
            {"recovered", b.recovered},
            {"ledger", b.ledger},
            {"summary", b.summary},
            {"samples", b.samples},
            {"charts", charts}};
}

std::string report_markdown(const json& d) {
    std::string md = "# distill report\n\n" + d["generator"].get<std::string>() + ". Inputs:\n\n";
    for (const auto& i : d["inputs"]) md += str_cat("- ", i["kind"].get<std::string>(), ": ", i["path"].get<std::string>(), "\n");
    for (const auto& n : d["notes"]) md += "- note: " + n.get<std::string>() + "\n";
    md += "\n## Results\n\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& m : d["models"])
        rows.push_back({txt(m["name"]), txt(m["role"]), txt(m["source"]), fmt(m["params"], "count"), fmt(m["bpb"], "metric"),
                        fmt(m["top1_agreement"], "metric"), fmt(m["top1_agreement_stderr"], "metric"),
                        fmt(m["kl_to_teacher"], "metric"), fmt(m["train_seconds"], "seconds"),
                        fmt(m["train_tokens"], "count"), fmt(m["teacher_tokens"], "count")});
    md += md_table({"model", "role", "source", "params", "held-out bpb", "top-1 agreement", "± s.e.", "KL to teacher",
                    "train s", "train tokens", "teacher tokens"},
                   rows, 3);
    if (!d["summary"].empty()) {
        rows.clear();
        for (const auto& s : d["summary"])
            rows.push_back({txt(s["label"]), txt(s["source"]), fmt(s["value"], s["fmt"].get<std::string>())});
        md += "## Findings\n\n" + md_table({"finding", "source", "value"}, rows, 2);
    }
    if (!d["curves"].empty()) {
        rows.clear();
        for (const auto& c : d["curves"])
            rows.push_back({txt(c["name"]), txt(c["source"]), txt(c["metrics"]), fmt(c["steps"], "int"),
                            fmt(c["final_loss"], "metric"), fmt(c["heldout_points"], "int"),
                            fmt(c["final_heldout_bpb"], "metric")});
        md += "## Training curves\n\nThe curves themselves are in report.html and report.json.\n\n" +
              md_table({"run", "source", "metrics", "last step", "last training loss", "held-out points",
                        "last held-out bpb"},
                       rows, 3);
    }
    if (!d["task_results"].empty()) {
        rows.clear();
        for (const auto& t : d["task_results"])
            rows.push_back({txt(t["model"]), txt(t["source"]), txt(t["task"]), fmt(t["n"], "int"), fmt(t["acc"], "metric"),
                            fmt(t["acc_stderr"], "metric"), fmt(t["acc_norm"], "metric"),
                            fmt(t["acc_norm_stderr"], "metric")});
        md += "## Tasks\n\n" + md_table({"model", "source", "task", "n", "acc", "± s.e.", "acc_norm", "± s.e."}, rows, 3);
    }
    if (!d["recovered"].empty()) {
        rows.clear();
        for (const auto& r : d["recovered"]) rows.push_back({txt(r["model"]), txt(r["source"]), txt(r["metric"]), fmt(r["pct"], "pct")});
        md += "## Teacher recovered %\n\n100 · (baseline − model) / (baseline − teacher).\n\n" +
              md_table({"model", "source", "metric", "recovered %"}, rows, 3);
    }
    rows.clear();
    for (const auto& l : d["ledger"])
        rows.push_back({txt(l["model"]), txt(l["source"]), fmt(l["run_kind"], "text"), fmt(l["params"], "count"), fmt(l["weight_bytes"], "count"),
                        fmt(l["forward_flops_per_token"], "count"), fmt(l["train_steps"], "int"),
                        fmt(l["train_tokens"], "count"), fmt(l["train_flops"], "count"),
                        fmt(l["train_seconds"], "seconds"), fmt(l["teacher_tokens"], "count"),
                        fmt(l["inference_tokens_per_s"], "count"), fmt(l["flops_fraction_of_teacher"], "metric"),
                        fmt(l["measured_cost_fraction_of_teacher"], "metric")});
    md += "## Cost ledger\n\n" + md_table({"model", "source", "run kind", "params", "weight bytes", "FLOPs/token",
                                           "train steps", "train tokens", "train FLOPs", "train s", "teacher tokens",
                                           "inference tok/s", "FLOPs vs teacher", "measured cost vs teacher"},
                                          rows, 3);
    if (!d["samples"].empty()) {
        md += "## Samples\n\n";
        for (const auto& s : d["samples"]) {
            md += str_cat("**", s["model"].get<std::string>(), "** (", s["source"].get<std::string>(), ")");
            if (s["prompt"].is_string()) md += " — prompt: " + s["prompt"].get<std::string>();
            std::string text = s["text"].is_string() ? s["text"].get<std::string>() : "";
            std::string quoted = "> ";
            for (char c : text) quoted += c == '\n' ? std::string("\n> ") : std::string(1, c);
            md += "\n\n" + quoted + "\n\n";
        }
    }
    return md;
}

std::string report_html(const json& d) {
    std::string h;
    h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    // everything is inline: the page may fetch nothing
    h += "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; "
         "style-src 'unsafe-inline'; img-src data:\">\n";
    h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>distill report</title>\n";
    h += str_cat("<style>", kPageCss, "</style>\n</head>\n<body>\n");
    h += "<h1>distill report</h1>\n<p class=\"muted\" id=\"generated\"></p>\n<ul id=\"inputs\"></ul>\n";
    h += "<noscript><p>This page draws its tables and charts with JavaScript; report.md has the same "
         "tables.</p></noscript>\n";
    h += "<section id=\"sec-results\"><h2>Results</h2><div class=\"wide\"><table id=\"results\"></table></div></section>\n";
    h += "<section id=\"sec-curves\"><h2>Training curves</h2><div class=\"charts\">"
         "<div class=\"chart\"><canvas id=\"chart-loss\" data-empty=\"No training loss: no run's metrics.jsonl "
         "among the inputs.\"></canvas></div>"
         "<div class=\"chart\"><canvas id=\"chart-heldout_bpb\" data-empty=\"No held-out bpb curve: no "
         "metrics.jsonl line has heldout_bpb (train with --eval-text).\"></canvas></div></div>"
         "<div class=\"wide\"><table id=\"curves\"></table></div></section>\n";
    h += "<section id=\"sec-agreement\"><h2>Agreement and tasks</h2><div class=\"charts\">"
         "<div class=\"chart\"><canvas id=\"chart-agreement\" data-empty=\"No agreement figures among the "
         "inputs.\"></canvas></div>"
         "<div class=\"chart\"><canvas id=\"chart-tasks\" data-empty=\"No task accuracies among the "
         "inputs.\"></canvas></div></div>"
         "<p class=\"muted\">Error bars: ± one standard error (tasks: lm-eval's mean_stderr; agreement: "
         "binomial over the scored positions, which are not independent, so a lower bound).</p></section>\n";
    h += "<section id=\"sec-tasks\"><h2>Tasks</h2><div class=\"wide\"><table id=\"tasks\"></table></div></section>\n";
    h += "<section id=\"sec-recovered\"><h2>Teacher recovered %</h2><p class=\"muted\">100 · (baseline − model) / "
         "(baseline − teacher), per metric.</p><div class=\"wide\"><table id=\"recovered\"></table></div></section>\n";
    h += "<section id=\"sec-ledger\"><h2>Cost ledger</h2><div class=\"wide\"><table id=\"ledger\"></table></div></section>\n";
    h += "<section id=\"sec-summary\"><h2>Findings</h2><div class=\"wide\"><table id=\"summary\"></table></div></section>\n";
    h += "<section id=\"sec-samples\"><h2>Samples</h2><div id=\"samples\"></div></section>\n";
    h += "<script type=\"application/json\" id=\"report-data\">" + script_json(d) + "</script>\n";
    h += "<script>\n" + chart_js() + "\n</script>\n";
    h += str_cat("<script>", kPageJs, "</script>\n</body>\n</html>\n");
    return h;
}

ReportFiles write_report(const std::vector<std::string>& inputs, const std::string& out_dir) {
    const json d = collect_report(inputs);
    make_dirs(out_dir);
    ReportFiles f{path_join(out_dir, "report.html"), path_join(out_dir, "report.md"), path_join(out_dir, "report.json")};
    write_file_atomic(f.json, d.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    write_file_atomic(f.md, report_markdown(d));
    write_file_atomic(f.html, report_html(d));
    return f;
}

}  // namespace distill
