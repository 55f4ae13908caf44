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
        std::ifstream m(rd + "/metrics.jsonl");
        std::string line, last;
        while (std::getline(m, line)) last = line;
        ASSERT_FALSE(last.empty());
        const auto j = nlohmann::json::parse(last);
        EXPECT_EQ(j["step"], 12) << last;
        EXPECT_EQ(j["world_size"], world) << last;
    }
}

// Ranks started with different settings, a batch that does not split, and a rank 0 that never
// comes: every rank exits non-zero, with a message that says what to fix, within the timeout.
TEST(Distributed, RanksThatDoNotFitFailClearly) {
    Fixture f = make_fixture("ddp-errors");
    auto contains = [](const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; };
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
