// distill report (docs/report.md): a demo run directory, an eval result and a real training run
// merged into one report.json / report.md / report.html; the page opened in headless Chromium
// with the network off (tests/node/report-check.mjs: nothing fetched, every chart drawn, the
// screenshot not blank, every number on the page equal to report.json); bad inputs are errors
// that name the file; `distill demo` writes its report beside its own report.json.
#include <unistd.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;
using json = nlohmann::json;

namespace {

const std::string kNodeDir = source_path("tests/node");

std::string q(const std::string& s) { return "'" + s + "'"; }

// metrics.jsonl of a run: a decaying loss every 10 steps, heldout_bpb every 50 when `heldout`
std::string fake_metrics(int i, bool heldout) {
    std::string out;
    for (int s = 10; s <= 300; s += 10) {
        json l = {{"step", s}, {"loss", 4.0 * std::exp(-s / (100.0 + 30 * i)) + 1.5 + 0.1 * i}, {"lr", 1e-3},
                  {"grad_norm", 0.5}, {"tokens", s * 512}, {"seconds", s * 0.1}, {"tokens_per_second", 5120.0}};
        if (heldout && s % 50 == 0) l["heldout_bpb"] = 3.5 * std::exp(-s / (150.0 + 20 * i)) + 1.9 + 0.05 * i;
        out += l.dump() + "\n";
    }
    return out;
}

// A demo run directory as `distill demo` leaves it (report.json and the training runs it names),
// written by hand; the runs' recorded paths point where the demo used to be, as after a move.
void write_fake_demo(const std::string& demo) {
    const char* names[] = {"teacher", "student_kd", "student_baseline", "student_api_sequences", "student_api_top20"};
    const char* dirs[] = {"teacher", "students/fkl-t1-ce0.5-k32-seed1", "students/ce-seed1", "students/api-seq-ab12",
                          "students/api-fkl-t1-ce0.5-k20-ab12"};
    const double bpb[] = {1.891, 1.893, 1.942, 1.95, 1.92}, agree[] = {1, 0.712, 0.636, 0.6, 0.68},
                 kl[] = {0, 0.213, 0.33, 0.35, 0.25};
    json models = json::array();
    for (int i = 0; i < 5; ++i) {
        write_file_atomic(demo + "/" + dirs[i] + "/metrics.jsonl", fake_metrics(i, true));
        json m = {{"name", names[i]},     {"params", i == 0 ? 3950000 : 890000}, {"bpb", bpb[i]},
                  {"top1_agreement", agree[i]}, {"kl_to_teacher", kl[i]}, {"train_seconds", 100.0 + i},
                  {"train_tokens", 1536000}};
        if (i > 0) {
            m["run_dir"] = std::string("/nonexistent/moved/demo/") + dirs[i];
            m["teacher_tokens"] = i == 2 ? 0 : 800000;
        }
        models.push_back(m);
    }
    json r = {{"corpus", {{"heldout_tokens", 120000}, {"heldout_bytes", 466000}}},
              {"xz_bpb", 2.142},
              {"models", models},
              {"cache", {{"top_k", 32}, {"bytes_per_token", 41.2}, {"kl_full_to_stored", 0.0123}}},
              {"distillation", {{"loss", "fkl"}, {"temperature", 1}, {"ce_weight", 0.5}, {"bpb_margin", 0.049},
                                {"agreement_margin", 0.076}, {"seeds", json::array({json::object()})},
                                {"steps_to_baseline", {{"student_kd_step", 180}, {"baseline_steps", 300}}}}},
              {"api", {{"prompts", 3000}, {"fault_rate", 0.25}, {"teacher_tokens", 800000},
                       {"capture", {{"requests", 3900}}},
                       {"share_of_whitebox_gain", {{"student_api_sequences", -0.16}, {"student_api_top20", 0.45}}}}},
              {"sample", "It was a truth <b>universally</b> | acknowledged</script>\nthat"}};
    write_file_atomic(demo + "/report.json", r.dump(2));
}

// What `distill eval -o` writes for a teacher, a student and a baseline (two tasks).
json fake_eval() {
    auto task = [](int n, double acc, double norm) {
        const double se = std::sqrt(acc * (1 - acc) / (n - 1));
        return json{{"n", n}, {"acc", acc}, {"acc_stderr", se}, {"acc_norm", norm}, {"acc_norm_stderr", se}};
    };
    return {{"models",
             {{{"label", "teacher"}, {"role", "teacher"}, {"kind", "local"}, {"bits_per_byte", 1.9},
               {"tasks", {{"next_sentence", task(1000, 0.61, 0.58)}, {"tiny", task(5, 0.6, 0.4)}}},
               {"agreement", {{"top1_agreement", 1.0}, {"kl_to_teacher", 0.0}}},
               {"samples", {{{"prompt", "She said that"}, {"text", " she would come."}, {"seed", 0}}}},
               {"cost", {{"parameters", 3950000}, {"weight_bytes", 15800000}, {"forward_flops_per_token", 8.1e6},
                         {"inference_tokens_per_s", 5123.4}, {"train_steps", 300}, {"train_tokens", 1536000},
                         {"train_flops", 3.7e13}, {"train_seconds", 400.0}, {"teacher_tokens", 0},
                         {"run_kind", "pretrain"}, {"flops_fraction_of_teacher", 1.0},
                         {"measured_cost_fraction_of_teacher", 1.0}}}},
              {{"label", "kd"}, {"role", "model"}, {"kind", "local"}, {"bits_per_byte", 1.95},
               {"tasks", {{"next_sentence", task(1000, 0.52, 0.5)}, {"tiny", task(5, 0.4, 0.4)}}},
               {"agreement", {{"top1_agreement", 0.7}, {"kl_to_teacher", 0.2}, {"positions", 118000}}},
               {"samples", json::array()},
               {"cost", {{"parameters", 890000}, {"inference_tokens_per_s", 20000.0},
                         {"flops_fraction_of_teacher", 0.22}, {"measured_cost_fraction_of_teacher", 0.256}}},
               {"recovered_pct", {{"bits_per_byte", 55.5}, {"next_sentence.acc", 43.75}, {"tiny.acc", nullptr}}}},
              {{"label", "base"}, {"role", "baseline"}, {"kind", "local"}, {"bits_per_byte", 2.0},
               {"tasks", {{"next_sentence", task(1000, 0.45, 0.44)}, {"tiny", task(5, 0.4, 0.2)}}},
               {"agreement", {{"top1_agreement", 0.63}, {"kl_to_teacher", 0.33}, {"positions", 118000}}},
               {"cost", {{"parameters", 890000}}}}}},
            {"teacher", "teacher"},
            {"baseline", "base"},
            {"tasks", json::array()}};
}

struct Fixture {
    std::string dir, demo, eval, run;
    Fixture() {
        dir = temp_dir("report");
        demo = dir + "/demo";
        write_fake_demo(demo);
        eval = dir + "/results.json";
        write_file_atomic(eval, fake_eval().dump(2));
        // a real training run, as `distill pretrain` writes it
        run = dir + "/tiny-run";
        write_file_atomic(dir + "/train.txt", word_text(20000, 1, {"the", "house", "was", "she", "said", "Emma"}));
        write_file_atomic(dir + "/config.json",
                          R"({"model_type":"llama","hidden_size":16,"num_hidden_layers":1,"num_attention_heads":2,
                              "num_key_value_heads":1,"intermediate_size":32,"max_position_embeddings":64,
                              "tie_word_embeddings":true})");
        EXPECT_EQ(run_distill("train-tokenizer --text " + dir + "/train.txt --vocab-size 280 --out " + dir + "/tok.json"), 0);
        EXPECT_EQ(run_distill("prepare --tokenizer " + dir + "/tok.json --text " + dir + "/train.txt --out " + dir + "/train"),
                  0);
        EXPECT_EQ(run_distill("--threads 1 pretrain --config " + dir + "/config.json --tokenizer " + dir +
                              "/tok.json --data " + dir + "/train --run-dir " + run +
                              " --steps 6 --batch-size 2 --seq-len 16 --log-every 2"),
                  0);
    }
};
Fixture& fixture() {
    static Fixture f;
    return f;
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

// `distill report ARGS` fails with exit status 1 and a message holding `needle`, writing nothing.
void expect_report_error(const std::string& args, const std::string& needle, const std::string& out) {
    const std::string err = out + ".err";
    EXPECT_EQ(run_distill("report " + args + " -o " + q(out), "", err), 1) << args;
    const std::string msg = file_exists(err) ? read_file(err) : "";
    EXPECT_NE(msg.find(needle), std::string::npos) << "`report " << args << "` said: " << msg;
    EXPECT_FALSE(file_exists(out + "/report.json")) << args;
}

// Runs tests/node/report-check.mjs on a report directory: its JSON line, or a test failure when
// Node, puppeteer-core or Chromium is missing.
bool browser_check(const std::string& report_dir, json* result) {
    const char* node_env = std::getenv("DISTILL_NODE");
    const std::string node = node_env && *node_env ? node_env : "node";
    const char* chromium_env = std::getenv("CHROMIUM");
    const std::string chromium = chromium_env && *chromium_env ? chromium_env : "/usr/bin/chromium";
    std::string missing;
    if (run(q(node) + " --version > /dev/null 2>&1") != 0)
        missing = "Node.js (`" + node + "`)";
    else if (!file_exists(kNodeDir + "/node_modules/puppeteer-core/package.json"))
        missing = "puppeteer-core in tests/node/node_modules";
    else if (::access(chromium.c_str(), X_OK) != 0)
        missing = "Chromium (" + chromium + ")";
    if (!missing.empty()) {
        ADD_FAILURE() << missing << " is missing: run scripts/setup.sh --tests";  // a missing tool fails, never skips
        return false;
    }
    const std::string out = report_dir + "/check.json", err = report_dir + "/check.err";
    const int rc = run("cd " + q(kNodeDir) + " && " + q(node) + " report-check.mjs " + q(report_dir) + " " +
                       q(report_dir + "/screenshot.png") + " > " + q(out) + " 2> " + q(err));
    EXPECT_EQ(rc, 0) << read_file(err) << read_file(out);
    if (rc != 0) return false;
    *result = json::parse(read_file(out));
    return true;
}

}  // namespace

TEST(Report, MergesDemoEvalAndRunIntoOnePage) {
    Fixture& f = fixture();
    const std::string out = temp_dir("report-out") + "/out";
    ASSERT_EQ(run_distill("report " + q(f.demo) + " " + q(f.eval) + " " + q(f.run) + " -o " + q(out)), 0);
    const json r = read_json(out + "/report.json");
    ASSERT_EQ(r["inputs"].size(), 3u);
    EXPECT_EQ(r["inputs"][0]["kind"], "demo");
    EXPECT_EQ(r["inputs"][1]["kind"], "eval");
    EXPECT_EQ(r["inputs"][2]["kind"], "run");
    // 5 demo models + the xz reference + 3 eval models; a repeated name gets its source
    ASSERT_EQ(r["models"].size(), 9u);
    EXPECT_EQ(r["models"][5]["name"], "xz -9e");
    EXPECT_EQ(r["models"][5]["bpb"], 2.142);
    EXPECT_EQ(r["models"][6]["name"], "teacher [results.json]");
    EXPECT_EQ(r["models"][1]["bpb"], 1.893);
    EXPECT_NEAR(r["models"][1]["top1_agreement_stderr"].get<double>(), std::sqrt(0.712 * 0.288 / 120000), 1e-12);
    EXPECT_TRUE(r["models"][0]["top1_agreement_stderr"].is_null());  // the teacher against itself
    // the moved demo's runs are found inside it: 5 curves with held-out points, and the real run's
    ASSERT_EQ(r["curves"].size(), 6u);
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(r["curves"][i]["loss"].size(), 30u) << i;
        EXPECT_EQ(r["curves"][i]["heldout_bpb"].size(), 6u) << i;
        EXPECT_EQ(r["curves"][i]["steps"], 300);
    }
    EXPECT_EQ(r["curves"][1]["name"], "student_kd");
    EXPECT_EQ(r["curves"][1]["run_dir"], f.demo + "/students/fkl-t1-ce0.5-k32-seed1");
    const json& real = r["curves"][5];
    EXPECT_EQ(real["name"], "tiny-run");
    EXPECT_EQ(real["loss"].size(), 3u);  // steps 2, 4, 6
    EXPECT_EQ(real["steps"], 6);
    EXPECT_TRUE(real["heldout_bpb"].empty());
    EXPECT_EQ(r["ledger"].back()["train_steps"], 6);
    EXPECT_EQ(r["ledger"].back()["run_kind"], "pretrain");
    // teacher recovered % of the demo's students, as eval computes it; the eval's as it gave them
    bool kd_bpb = false;
    for (const auto& x : r["recovered"])
        if (x["model"] == "student_kd" && x["metric"] == "bits_per_byte") {
            kd_bpb = true;
            EXPECT_NEAR(x["pct"].get<double>(), 100 * (1.942 - 1.893) / (1.942 - 1.891), 1e-9);
        }
    EXPECT_TRUE(kd_bpb);
    EXPECT_EQ(r["tasks"], json::array({"next_sentence", "tiny"}));
    EXPECT_EQ(r["task_results"].size(), 6u);
    bool steps = false;
    for (const auto& s : r["summary"])
        if (s["fmt"] == "steps") {
            steps = true;
            EXPECT_EQ(s["value"], 180);
        }
    EXPECT_TRUE(steps) << "distillation.steps_to_baseline is not among the findings";
    EXPECT_EQ(r["samples"].size(), 2u);
    std::vector<std::string> charts;
    for (const auto& c : r["charts"]) charts.push_back(c["id"]);
    EXPECT_EQ(charts, (std::vector<std::string>{"loss", "heldout_bpb", "agreement", "tasks"}));

    // self-contained: no external script, style or link; the sample's markup stays text
    const std::string html = read_file(out + "/report.html");
    for (const char* bad : {"<script src", "<link", "@import", "</script>\nthat", "<b>universally"})
        EXPECT_EQ(html.find(bad), std::string::npos) << bad;
    EXPECT_NE(html.find("Chart.js v3"), std::string::npos);
    const std::string md = read_file(out + "/report.md");
    EXPECT_NE(md.find("| student_kd | student | demo | 890.0k | 1.8930 | 0.7120 |"), std::string::npos) << md;
    EXPECT_NE(md.find("> It was a truth <b>universally</b> | acknowledged</script>\n> that"), std::string::npos) << md;

    json check;
    if (browser_check(out, &check)) {
        EXPECT_EQ(check["blocked_requests"], 0);
        EXPECT_EQ(check["charts"].size(), 4u);
        EXPECT_GT(check["cells"].get<int>(), 150);
        EXPECT_TRUE(file_exists(out + "/screenshot.png"));
    }
}

TEST(Report, OneRunAloneHasOnlyItsLossCurve) {
    Fixture& f = fixture();
    const std::string out = temp_dir("report-run") + "/out";
    ASSERT_EQ(run_distill("report " + q(f.run) + " -o " + q(out)), 0);
    const json r = read_json(out + "/report.json");
    EXPECT_TRUE(r["models"].empty());
    ASSERT_EQ(r["charts"].size(), 1u);
    EXPECT_EQ(r["charts"][0]["id"], "loss");
    json check;
    if (browser_check(out, &check)) {
        EXPECT_EQ(check["charts"].size(), 1u);
    }
}

TEST(Report, DefaultOutIsReportInsideTheFirstInput) {
    const std::string d = temp_dir("report-default");
    write_fake_demo(d + "/demo");
    const std::string before = read_file(d + "/demo/report.json");
    ASSERT_EQ(run_distill("report " + q(d + "/demo")), 0);
    EXPECT_TRUE(file_exists(d + "/demo/report/report.html"));
    EXPECT_TRUE(file_exists(d + "/demo/report/report.md"));
    EXPECT_EQ(read_file(d + "/demo/report.json"), before);  // the demo's own report is left alone
    // an eval file: report/ beside it
    write_file_atomic(d + "/ev/results.json", fake_eval().dump());
    ASSERT_EQ(run_distill("report " + q(d + "/ev/results.json")), 0);
    EXPECT_TRUE(file_exists(d + "/ev/report/report.json"));
    // a directory holding eval results
    const std::string out = d + "/out";
    ASSERT_EQ(run_distill("report " + q(d + "/ev") + " -o " + q(out)), 0);
    EXPECT_EQ(read_json(out + "/report.json")["models"].size(), 3u);
}

TEST(Report, TornLastMetricsLineIsLeftOut) {
    const std::string d = temp_dir("report-torn");
    // a trainer halfway through writing its last line
    write_file_atomic(d + "/run/metrics.jsonl", fake_metrics(0, false) + "{\"step\": 310, \"lo");
    ASSERT_EQ(run_distill("report " + q(d + "/run") + " -o " + q(d + "/out")), 0);
    EXPECT_EQ(read_json(d + "/out/report.json")["curves"][0]["loss"].size(), 30u);
}

TEST(Report, BadInputsAreErrorsNamingTheFile) {
    const std::string d = temp_dir("report-bad");
    const std::string out = d + "/out";
    expect_report_error(q(d + "/nowhere"), d + "/nowhere: no such file or directory", out);
    // a demo whose report.json is cut short
    write_file_atomic(d + "/demo1/report.json", "{\"models\": [{\"name\": \"teacher\"");
    expect_report_error(q(d + "/demo1"), d + "/demo1/report.json: not valid JSON", out);
    // a number that is not one
    write_fake_demo(d + "/demo2");
    json r = read_json(d + "/demo2/report.json");
    r["models"][2]["bpb"] = "low";
    write_file_atomic(d + "/demo2/report.json", r.dump());
    expect_report_error(q(d + "/demo2"), d + "/demo2/report.json: models[2]: \"bpb\" is string, not a number", out);
    // a run's metrics.jsonl with a bad line in the middle
    write_fake_demo(d + "/demo3");
    write_file_atomic(d + "/demo3/students/ce-seed1/metrics.jsonl", "{\"step\": 1, \"loss\": 2}\nnot json\n{\"step\": 3}\n");
    expect_report_error(q(d + "/demo3"), d + "/demo3/students/ce-seed1/metrics.jsonl:2: not a JSON object", out);
    write_file_atomic(d + "/run/metrics.jsonl", "{\"step\": \"one\", \"loss\": 2}\n");
    expect_report_error(q(d + "/run"), d + "/run/metrics.jsonl:1: no integer \"step\"", out);
    write_file_atomic(d + "/run2/metrics.jsonl", "{\"step\": 1, \"loss\": 2, \"heldout_bpb\": \"x\"}\n");
    expect_report_error(q(d + "/run2"), d + "/run2/metrics.jsonl:1: \"heldout_bpb\" is string", out);
    // eval results: not JSON, not an eval, a task that is not an object
    write_file_atomic(d + "/bad.json", "{\"models\": [");
    expect_report_error(q(d + "/bad.json"), d + "/bad.json: not valid JSON", out);
    write_file_atomic(d + "/other.json", "{\"hello\": 1}");
    expect_report_error(q(d + "/other.json"), d + "/other.json: neither an eval result", out);
    json e = fake_eval();
    e["models"][1]["tasks"]["tiny"] = 3;
    write_file_atomic(d + "/ev.json", e.dump());
    expect_report_error(q(d + "/ev.json"), d + "/ev.json: models[1].tasks.tiny is not an object", out);
    // a directory with nothing to report, or with only a broken result in it
    make_dirs(d + "/empty");
    expect_report_error(q(d + "/empty"), d + "/empty: holds no report.json", out);
    write_file_atomic(d + "/broken/results.json", "{");
    expect_report_error(q(d + "/broken"), d + "/broken/results.json is not valid JSON", out);
    // a report's own output is not an input
    write_fake_demo(d + "/demo4");
    ASSERT_EQ(run_distill("report " + q(d + "/demo4") + " -o " + q(d + "/rep")), 0);
    expect_report_error(q(d + "/rep"), d + "/rep/report.json is a report that `distill report` wrote", out);
    // a good input after a bad one still fails, and nothing is written
    expect_report_error(q(d + "/demo4") + " " + q(d + "/nowhere"), "nowhere: no such file", out);
    // no input at all is a usage error
    EXPECT_EQ(run_distill("report"), 2);
}

// `distill demo` ends by writing <run>/report/ beside its own report.json (a tiny demo: a few
// steps, no API stage).
TEST(Report, DemoWritesItsReport) {
    const std::string run = temp_dir("report-demo") + "/run";
    ASSERT_EQ(run_distill("--threads 2 demo --quick --teacher-steps 4 --student-steps 4 --api-prompts 0 --run-dir " +
                          q(run)),
              0);
    const json demo = read_json(run + "/report.json");
    ASSERT_FALSE(demo.contains("report_version"));  // the demo's own, untouched shape
    const json r = read_json(run + "/report/report.json");
    ASSERT_EQ(r["inputs"].size(), 1u);
    EXPECT_EQ(r["inputs"][0]["kind"], "demo");
    // teacher, KD student, baseline and xz; a curve for each trained model
    ASSERT_EQ(r["models"].size(), 4u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(r["models"][i]["bpb"], demo["models"][i]["bpb"]) << i;
    ASSERT_EQ(r["curves"].size(), 3u);
    for (const auto& c : r["curves"]) EXPECT_EQ(c["steps"], 4) << c["name"];
    EXPECT_TRUE(file_exists(run + "/report/report.html"));
    json check;
    if (browser_check(run + "/report", &check)) {
        EXPECT_EQ(check["blocked_requests"], 0);
    }
}
