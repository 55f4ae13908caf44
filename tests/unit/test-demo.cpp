// `distill demo --quick` end to end: every stage runs, report.json has what the README promises,
// and a second run reuses what the first built.
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include <cmath>
#include <nlohmann/json.hpp>

#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;
using nlohmann::json;

TEST(Demo, QuickRunWritesReportAndIsReused) {
    // a run dir with a space and a double quote: nothing on the way may build shell strings from it
    const std::string run = temp_dir("demo") + "/run dir \"q\"";
    const std::string arg = "'" + run + "'";
    ASSERT_EQ(run_distill("--threads 1 demo --quick --run-dir " + arg), 0);
    json r = json::parse(read_file(run + "/report.json"));
    ASSERT_TRUE(r["models"].is_array());
    ASSERT_EQ(r["models"].size(), 6u);
    const char* names[] = {"teacher",           "student_kd",        "student_baseline",
                           "student_api_sequences", "student_api_top20", "student_api_sequences_marked"};
    for (size_t i = 0; i < 6; ++i) {
        const json& m = r["models"][i];
        EXPECT_EQ(m["name"], names[i]);
        for (const char* key : {"params", "bpb", "top1_agreement", "kl_to_teacher", "train_seconds", "train_tokens"})
            EXPECT_TRUE(m.contains(key)) << names[i] << " lacks " << key;
        EXPECT_GT(m["bpb"].get<double>(), 0.0);
        EXPECT_LT(m["bpb"].get<double>(), 16.0);
        EXPECT_GE(m["top1_agreement"].get<double>(), 0.0);
        EXPECT_LE(m["top1_agreement"].get<double>(), 1.0);
        EXPECT_GE(m["kl_to_teacher"].get<double>(), 0.0);
        EXPECT_GT(m["train_tokens"].get<int64_t>(), 0);
    }
    // What the demo is for: the distilled student imitates the teacher better than the same
    // student trained on the data alone. Measured on the quick run (30 steps each): KL to the
    // teacher 0.124 vs 0.181 nats/token (seed 1), 0.110 vs 0.156 (seed 2), a ratio of 0.68-0.70.
    // (Top-1 agreement is 0.9996 for both: this tiny teacher almost always predicts one token, so
    // it says nothing here.)
    const json& kd = r["models"][1];
    const json& base = r["models"][2];
    EXPECT_LT(kd["kl_to_teacher"].get<double>(), 0.85 * base["kl_to_teacher"].get<double>());
    EXPECT_LT(kd["bpb"].get<double>(), base["bpb"].get<double>());
    // the teacher learned something: below a uniform guess over its vocabulary (log2(V) bits a
    // token); measured 3.63 bpb against 4.32 for the guess, a ratio of 0.84
    const double uniform_bpb = std::log2(double(r["tokenizer"]["vocab_size"].get<int>())) *
                               double(r["corpus"]["heldout_tokens"].get<int64_t>()) /
                               double(r["corpus"]["heldout_bytes"].get<int64_t>());
    EXPECT_LT(r["models"][0]["bpb"].get<double>(), 0.92 * uniform_bpb);
    // the student has at most a quarter of the teacher's parameters
    EXPECT_LE(4 * r["models"][1]["params"].get<int64_t>(), r["models"][0]["params"].get<int64_t>());
    EXPECT_EQ(r["models"][1]["params"], r["models"][2]["params"]);
    EXPECT_EQ(r["models"][1]["train_tokens"], r["models"][2]["train_tokens"]);
    EXPECT_GT(r["cache"]["bytes_per_token"].get<double>(), 0.0);
    EXPECT_EQ(r["cache"]["top_k"].get<int>(), 32);
    EXPECT_GT(r["xz_bpb"].get<double>(), 1.0);
    EXPECT_LT(r["xz_bpb"].get<double>(), 4.0);
    EXPECT_TRUE(file_exists(run + "/report.md"));
    EXPECT_TRUE(file_exists(run + "/teacher/model/model.safetensors"));
    EXPECT_TRUE(file_exists(r["models"][1]["run_dir"].get<std::string>() + "/model/config.json"));
    EXPECT_TRUE(file_exists(r["models"][2]["run_dir"].get<std::string>() + "/model/config.json"));

    // held-out curves: every run logs heldout_bpb on heldout-curve.txt, which in quick mode is the
    // whole held-out text, so each curve ends where the final evaluation (other batches) lands
    for (size_t i = 0; i < 6; ++i) {
        const std::string dir = i == 0 ? run + "/teacher" : r["models"][i]["run_dir"].get<std::string>();
        std::istringstream in(read_file(dir + "/metrics.jsonl"));
        std::string line;
        std::vector<std::pair<int64_t, double>> curve;
        while (std::getline(in, line)) {
            const json j = json::parse(line);
            if (j.contains("heldout_bpb")) curve.emplace_back(j["step"].get<int64_t>(), j["heldout_bpb"].get<double>());
        }
        ASSERT_EQ(curve.size(), 30u) << names[i];
        EXPECT_EQ(curve.back().first, 30) << names[i];
        EXPECT_NEAR(curve.back().second, r["models"][i]["bpb"].get<double>(), 1e-4) << names[i];
        EXPECT_LT(curve.back().second, curve.front().second) << names[i];
    }
    const json& sb = r["distillation"]["steps_to_baseline"];
    ASSERT_TRUE(sb.is_object()) << r["distillation"].dump(2);
    EXPECT_EQ(sb["baseline_steps"], 30);
    if (!sb["student_kd_step"].is_null()) {
        EXPECT_GE(sb["student_kd_step"].get<int64_t>(), 1);
        EXPECT_LE(sb["student_kd_step"].get<int64_t>(), 30);
    }

    // the teacher through its API: served with faults on a quarter of the requests, every prompt
    // captured once, the faults retried; both API students trained as long as the white-box one
    const json& api = r["api"];
    ASSERT_TRUE(api.is_object()) << r.dump(2);
    EXPECT_EQ(api["samples"], 48);
    EXPECT_EQ(api["capture"]["failed"], 0);
    EXPECT_EQ(api["capture"]["written"], 48);
    int64_t faults = 0;
    for (const auto& [kind, n] : api["capture"]["errors"].items()) faults += n.get<int64_t>();
    EXPECT_GE(faults, 1) << api.dump(2);
    EXPECT_EQ(api["capture"]["requests"].get<int64_t>(), 48 + faults);
    int64_t injected = 0;  // as the server counted them: each one the capture met
    for (const auto& [kind, n] : api["capture"]["faults_injected"].items()) injected += n.get<int64_t>();
    EXPECT_EQ(injected, faults) << api.dump(2);
    EXPECT_FALSE(api["capture"]["logprobs"].get<bool>());  // text only: the top-20 student has its cache
    EXPECT_GT(api["teacher_tokens"].get<int64_t>(), api["completion_tokens"].get<int64_t>());
    // the top-20 student's cache: every training window scored through the API (its own faulty
    // server), each fault met and retried, every token named by id
    const json& ac = api["cache"];
    EXPECT_EQ(ac["windows"], r["cache"]["positions"].get<int64_t>() / 64);
    EXPECT_EQ(ac["top_logprobs"], 20);
    const json& acap = ac["capture"];
    int64_t cache_errors = 0, cache_injected = 0;
    for (const auto& [kind, n] : acap["errors"].items()) cache_errors += n.get<int64_t>();
    for (const auto& [kind, n] : acap["faults_injected"].items()) cache_injected += n.get<int64_t>();
    EXPECT_GE(cache_injected, 1) << ac.dump(2);
    EXPECT_EQ(cache_errors, cache_injected) << ac.dump(2);
    EXPECT_EQ(acap["requests"].get<int64_t>(), (ac["windows"].get<int64_t>() + 3) / 4 + cache_errors) << ac.dump(2);
    EXPECT_TRUE(acap["token_ids"].get<bool>());
    EXPECT_EQ(acap["mapped_fraction"], 1.0);
    EXPECT_EQ(acap["teacher_tokens"], ac["windows"].get<int64_t>() * 65);
    for (size_t i = 3; i < 5; ++i) {
        EXPECT_EQ(r["models"][i]["params"], r["models"][1]["params"]);
        EXPECT_TRUE(file_exists(r["models"][i]["run_dir"].get<std::string>() + "/model/config.json"));
        EXPECT_TRUE(api["share_of_whitebox_gain"][r["models"][i]["name"].get<std::string>()].is_number());
    }
    EXPECT_EQ(r["models"][3]["teacher_tokens"], api["teacher_tokens"]);
    EXPECT_EQ(r["models"][4]["teacher_tokens"], acap["teacher_tokens"]);
    // the white-box student's teacher tokens: every position the teacher scored into the cache
    EXPECT_GT(r["cache"]["positions"].get<int64_t>(), 0);
    EXPECT_EQ(r["models"][1]["teacher_tokens"], r["cache"]["positions"]);
    EXPECT_EQ(r["models"][2]["teacher_tokens"], 0);

    // the owner's side: the same 48 prompts continued by the teacher served with a watermark; a
    // sequence-level student trained on completions of which prompt p's is the watermarked one when
    // (p * 7919) % 1000 < 100 (10 %); the radioactivity test on it, on the clean API student and the
    // baseline, and on it with a wrong key. (At 48 x 16 tokens nothing is significant: the full
    // demo's figures are in docs/guard.md.)
    const json& g = r["guard"];
    ASSERT_TRUE(g.is_object()) << r.dump(2);
    int64_t expect_marked = 0;
    for (int64_t p = 0; p < 48; ++p) expect_marked += (p * 7919) % 1000 < 100;
    EXPECT_EQ(g["marked_samples"], expect_marked);
    EXPECT_EQ(g["samples"], 48);
    EXPECT_EQ(g["fraction"], 0.1);
    {
        std::istringstream in(read_file(g["dataset"].get<std::string>() + "/samples.jsonl"));
        std::string line;
        int64_t n = 0;
        while (std::getline(in, line)) n += !line.empty();
        EXPECT_EQ(n, 48);
    }
    const json& m5 = r["models"][5];
    EXPECT_EQ(m5["params"], r["models"][3]["params"]);
    for (const char* who : {"marked_student", "clean_api_student", "baseline", "marked_student_wrong_key"}) {
        const json& t = g["open_mode"][who];
        EXPECT_GT(t["scored"].get<int64_t>(), 20) << who;
        EXPECT_LE(t["green"].get<int64_t>(), t["scored"].get<int64_t>()) << who;
        EXPECT_GT(t["p"].get<double>(), 0.0) << who;
        EXPECT_LE(t["p"].get<double>(), 1.0) << who;
        EXPECT_EQ(t["gamma"], 0.25) << who;
    }
    EXPECT_EQ(g["open_mode"]["marked_student"]["key_hash"], g["watermark"]["key_hash"]);
    EXPECT_NE(g["open_mode"]["marked_student_wrong_key"]["key_hash"], g["watermark"]["key_hash"]);

    // a second run rebuilds nothing: same numbers, and it is quick
    const std::string before = read_file(run + "/teacher/done.json");
    ASSERT_EQ(run_distill("--threads 1 demo --quick --run-dir " + arg), 0);
    json r2 = json::parse(read_file(run + "/report.json"));
    EXPECT_EQ(read_file(run + "/teacher/done.json"), before);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(r2["models"][i]["bpb"], r["models"][i]["bpb"]);
    EXPECT_EQ(r2["api"]["capture"], r["api"]["capture"]);  // not captured again
    EXPECT_EQ(r2["api"]["cache"], r["api"]["cache"]);
    EXPECT_EQ(r2["guard"], r["guard"]);

    // stage times: every stage named once, in order, each within the run's wall time; the re-run
    // reused the teacher, so its teacher stage took far less than the first run's
    const std::vector<std::string> stages = {"corpus",          "tokenizer",    "token shard",   "teacher",
                                             "teacher eval",    "capture",      "students",      "api completions",
                                             "api cache",       "api students", "guard capture", "guard",
                                             "compare",         "sample"};
    for (const json* rep : {&r, &r2}) {
        ASSERT_TRUE((*rep)["stage_seconds"].is_array());
        ASSERT_EQ((*rep)["stage_seconds"].size(), stages.size());
        double sum = 0;
        for (size_t i = 0; i < stages.size(); ++i) {
            const json& st = (*rep)["stage_seconds"][i];
            EXPECT_EQ(st["stage"], stages[i]);
            EXPECT_GE(st["seconds"].get<double>(), 0.0);
            sum += st["seconds"].get<double>();
        }
        EXPECT_LE(sum, (*rep)["seconds"].get<double>());
    }
    EXPECT_LT(r2["stage_seconds"][3]["seconds"].get<double>(), r["stage_seconds"][3]["seconds"].get<double>());
}

// A re-run whose teacher settings differ (another flag, or a new version's defaults) keeps what
// the earlier run made beside the new work (`<dir>.earlier-1`) and retrains whatever depended on
// the teacher, including the student trained on the API's top-20, whose cache is known by the
// served model's name and the server's system_fingerprint.
TEST(Demo, AChangedTeacherKeepsTheEarlierWorkAsideAndRetrainsWhatDependsOnIt) {
    const std::string run = temp_dir("demo-changed") + "/run";
    const std::string common = "--threads 1 demo --quick --student-steps 4 --api-fault-rate 0 --run-dir " + run;
    ASSERT_EQ(run_distill(common + " --teacher-steps 4"), 0);
    const json r = json::parse(read_file(run + "/report.json"));
    const std::string teacher_done = read_file(run + "/teacher/done.json");
    const std::string cache_header = read_file(run + "/cache/header.json");
    std::map<std::string, std::string> done;  // each student's done.json
    for (size_t i = 1; i < 6; ++i) {
        const std::string dir = r["models"][i]["run_dir"];
        done[dir] = read_file(dir + "/done.json");
    }

    ASSERT_EQ(run_distill(common + " --teacher-steps 5", "", run + "/../err.txt"), 0) << read_file(run + "/../err.txt");
    const json r2 = json::parse(read_file(run + "/report.json"));
    // the earlier teacher and cache, as they were; new ones in their place
    EXPECT_EQ(read_file(run + "/teacher.earlier-1/done.json"), teacher_done);
    EXPECT_EQ(read_file(run + "/cache.earlier-1/header.json"), cache_header);
    EXPECT_NE(read_file(run + "/teacher/done.json"), teacher_done);
    EXPECT_EQ(json::parse(read_file(run + "/teacher/done.json"))["steps"], 5);
    const std::string err = read_file(run + "/../err.txt");
    EXPECT_NE(err.find("kept it as " + run + "/teacher.earlier-1"), std::string::npos) << err;
    // the students trained from the teacher's caches: retrained, the earlier ones kept aside; the
    // baseline (no teacher) reused as it is; the sequence-level ones are keyed by their dataset,
    // which is keyed by the teacher, so they are new directories
    const std::string kd = r["models"][1]["run_dir"], base = r["models"][2]["run_dir"];
    const std::string top20 = r["models"][4]["run_dir"];
    EXPECT_EQ(r2["models"][1]["run_dir"], kd);
    EXPECT_EQ(r2["models"][4]["run_dir"], top20);
    for (const std::string& dir : {kd, top20}) {
        EXPECT_EQ(read_file(dir + ".earlier-1/done.json"), done[dir]) << dir;
        EXPECT_NE(read_file(dir + "/done.json"), done[dir]) << dir;
    }
    EXPECT_EQ(read_file(base + "/done.json"), done[base]);
    EXPECT_FALSE(dir_exists(base + ".earlier-1"));
    EXPECT_EQ(r2["models"][2]["bpb"], r["models"][2]["bpb"]);
    // the API cache's teacher is the served name and the server's system_fingerprint, which the
    // new weights changed
    const json top20_now = json::parse(read_file(top20 + "/run.json"))["teacher"]["cache"];
    const json top20_was = json::parse(read_file(top20 + ".earlier-1/run.json"))["teacher"]["cache"];
    EXPECT_EQ(top20_now.get<std::string>().rfind("api:teacher@fp_", 0), 0u) << top20_now;
    EXPECT_NE(top20_now, top20_was);
    EXPECT_NE(r2["models"][3]["run_dir"], r["models"][3]["run_dir"]);
}
