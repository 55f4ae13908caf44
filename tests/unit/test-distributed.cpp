// Data parallel on c10d (src/train/distributed.cpp): 2 and 4 processes started with the torchrun
// environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) against one process at the same global
// batch, and the errors of ranks that do not fit together, each within --dist-timeout.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 0;
    socklen_t n = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
    close(fd);
    return ntohs(a.sin_port);
}

struct Fixture {
    std::string dir;
    std::string args;  // train ARGS without --run-dir
};

Fixture make_fixture(const std::string& name) {
    Fixture f;
    f.dir = temp_dir(name);
    const std::string text = word_text(40000, 3, {"the", "house", "was", "quiet", "and", "Anne", "walked", "to",
                                                  "Bath", "with", "her", "sister"});
    write_file_atomic(f.dir + "/text.txt", text);
    EXPECT_EQ(run_distill("train-tokenizer --text " + f.dir + "/text.txt --vocab-size 300 -o " + f.dir + "/tok.json"), 0);
    EXPECT_EQ(run_distill("prepare --text " + f.dir + "/text.txt --tokenizer " + f.dir + "/tok.json -o " + f.dir +
                          "/data"),
              0);
    write_file_atomic(f.dir + "/student.json",
                      nlohmann::json{{"hidden_size", 32}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                                     {"num_key_value_heads", 2}, {"intermediate_size", 48},
                                     {"max_position_embeddings", 64}}
                          .dump());
    f.args = "train --loss ce --config " + f.dir + "/student.json --tokenizer " + f.dir + "/tok.json --data " + f.dir +
             "/data --steps 12 --batch-size 8 --seq-len 32 --warmup 2 --checkpoint-every 4";
    return f;
}

// Starts `world` ranks of `distill ARGS` with the torchrun environment; returns each rank's status.
std::vector<int> run_ranks(int world, const std::string& args, const std::string& log_prefix,
                           const std::vector<std::string>& extra_per_rank = {}) {
    const int port = free_port();
    std::string cmd = "pids=''; ";
    for (int r = 0; r < world; ++r) {
        const std::string extra = r < static_cast<int>(extra_per_rank.size()) ? extra_per_rank[r] : "";
        cmd += "RANK=" + std::to_string(r) + " LOCAL_RANK=" + std::to_string(r) + " WORLD_SIZE=" +
               std::to_string(world) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
               DISTILL_BINARY + " --threads 1 --quiet " + args + " --dist-timeout 30 " + extra + " > " + log_prefix + std::to_string(r) +
               ".log 2>&1 & pids=\"$pids $!\"; ";
    }
    cmd += "i=0; for p in $pids; do wait $p; echo $? > " + log_prefix + "rc$i; i=$((i+1)); done";
    run("bash -c '" + cmd + "'");
    std::vector<int> rcs;
    for (int r = 0; r < world; ++r) rcs.push_back(std::stoi(read_file(log_prefix + "rc" + std::to_string(r))));
    return rcs;
}

double max_weight_diff(const std::string& a, const std::string& b) {
    SafetensorsFile fa(a), fb(b);
    double d = 0;
    for (const auto& [name, entry] : fa.entries()) {
        auto x = fa.get(name, torch::kFloat64), y = fb.get(name, torch::kFloat64);
        d = std::max(d, (x - y).abs().max().item<double>());
    }
    return d;
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// the last line of a run's metrics.jsonl
nlohmann::json last_metrics(const std::string& run_dir) {
    std::ifstream m(run_dir + "/metrics.jsonl");
    std::string line, last;
    while (std::getline(m, line)) last = line;
    return last.empty() ? nlohmann::json() : nlohmann::json::parse(last);
}

}  // namespace

// 2 and 4 processes at the same global batch of 8 rows end with the weights of one process. The
// rows are the same; what differs is the order of the float32 sums (each rank's mean over its
// rows, then the all-reduce's average): a few ulps per step. Bound: 1e-5 absolute after 12 steps
// of Adam at lr 3e-4 on weights of size ~0.02-1 (measured: < 1e-7).
TEST(Distributed, TwoAndFourRanksGiveTheWeightsOfOne) {
    Fixture f = make_fixture("ddp-equal");
    ASSERT_EQ(run_distill("--threads 1 " + f.args + " --run-dir " + f.dir + "/r1", "", f.dir + "/err1"), 0)
        << read_file(f.dir + "/err1");
    for (int world : {2, 4}) {
        const std::string rd = f.dir + "/r" + std::to_string(world);
        const auto rcs = run_ranks(world, f.args + " --run-dir " + rd, rd + "-rank");
        for (int r = 0; r < world; ++r) ASSERT_EQ(rcs[r], 0) << "rank " << r << ": " << read_file(rd + "-rank" + std::to_string(r) + ".log");
        const double d = max_weight_diff(f.dir + "/r1/model/model.safetensors", rd + "/model/model.safetensors");
        EXPECT_LT(d, 1e-5) << world << " ranks";
        // rank 0 logged every step of the job, as a job of `world` ranks
        const auto j = last_metrics(rd);
        ASSERT_FALSE(j.is_null());
        EXPECT_EQ(j["step"], 12) << j.dump();
        EXPECT_EQ(j["world_size"], world) << j.dump();
    }
    // with gradient accumulation (the all-reduce starts during the second micro-batch's
    // backward), and with the all-reduce after backward: the same weights again
    ASSERT_EQ(run_distill("--threads 1 " + f.args + " --grad-accum 2 --run-dir " + f.dir + "/a1", "", f.dir + "/erra"), 0)
        << read_file(f.dir + "/erra");
    for (const std::string flags : {"--grad-accum 2", "--grad-accum 2 --dist-no-overlap"}) {
        const std::string rd = f.dir + "/a2" + std::to_string(flags.size());
        const auto rcs = run_ranks(2, f.args + " " + flags + " --run-dir " + rd, rd + "-rank");
        for (int r = 0; r < 2; ++r) ASSERT_EQ(rcs[r], 0) << flags << ": " << read_file(rd + "-rank" + std::to_string(r) + ".log");
        EXPECT_LT(max_weight_diff(f.dir + "/a1/model/model.safetensors", rd + "/model/model.safetensors"), 1e-5) << flags;
    }
}

// Ranks started with different settings, a batch that does not split, a rank 0 on a port in use,
// and a rank 0 that never comes: every rank exits non-zero, with a message that says what to
// fix, within the timeout.
TEST(Distributed, RanksThatDoNotFitFailClearly) {
    Fixture f = make_fixture("ddp-errors");
    {
        const std::string p = f.dir + "/lr-";
        const auto rcs = run_ranks(2, f.args + " --run-dir " + f.dir + "/lr", p, {"--lr 0.001", "--lr 0.002"});
        for (int r = 0; r < 2; ++r) {
            EXPECT_NE(rcs[r], 0) << r;
            EXPECT_TRUE(contains(read_file(p + std::to_string(r) + ".log"), "different settings")) << read_file(p + std::to_string(r) + ".log");
        }
    }
    {
        const std::string p = f.dir + "/split-";
        const auto rcs = run_ranks(3, f.args + " --run-dir " + f.dir + "/split", p);
        for (int r = 0; r < 3; ++r) {
            EXPECT_EQ(rcs[r], 2) << r;
            EXPECT_TRUE(contains(read_file(p + std::to_string(r) + ".log"), "WORLD_SIZE=3")) << read_file(p + std::to_string(r) + ".log");
        }
    }
    {
        // rank 0 on a port another program listens on
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        a.sin_port = 0;
        ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        ASSERT_EQ(listen(fd, 4), 0);
        socklen_t n = sizeof a;
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
        const int busy = ntohs(a.sin_port);
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = run("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(busy) + " " +
                           DISTILL_BINARY + " --quiet " + f.args + " --dist-timeout 3 --run-dir " + f.dir +
                           "/busy > " + f.dir + "/busy.log 2>&1");
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        close(fd);
        EXPECT_EQ(rc, 1) << read_file(f.dir + "/busy.log");
        EXPECT_TRUE(contains(read_file(f.dir + "/busy.log"), "port in use")) << read_file(f.dir + "/busy.log");
        EXPECT_LT(secs, 30);
    }
    {
        // rank 1 alone: nobody hosts the store
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = run("RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) + " " +
                           DISTILL_BINARY + " --quiet " + f.args + " --dist-timeout 3 --run-dir " + f.dir +
                           "/alone > " + f.dir + "/alone.log 2>&1");
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_EQ(rc, 1) << read_file(f.dir + "/alone.log");
        EXPECT_TRUE(contains(read_file(f.dir + "/alone.log"), "MASTER_ADDR")) << read_file(f.dir + "/alone.log");
        EXPECT_LT(secs, 30);
    }
}


// The same job started three more ways: `distill launch -n 2`, torchrun (the PyTorch launcher,
// Debian's python3-torch), and two launchers as two "machines" (--nnodes 2) on loopback. Each
// ends with the weights of one process (bound and reason as above).
TEST(Distributed, LaunchAndTorchrunStartTheSameJob) {
    Fixture f = make_fixture("ddp-launch");
    ASSERT_EQ(run_distill("--threads 1 " + f.args + " --run-dir " + f.dir + "/r1", "", f.dir + "/err1"), 0)
        << read_file(f.dir + "/err1");
    const std::string one = f.dir + "/r1/model/model.safetensors";
    const std::string bin = DISTILL_BINARY;
    {
        const std::string rd = f.dir + "/launch";
        ASSERT_EQ(run(bin + " launch -n 2 " + f.args + " --threads 1 --run-dir " + rd + " > " + rd + ".out 2> " + rd +
                      ".err"),
                  0)
            << read_file(rd + ".err");
        EXPECT_LT(max_weight_diff(one, rd + "/model/model.safetensors"), 1e-5);
        EXPECT_EQ(last_metrics(rd)["world_size"], 2);
        // rank 1's lines come through the launcher, prefixed; the result line is rank 0's alone
        EXPECT_TRUE(contains(read_file(rd + ".err"), "[rank 1] distill: train: rank 1 of 2")) << read_file(rd + ".err");
        EXPECT_TRUE(contains(read_file(rd + ".out"), "\"steps\":12")) << read_file(rd + ".out");
    }
    {
        const std::string rd = f.dir + "/torchrun";
        ASSERT_EQ(run("command -v torchrun > /dev/null"), 0) << "torchrun is missing: apt-get install python3-torch";
        // Debian's torchrun 1.13 on Python 3.11 fails in its log setup without --redirects/--tee
        const int rc = run("OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 --master_port " + std::to_string(free_port()) +
                           " --redirects 1 --tee 1 --log_dir " + f.dir + "/torchrun-logs --no_python " + bin +
                           " --threads 1 --quiet " + f.args + " --run-dir " + rd + " > " + rd + ".log 2>&1");
        ASSERT_EQ(rc, 0) << read_file(rd + ".log");
        EXPECT_LT(max_weight_diff(one, rd + "/model/model.safetensors"), 1e-5);
        EXPECT_EQ(last_metrics(rd)["world_size"], 2);
    }
    {
        const std::string rd = f.dir + "/nodes";
        const std::string port = std::to_string(free_port());
        const std::string common = bin + " launch -n 1 --nnodes 2 --master-addr 127.0.0.1 --master-port " + port;
        const int rc = run("bash -c '" + common + " --node-rank 1 --log-dir " + rd + "-logs " + f.args +
                           " --threads 1 --dist-timeout 30 --run-dir " + rd + " > " + rd + ".1 2>&1 & p=$!; " + common +
                           " --node-rank 0 " + f.args + " --threads 1 --dist-timeout 30 --run-dir " + rd + " > " + rd +
                           ".0 2>&1; a=$?; wait $p; b=$?; exit $((a + b))'");
        ASSERT_EQ(rc, 0) << read_file(rd + ".0") << read_file(rd + ".1");
        EXPECT_LT(max_weight_diff(one, rd + "/model/model.safetensors"), 1e-5);
        // the second machine's rank 0 is the job's rank 1, and its output went to its log
        EXPECT_TRUE(contains(read_file(rd + "-logs/rank-1.log"), "rank 1 of 2")) << read_file(rd + "-logs/rank-1.log");
    }
}

// kill -9 of a rank mid-run: the launcher stops the other rank promptly and fails; the same
// command again resumes from rank 0's last checkpoint and ends with the weights the uninterrupted
// job has, to the bit (the same rows, reduced in the same order). With --max-restarts 1 the
// launcher restarts the job itself after rank 0 is killed, to the same weights.
TEST(Distributed, AKilledRankResumesToTheSameWeights) {
    Fixture f = make_fixture("ddp-kill");
    const std::string args = "train --loss ce --config " + f.dir + "/student.json --tokenizer " + f.dir +
                             "/tok.json --data " + f.dir + "/data --steps 400 --batch-size 8 --seq-len 32 --warmup 2 "
                             "--checkpoint-every 10 --threads 1 --dist-timeout 30";
    const std::string bin = DISTILL_BINARY;
    ASSERT_EQ(run(bin + " --quiet launch -n 2 " + args + " --run-dir " + f.dir + "/whole > /dev/null 2> " + f.dir +
                  "/whole.err"),
              0)
        << read_file(f.dir + "/whole.err");
    ASSERT_EQ(run_distill(args + " --run-dir " + f.dir + "/one", "", f.dir + "/one.err"), 0) << read_file(f.dir + "/one.err");
    const std::string whole = f.dir + "/whole/model/model.safetensors";

    // starts the launcher, waits for the first checkpoint, kill -9 the rank with RANK=<victim>
    // (found through /proc, not through the launcher's output); returns the launcher's status
    auto run_and_kill = [&](const std::string& launch_flags, const std::string& rd, int victim) {
        const std::string script = f.dir + "/kill.sh";
        write_file_atomic(script,
                          bin + " launch -n 2 " + launch_flags + " " + args + " --run-dir " + rd + " > " + rd + ".out 2> " +
                              rd + ".err & L=$!\n"
                              "for i in $(seq 2000); do [ -f " + rd + "/checkpoint/state.json ] && break; sleep 0.01; done\n"
                              "for c in $(cat /proc/$L/task/$L/children); do\n"
                              "  if tr '\\0' '\\n' < /proc/$c/environ | grep -qx RANK=" + std::to_string(victim) +
                              "; then kill -9 $c; echo killed > " + rd + ".killed; fi\n"
                              "done\n"
                              "wait $L\n");
        return run("bash " + script);
    };

    {
        const std::string rd = f.dir + "/killed";
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = run_and_kill("", rd, 1);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ASSERT_TRUE(file_exists(rd + ".killed")) << "rank 1 was not found to kill: " << read_file(rd + ".err");
        EXPECT_NE(rc, 0) << read_file(rd + ".err");
        const std::string err = read_file(rd + ".err");
        EXPECT_TRUE(contains(err, "rank 1") && contains(err, "killed by signal 9")) << err;
        EXPECT_TRUE(contains(err, "resumes from the last checkpoint")) << err;
        EXPECT_LT(secs, 60) << "the surviving rank did not stop promptly";
        EXPECT_FALSE(file_exists(rd + "/done.json")) << "the job finished before the kill: make it longer";
        // the same command again
        ASSERT_EQ(run(bin + " launch -n 2 " + args + " --run-dir " + rd + " > " + rd + ".out2 2> " + rd + ".err2"), 0)
            << read_file(rd + ".err2");
        EXPECT_TRUE(contains(read_file(rd + ".err2"), "resuming from the checkpoint at step")) << read_file(rd + ".err2");
        EXPECT_EQ(max_weight_diff(whole, rd + "/model/model.safetensors"), 0.0);
        const double d_one = max_weight_diff(f.dir + "/one/model/model.safetensors", rd + "/model/model.safetensors");
        std::printf("[ddp-kill] after 400 steps, 1 process vs the resumed 2-rank job: max |dw| = %.3g\n", d_one);
        // Not bit-equal (the ranks sum their rows in another order), and over 400 Adam steps the
        // rounding is amplified: measured 3.9e-6 with libtorch's ops and 1.1e-5 to 1.3e-5 with the
        // fused kernels, whichever one of them is switched off. A tenth of one lr step bounds it;
        // TwoAndFourRanksGiveTheWeightsOfOne checks the equivalence itself at 1e-5.
        EXPECT_LT(d_one, 3e-4);
        EXPECT_EQ(last_metrics(rd)["step"], 400);
    }
    {
        const std::string rd = f.dir + "/restarted";
        const int rc = run_and_kill("--max-restarts 1", rd, 0);
        ASSERT_TRUE(file_exists(rd + ".killed")) << "rank 0 was not found to kill: " << read_file(rd + ".err");
        const std::string err = read_file(rd + ".err");
        ASSERT_EQ(rc, 0) << err;
        EXPECT_TRUE(contains(err, "rank 0") && contains(err, "killed by signal 9")) << err;
        EXPECT_TRUE(contains(err, "restarting the job (restart 1 of 1)")) << err;
        EXPECT_TRUE(contains(err, "resuming from the checkpoint at step")) << err;
        EXPECT_EQ(max_weight_diff(whole, rd + "/model/model.safetensors"), 0.0);
    }
}

// Capture split across ranks: 2 and 3 ranks (windows that do not divide evenly) write the cache
// one process writes, byte for byte (each window's forward has the same shape). Then students
// distilled from that cache on 1 and 2 ranks end with the same weights (each rank reads its
// rows of the cache), and so do on-policy students (each rank samples its rows with the row's
// own generator, as one process does).
TEST(Distributed, CaptureSplitAcrossRanksWritesTheSameCache) {
    Fixture f = make_fixture("ddp-capture");
    write_file_atomic(f.dir + "/teacher.json",
                      nlohmann::json{{"hidden_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                                     {"num_key_value_heads", 2}, {"intermediate_size", 96},
                                     {"max_position_embeddings", 64}}
                          .dump());
    ASSERT_EQ(run_distill("--threads 1 pretrain --config " + f.dir + "/teacher.json --tokenizer " + f.dir +
                              "/tok.json --data " + f.dir + "/data --steps 20 --batch-size 8 --seq-len 32 --run-dir " +
                              f.dir + "/teacher",
                          "", f.dir + "/teacher.err"),
              0)
        << read_file(f.dir + "/teacher.err");
    const std::string cap = "capture --teacher " + f.dir + "/teacher/model --data " + f.dir +
                            "/data --seq-len 32 --batch-size 4 --threads 1";
    ASSERT_EQ(run_distill(cap + " -o " + f.dir + "/c1", f.dir + "/c1.out", f.dir + "/c1.err"), 0) << read_file(f.dir + "/c1.err");
    const int64_t windows = nlohmann::json::parse(read_file(f.dir + "/c1.out"))["windows"];
    ASSERT_NE(windows % 8, 0) << "the test wants a last round that 2 ranks of 4 windows do not fill";
    const std::string bin = DISTILL_BINARY;
    for (int n : {2, 3}) {
        const std::string out = f.dir + "/c" + std::to_string(n);
        ASSERT_EQ(run(bin + " --quiet launch -n " + std::to_string(n) + " " + cap + " -o " + out + " > " + out +
                      ".out 2> " + out + ".err"),
                  0)
            << read_file(out + ".err");
        EXPECT_TRUE(read_file(f.dir + "/c1/data.bin") == read_file(out + "/data.bin")) << n << " ranks";
        EXPECT_EQ(nlohmann::json::parse(read_file(out + ".out"))["windows"], windows) << read_file(out + ".out");
    }
    const std::string kd = "train --loss fkl --ce-weight 0.5 --cache " + f.dir + "/c1 --config " + f.dir +
                           "/student.json --tokenizer " + f.dir + "/tok.json --data " + f.dir +
                           "/data --steps 10 --batch-size 8 --seq-len 32 --warmup 2 --threads 1";
    ASSERT_EQ(run_distill(kd + " --run-dir " + f.dir + "/kd1", "", f.dir + "/kd1.err"), 0) << read_file(f.dir + "/kd1.err");
    ASSERT_EQ(run(bin + " --quiet launch -n 2 " + kd + " --run-dir " + f.dir + "/kd2 > /dev/null 2> " + f.dir + "/kd2.err"), 0)
        << read_file(f.dir + "/kd2.err");
    EXPECT_LT(max_weight_diff(f.dir + "/kd1/model/model.safetensors", f.dir + "/kd2/model/model.safetensors"), 1e-5);

    const std::string op = "train --loss fkl --teacher " + f.dir + "/teacher/model --on-policy 0.5 --max-new-tokens 8 "
                           "--config " + f.dir + "/student.json --data " + f.dir +
                           "/data --steps 10 --batch-size 8 --seq-len 32 --warmup 2 --threads 1";
    ASSERT_EQ(run_distill(op + " --run-dir " + f.dir + "/op1", "", f.dir + "/op1.err"), 0) << read_file(f.dir + "/op1.err");
    ASSERT_EQ(run(bin + " --quiet launch -n 2 " + op + " --run-dir " + f.dir + "/op2 > /dev/null 2> " + f.dir + "/op2.err"), 0)
        << read_file(f.dir + "/op2.err");
    // Looser than the offline bound: each on-policy step runs the student's sampling forward and the
    // teacher's forward at a batch shape of 4 rows instead of 8, so float rounding differs in more
    // places, and Adam turns gradients that are rounding noise into steps of up to lr (3e-3). One
    // CI machine measured 2.3e-5 here. The bound stays under a tenth of one step of lr: a sampled
    // token that differed, or a rank that read the wrong rows, changes the gradient itself.
    EXPECT_LT(max_weight_diff(f.dir + "/op1/model/model.safetensors", f.dir + "/op2/model/model.safetensors"), 2e-4);
    // both ran on-policy batches, and counted the same tokens
    const auto m1 = last_metrics(f.dir + "/op1"), m2 = last_metrics(f.dir + "/op2");
    EXPECT_EQ(m1["tokens"], m2["tokens"]);
    EXPECT_EQ(m1.value("on_policy", -1.0), m2.value("on_policy", -2.0));
}

// Across tokenizers on 2 ranks: the student's tokenizer is trained on other words than the
// teacher's, so 81-86 % of the positions align and the ranks' shares of aligned positions
// differ. The KD term is divided by the whole batch's count, so 2 ranks end with one process's
// weights within 1e-5 (dividing by each rank's own count instead, as plain DDP averaging of
// per-rank means would, fails this test at 3.4e-3).
TEST(Distributed, CrossTokenizerRanksShareOneDenominator) {
    const std::string d = temp_dir("ddp-xtok");
    write_file_atomic(d + "/a.txt", word_text(50000, 5, {"the", "house", "was", "quiet", "and", "Anne", "walked", "to",
                                                         "Bath", "with", "her", "sister", "at", "evening", "Captain",
                                                         "Wentworth", "said", "nothing"}));
    write_file_atomic(d + "/b.txt",
                      word_text(50000, 6, {"thereupon", "housekeeping", "wasteful", "quietly", "andante", "annexed",
                                           "walkway", "together", "bathing", "without", "hers", "sisterly", "attic",
                                           "evenings", "captains", "sayings", "nothingness"}));
    ASSERT_EQ(run_distill("train-tokenizer --text " + d + "/a.txt --vocab-size 280 -o " + d + "/ttok.json"), 0);
    ASSERT_EQ(run_distill("train-tokenizer --text " + d + "/b.txt --vocab-size 400 -o " + d + "/stok.json"), 0);
    ASSERT_EQ(run_distill("prepare --text " + d + "/a.txt --tokenizer " + d + "/ttok.json -o " + d + "/tdata"), 0);
    ASSERT_EQ(run_distill("prepare --text " + d + "/a.txt --tokenizer " + d + "/stok.json -o " + d + "/sdata"), 0);
    write_file_atomic(d + "/cfg.json", nlohmann::json{{"hidden_size", 32}, {"num_hidden_layers", 1},
                                                      {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                                      {"intermediate_size", 48}, {"max_position_embeddings", 64}}
                                           .dump());
    ASSERT_EQ(run_distill("--threads 1 pretrain --config " + d + "/cfg.json --tokenizer " + d + "/ttok.json --data " + d +
                          "/tdata --steps 3 --batch-size 4 --seq-len 32 --run-dir " + d + "/teacher"),
              0);
    ASSERT_EQ(run_distill("--threads 1 capture --teacher " + d + "/teacher/model --data " + d + "/tdata --seq-len 32 -o " +
                          d + "/cache"),
              0);
    const std::string xt = "train --config " + d + "/cfg.json --tokenizer " + d + "/stok.json --data " + d +
                           "/sdata --cache " + d + "/cache --teacher-data " + d + "/tdata --teacher-tokenizer " + d +
                           "/ttok.json --steps 10 --batch-size 4 --seq-len 24 --lr 0.003 --warmup 2 --threads 1 "
                           "--log-every 1";
    ASSERT_EQ(run_distill(xt + " --run-dir " + d + "/one", "", d + "/one.err"), 0) << read_file(d + "/one.err");
    ASSERT_EQ(run(std::string(DISTILL_BINARY) + " --quiet launch -n 2 " + xt + " --run-dir " + d + "/two > /dev/null 2> " +
                  d + "/two.err"),
              0)
        << read_file(d + "/two.err");
    // the fixture does what it is for: not every position aligns, and not equally in every batch
    std::ifstream m(d + "/one/metrics.jsonl");
    std::string line;
    std::set<double> fractions;
    while (std::getline(m, line)) fractions.insert(nlohmann::json::parse(line)["aligned_fraction"].get<double>());
    ASSERT_GT(fractions.size(), 1u);
    EXPECT_LT(*fractions.rbegin(), 1.0);
    EXPECT_LT(max_weight_diff(d + "/one/model/model.safetensors", d + "/two/model/model.safetensors"), 1e-5);
}

// --sequences (an API dataset) on 2 ranks: completions of different lengths, so the ranks' rows
// hold different numbers of completion tokens; each rank's mean is weighted by its share, so the
// job ends with one process's weights. The dataset is written as `capture --teacher-url` writes
// it (samples.jsonl): without log-probs (sequence-level cross-entropy), and with the log-probs of
// another tokenizer's tokens (3-byte pieces: aligned on bytes, so a KD term over the aligned
// positions and a CE term over every completion token, each with its own count across ranks).
TEST(Distributed, SequencesOnTwoRanksEqualOneProcess) {
    Fixture f = make_fixture("ddp-seq");
    auto bytes_of = [](const std::string& s) {
        nlohmann::json b = nlohmann::json::array();
        for (unsigned char c : s) b.push_back(int(c));
        return b;
    };
    for (const bool with_logprobs : {false, true}) {
        const std::string ds = f.dir + (with_logprobs ? "/ds-top" : "/ds");
        make_dirs(ds);
        std::string lines;
        for (int i = 0; i < 40; ++i) {
            const std::string prompt = word_text(20 + 7 * (i % 5), 100 + i, {"the", "house", "was", "quiet"});
            const std::string text =
                word_text(10 + 13 * (i % 7), 200 + i, {"Anne", "walked", "to", "Bath", "with", "her"});
            nlohmann::json r{{"prompt_index", i}, {"sample", 0},        {"kind", "completion"},
                             {"prompt", prompt},  {"text", text},       {"finish_reason", "length"},
                             {"usage", {{"total_tokens", 30}}}};
            if (with_logprobs) {
                nlohmann::json entries = nlohmann::json::array();
                for (size_t at = 0; at < text.size(); at += 3) {
                    const std::string piece = text.substr(at, 3);
                    entries.push_back({{"token", piece}, {"bytes", bytes_of(piece)}, {"logprob", -1.0},
                                       {"top", {{piece, -1.0, bytes_of(piece)}, {" Bath", -2.0 - 0.1 * (at % 5), bytes_of(" Bath")},
                                                {"her", -2.5, bytes_of("her")}}}});
                }
                r["logprobs"] = entries;
            }
            lines += r.dump() + "\n";
        }
        write_file_atomic(ds + "/samples.jsonl", lines);
        const std::string name = with_logprobs ? "top" : "ce";
        const std::string loss = with_logprobs ? " --loss fkl --ce-weight 0.4" : " --loss ce";
        const std::string args = "train" + loss + " --sequences " + ds + " --config " + f.dir + "/student.json --tokenizer " +
                                 f.dir + "/tok.json --steps 10 --batch-size 4 --seq-len 48 --warmup 2 --threads 1";
        const std::string one = f.dir + "/one-" + name, two = f.dir + "/two-" + name;
        ASSERT_EQ(run_distill(args + " --run-dir " + one, "", one + ".err"), 0) << read_file(one + ".err");
        ASSERT_EQ(run(std::string(DISTILL_BINARY) + " --quiet launch -n 2 " + args + " --run-dir " + two +
                      " > /dev/null 2> " + two + ".err"),
                  0)
            << read_file(two + ".err");
        if (with_logprobs) {  // the pieces are not the student's tokens: aligned on bytes
            EXPECT_NE(read_file(one + ".err").find("another tokenizer"), std::string::npos) << read_file(one + ".err");
        }
        EXPECT_LT(max_weight_diff(one + "/model/model.safetensors", two + "/model/model.safetensors"), 1e-5) << name;
        EXPECT_EQ(last_metrics(one)["tokens"], last_metrics(two)["tokens"]) << name;
    }
}
