// End-to-end through the `distill` binary: pretraining with kill -9 and exact resume, eval,
// tokenize / score, and bad input (every case a clear error and a non-zero exit, no crash).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "io/safetensors.h"
#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;
using nlohmann::json;

namespace {

std::string corpus(size_t bytes, uint64_t seed) {
    return word_text(bytes, seed, {"the", "of", "and", "to", "her", "she", "was", "in", "it", "not",
                                   "be", "that", "Elizabeth", "Darcy", "said", "had", "could",
                                   "would", "very", "much", "Mr.", "Mrs.", "Bennet", "he"});
}

struct Fixture {
    std::string dir;
    Fixture() {
        dir = temp_dir("cli");
        write_file_atomic(dir + "/train.txt", corpus(60000, 1));
        write_file_atomic(dir + "/heldout.txt", corpus(4000, 2));
        write_file_atomic(dir + "/config.json",
                          R"({"model_type":"llama","hidden_size":32,"num_hidden_layers":2,
                              "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":64,
                              "max_position_embeddings":128,"tie_word_embeddings":true})");
        EXPECT_EQ(run_distill("train-tokenizer --text " + dir + "/train.txt --vocab-size 300 --out " +
                              dir + "/tok.json"),
                  0);
        EXPECT_EQ(run_distill("prepare --tokenizer " + dir + "/tok.json --text " + dir +
                              "/train.txt --out " + dir + "/train"),
                  0);
    }
    // A model trained for two steps (enough to have a model directory), in run dir `name`.
    std::string small_model(const std::string& name) const {
        const std::string run = dir + "/" + name;
        EXPECT_EQ(run_distill("--threads 1 pretrain --config " + dir + "/config.json --tokenizer " + dir +
                              "/tok.json --data " + dir + "/train --run-dir " + run +
                              " --steps 2 --batch-size 2 --seq-len 16"),
                  0);
        return run;
    }
    std::string pretrain_args(const std::string& run) const {
        return "--threads 1 pretrain --config " + dir + "/config.json --tokenizer " + dir +
               "/tok.json --data " + dir + "/train --run-dir " + run +
               " --steps 60 --batch-size 4 --seq-len 32 --checkpoint-every 10 --log-every 10";
    }
};

Fixture& fixture() {
    static Fixture f;
    return f;
}

std::vector<json> read_jsonl(const std::string& path) {
    std::vector<json> out;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) out.push_back(json::parse(line));
    return out;
}

// Runs distill with args and expects a non-zero exit and stderr containing `needle`.
void expect_cli_error(const std::string& args, const std::string& needle) {
    const std::string err = fixture().dir + "/stderr.txt";
    int rc = run_distill(args, "/dev/null", err);
    std::string msg = read_file(err);
    EXPECT_NE(rc, 0) << args;
    EXPECT_LT(rc, 128) << "crashed (signal) on: " << args << "\n" << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << args << "\nstderr: " << msg;
}

}  // namespace

TEST(Cli, PretrainKilledAndResumedEqualsUninterrupted) {
    Fixture& f = fixture();
    const std::string a = f.dir + "/run-a", b = f.dir + "/run-b";
    ASSERT_EQ(run_distill(f.pretrain_args(a)), 0);

    // Start the same run, kill -9 it as soon as its first checkpoint exists, then re-run.
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        std::string cmd = std::string(DISTILL_BINARY) + " --quiet " + f.pretrain_args(b) + " 2>/dev/null";
        execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), nullptr);
        _exit(127);
    }
    bool killed = false;
    for (int i = 0; i < 6000 && !killed; ++i) {
        if (file_exists(b + "/checkpoint/state.json")) {
            ::kill(pid, SIGKILL);
            killed = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(killed) << "no checkpoint appeared";
    ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed";
    ASSERT_FALSE(file_exists(b + "/done.json"));

    ASSERT_EQ(run_distill(f.pretrain_args(b)), 0);
    SafetensorsFile wa(a + "/model/model.safetensors"), wb(b + "/model/model.safetensors");
    for (const auto& [name, e] : wa.entries())
        EXPECT_TRUE(torch::equal(wa.get(name), wb.get(name))) << name << " differs after resume";

    // metrics: every logged step exactly once
    auto ma = read_jsonl(a + "/metrics.jsonl"), mb = read_jsonl(b + "/metrics.jsonl");
    ASSERT_EQ(ma.size(), 6u);
    ASSERT_EQ(mb.size(), 6u);
    for (size_t i = 0; i < ma.size(); ++i) {
        EXPECT_EQ(ma[i]["step"], int64_t(10 * (i + 1)));
        EXPECT_EQ(mb[i]["step"], int64_t(10 * (i + 1)));
        EXPECT_DOUBLE_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>());
    }
    // the loss went down
    EXPECT_LT(ma.back()["loss"].get<double>(), ma.front()["loss"].get<double>());

    // a finished run is reused; a different setting in the same dir is refused
    ASSERT_EQ(run_distill(f.pretrain_args(a)), 0);
    expect_cli_error(f.pretrain_args(a) + " --lr 0.01", "different settings");
}

// --eval-text: held-out bpb in metrics.jsonl every --eval-every steps and at the last; the last
// point is what `distill eval` gives the final model with the same windows, and measuring it
// changes nothing in the training (the same weights as a run without it).
TEST(Cli, HeldoutCurveIsLoggedAndLeavesTrainingAlone) {
    Fixture& f = fixture();
    const std::string plain = f.dir + "/run-plain", curve = f.dir + "/run-curve";
    const std::string heldout = f.dir + "/heldout.txt";
    ASSERT_EQ(run_distill(f.pretrain_args(plain)), 0);
    ASSERT_EQ(run_distill(f.pretrain_args(curve) + " --eval-text " + heldout + " --eval-every 25"), 0);
    std::vector<int64_t> logged, evaluated;
    std::vector<double> bpb;
    for (const auto& l : read_jsonl(curve + "/metrics.jsonl")) {
        logged.push_back(l["step"].get<int64_t>());
        if (l.contains("heldout_bpb")) {
            evaluated.push_back(l["step"].get<int64_t>());
            bpb.push_back(l["heldout_bpb"].get<double>());
            EXPECT_GE(l["heldout_seconds"].get<double>(), 0.0);
        }
    }
    EXPECT_EQ(logged, (std::vector<int64_t>{10, 20, 25, 30, 40, 50, 60}));
    EXPECT_EQ(evaluated, (std::vector<int64_t>{25, 50, 60}));
    ASSERT_EQ(bpb.size(), 3u);
    EXPECT_LT(bpb.back(), bpb.front());
    SafetensorsFile wa(plain + "/model/model.safetensors"), wb(curve + "/model/model.safetensors");
    for (const auto& [name, e] : wa.entries())
        EXPECT_TRUE(torch::equal(wa.get(name), wb.get(name))) << name << " differs with the curve on";
    // the curve's windows are the training length, overlapping by half, batched as training
    const std::string out = f.dir + "/curve-eval.json";
    ASSERT_EQ(run_distill("--threads 1 eval --model " + curve + "/model --text " + heldout +
                          " --seq-len 32 --stride 16 --batch-size 4 --out " + out),
              0);
    EXPECT_NEAR(json::parse(read_file(out))["bits_per_byte"].get<double>(), bpb.back(), 1e-6);
    // turning the curve on does not make a finished run a different one: it is reused
    ASSERT_EQ(run_distill(f.pretrain_args(plain) + " --eval-text " + heldout), 0);
    // --eval-every without a text is a usage error; an empty text is refused before training
    EXPECT_EQ(run_distill(f.pretrain_args(f.dir + "/run-x") + " --eval-every 5", "/dev/null", "/dev/null"), 2);
    write_file_atomic(f.dir + "/empty.txt", "");
    expect_cli_error(f.pretrain_args(f.dir + "/run-y") + " --eval-text " + f.dir + "/empty.txt", "is empty");
    EXPECT_FALSE(dir_exists(f.dir + "/run-y/checkpoint"));
}

TEST(Cli, EvalAndScoreAgree) {
    Fixture& f = fixture();
    const std::string run = f.dir + "/run-a";
    if (!dir_exists(run + "/model")) {
        ASSERT_EQ(run_distill(f.pretrain_args(run)), 0);
    }
    const std::string out = f.dir + "/eval.json";
    ASSERT_EQ(run_distill("eval --model " + run + "/model --text " + f.dir +
                          "/heldout.txt --seq-len 32 --stride 16 --out " + out),
              0);
    json ev = json::parse(read_file(out));
    const double bpb = ev["bits_per_byte"].get<double>();
    EXPECT_GT(bpb, 0.5);
    EXPECT_LT(bpb, 8.0 * std::log2(300.0));
    // score prints every position's log-prob; their sum must give the same bits per byte
    const std::string sc = f.dir + "/score.jsonl";
    ASSERT_EQ(run_distill("score --model " + run + "/model --text " + f.dir +
                          "/heldout.txt --top-logprobs 3 --seq-len 32 --stride 16",
                          sc),
              0);
    auto lines = read_jsonl(sc);
    ASSERT_EQ(int64_t(lines.size()), ev["tokens"].get<int64_t>());
    double nats = 0;
    for (const auto& l : lines) {
        nats -= l["logprob"].get<double>();
        ASSERT_EQ(l["top"].size(), 3u);
        EXPECT_GE(l["top"][0][1].get<double>(), l["logprob"].get<double>() - 1e-9);
        EXPECT_GE(l["top"][0][1].get<double>(), l["top"][1][1].get<double>());
    }
    const double bytes = double(read_file(f.dir + "/heldout.txt").size());
    EXPECT_NEAR(nats / std::log(2.0) / bytes, bpb, 1e-6);
}

TEST(Cli, TokenizeRoundTripsAndJsonl) {
    Fixture& f = fixture();
    const std::string text = f.dir + "/t.txt", ids = f.dir + "/ids.json", back = f.dir + "/back.txt";
    write_file_atomic(text, "Elizabeth said: \"Mr. Darcy!\"\n\ttabs  and unicode \xC3\xA9\xE2\x9C\x93");
    ASSERT_EQ(run("'" + std::string(DISTILL_BINARY) + "' tokenize --tokenizer " + f.dir +
                  "/tok.json < " + text + " > " + ids),
              0);
    ASSERT_TRUE(json::parse(read_file(ids)).is_array());
    ASSERT_EQ(run("'" + std::string(DISTILL_BINARY) + "' tokenize --decode --tokenizer " + f.dir +
                  "/tok.json < " + ids + " > " + back),
              0);
    EXPECT_EQ(read_file(back), read_file(text));
    // --jsonl: one array per input line, same ids as one-at-a-time
    write_file_atomic(f.dir + "/in.jsonl", "\"the cat\"\n\"\\n\\n  x\"\n\"\"\n");
    ASSERT_EQ(run("'" + std::string(DISTILL_BINARY) + "' tokenize --jsonl --tokenizer " + f.dir +
                  "/tok.json < " + f.dir + "/in.jsonl > " + f.dir + "/out.jsonl"),
              0);
    auto lines = read_jsonl(f.dir + "/out.jsonl");
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_TRUE(lines[2].empty());
    EXPECT_FALSE(lines[0].empty());
}

TEST(Cli, BadInputGivesClearErrors) {
    Fixture& f = fixture();
    const std::string d = f.dir;
    expect_cli_error("tokenize --tokenizer " + d + "/tok.json --no-such-flag", "no-such-flag");
    expect_cli_error("eval --model " + d + "/missing --text " + d + "/heldout.txt", "does not exist");
    // corrupt tokenizer.json
    write_file_atomic(d + "/bad-tok.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": 3");
    expect_cli_error("tokenize --tokenizer " + d + "/bad-tok.json", "bad-tok.json");
    // truncated shard
    std::string bin = read_file(d + "/train.bin");
    make_dirs(d + "/trunc");
    write_file_atomic(d + "/trunc/train.bin", bin.substr(0, bin.size() - 3));
    write_file_atomic(d + "/trunc/train.json", read_file(d + "/train.json"));
    expect_cli_error("pretrain --config " + d + "/config.json --tokenizer " + d + "/tok.json --data " +
                         d + "/trunc/train --run-dir " + d + "/run-trunc --steps 2",
                     "truncated");
    // a config whose shapes do not fit
    write_file_atomic(d + "/bad-config.json",
                      R"({"hidden_size":30,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8})");
    expect_cli_error("pretrain --config " + d + "/bad-config.json --tokenizer " + d + "/tok.json --data " +
                         d + "/train --run-dir " + d + "/run-bad --steps 2",
                     "not divisible");
    // a shard made with another tokenizer
    ASSERT_EQ(run_distill("train-tokenizer --text " + d + "/heldout.txt --vocab-size 280 --out " + d +
                          "/tok2.json"),
              0);
    expect_cli_error("pretrain --config " + d + "/config.json --tokenizer " + d + "/tok2.json --data " +
                         d + "/train --run-dir " + d + "/run-tok2 --steps 2",
                     "another tokenizer");
    // malformed JSON lines for tokenize --jsonl
    write_file_atomic(d + "/bad.jsonl", "\"ok\"\n{broken\n");
    const std::string err = d + "/stderr2.txt";
    int rc = run("'" + std::string(DISTILL_BINARY) + "' tokenize --jsonl --tokenizer " + d +
                 "/tok.json < " + d + "/bad.jsonl > /dev/null 2> " + err);
    EXPECT_EQ(rc, 1);
    EXPECT_NE(read_file(err).find("line 2"), std::string::npos) << read_file(err);
}

TEST(Cli, PrepareCreatesMissingFolders) {
    Fixture& f = fixture();
    const std::string out = f.dir + "/new/nested/data/train";
    ASSERT_EQ(run_distill("prepare --tokenizer " + f.dir + "/tok.json --text " + f.dir + "/heldout.txt --out " + out +
                          " --heldout-fraction 0.2 --heldout-out " + f.dir + "/other/new/held.txt"),
              0);
    EXPECT_TRUE(file_exists(out + ".bin"));
    EXPECT_TRUE(file_exists(out + ".json"));
    EXPECT_TRUE(file_exists(f.dir + "/other/new/held.txt"));
}

TEST(Cli, ExportNeverDeletesFilesItDidNotWrite) {
    Fixture& f = fixture();
    const std::string run = f.small_model("run-export");
    // a directory with the user's own files: refused, and the files are still there
    const std::string target = f.dir + "/mine";
    write_file_atomic(target + "/notes.txt", "my notes");
    write_file_atomic(target + "/config.json", "{\"mine\": true}");
    expect_cli_error("export --model " + run + "/model --format hf --out " + target, "not empty");
    EXPECT_EQ(read_file(target + "/notes.txt"), "my notes");
    EXPECT_EQ(read_file(target + "/config.json"), "{\"mine\": true}");
    // a new directory, and an existing empty one, are written
    ASSERT_EQ(run_distill("export --model " + run + "/model --format hf --out " + f.dir + "/fresh/hf"), 0);
    EXPECT_TRUE(file_exists(f.dir + "/fresh/hf/model.safetensors"));
    make_dirs(f.dir + "/empty");
    ASSERT_EQ(run_distill("export --model " + run + "/model --format hf --out " + f.dir + "/empty"), 0);
    EXPECT_TRUE(file_exists(f.dir + "/empty/tokenizer.json"));
}

TEST(Cli, GenerateStopsOnTheModelsEosIds) {
    // A model directory whose config lists eos ids as Llama 3.1 does, and whose
    // generation_config.json names the ids generation stops on.
    Fixture& f = fixture();
    const std::string run = f.small_model("run-eos");
    const std::string m = run + "/model";
    // greedy decoding of 12 tokens, as token ids: the reference continuation
    auto greedy_ids = [&](const std::string& model) {
        const std::string out = f.dir + "/gen.txt";
        EXPECT_EQ(run_distill("generate --model " + model + " --prompt 'the' -n 12 --temperature 0", out), 0);
        std::string text = read_file(out);
        if (!text.empty() && text.back() == '\n') text.pop_back();
        return text;
    };
    const std::string full = greedy_ids(m);
    ASSERT_GT(full.size(), 3u);
    json all_ids = json::array();
    for (int i = 0; i < 300; ++i) all_ids.push_back(i);
    // eos_token_id as a list in config.json (as Llama 3.1 ships it): every id ends generation, so
    // exactly one token comes out
    json cfg = json::parse(read_file(m + "/config.json"));
    cfg["eos_token_id"] = all_ids;
    write_file_atomic(m + "/config.json", cfg.dump());
    const std::string one = greedy_ids(m);
    EXPECT_LT(one.size(), full.size()) << "generation did not stop on the config's eos ids";
    EXPECT_EQ(full.compare(0, one.size(), one), 0) << one;
    // generation_config.json overrides config.json: with ids the vocabulary never samples (none),
    // generation runs to -n again
    cfg["eos_token_id"] = json::array({299, 298});
    write_file_atomic(m + "/config.json", cfg.dump());
    write_file_atomic(m + "/generation_config.json", json({{"eos_token_id", all_ids}}).dump());
    EXPECT_EQ(greedy_ids(m), one) << "generation_config.json's eos ids were not used";
    write_file_atomic(m + "/generation_config.json", json({{"eos_token_id", 100000}}).dump());
    EXPECT_EQ(greedy_ids(m), full);
}
