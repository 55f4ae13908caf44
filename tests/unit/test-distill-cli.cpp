// `distill capture` and `distill train` end to end: capture killed with -9 and resumed gives the
// same cache as an uninterrupted one; offline and online distillation run; a student whose
// tokenizer differs from the cache's is refused with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "io/logit-cache.h"
#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;
using nlohmann::json;

namespace {

std::string text(size_t bytes, uint64_t seed) {
    return word_text(bytes, seed, {"the", "of", "and", "to", "her", "she", "was", "in", "it", "not",
                                   "be", "that", "Anne", "Wentworth", "said", "had", "could",
                                   "would", "very", "much", "Sir", "Lady", "Russell", "he"});
}

struct World {
    std::string d;
    World() {
        d = temp_dir("distill-cli");
        write_file_atomic(d + "/train.txt", text(80000, 3));
        write_file_atomic(d + "/teacher.json",
                          R"({"hidden_size":48,"num_hidden_layers":2,"num_attention_heads":4,
                              "intermediate_size":96,"max_position_embeddings":64,"tie_word_embeddings":true})");
        write_file_atomic(d + "/student.json",
                          R"({"hidden_size":16,"num_hidden_layers":1,"num_attention_heads":2,
                              "intermediate_size":32,"max_position_embeddings":64,"tie_word_embeddings":true})");
        EXPECT_EQ(run_distill("train-tokenizer --text " + d + "/train.txt --vocab-size 320 --out " + d + "/tok.json"), 0);
        EXPECT_EQ(run_distill("prepare --tokenizer " + d + "/tok.json --text " + d + "/train.txt --out " + d + "/train"), 0);
        EXPECT_EQ(run_distill("--threads 1 pretrain --config " + d + "/teacher.json --tokenizer " + d +
                              "/tok.json --data " + d + "/train --run-dir " + d +
                              "/teacher --steps 30 --batch-size 4 --seq-len 32"),
                  0);
    }
    std::string capture_args(const std::string& out) const {
        return "--threads 1 capture --teacher " + d + "/teacher/model --data " + d + "/train --out " + out +
               " --top-logprobs 8 --seq-len 32 --batch-size 1";
    }
    std::string train_args(const std::string& run) const {
        return "--threads 1 train --config " + d + "/student.json --tokenizer " + d + "/tok.json --data " + d +
               "/train --run-dir " + run + " --steps 20 --batch-size 4 --seq-len 32 --checkpoint-every 5 --log-every 2";
    }
};

// The logged training loss (metrics.jsonl, every 2 steps) went down: the mean of the last three
// lines is below the mean of the first three.
void expect_loss_fell(const std::string& run, const std::string& what) {
    std::vector<double> losses;
    std::istringstream in(read_file(run + "/metrics.jsonl"));
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
    ASSERT_EQ(losses.size(), 10u) << what;
    for (double l : losses) EXPECT_TRUE(std::isfinite(l)) << what;
    const double first = (losses[0] + losses[1] + losses[2]) / 3, last = (losses[7] + losses[8] + losses[9]) / 3;
    EXPECT_LT(last, first) << what << ": the loss did not fall (" << first << " -> " << last << ")";
}

World& world() {
    static World w;
    return w;
}

}  // namespace

TEST(DistillCli, CaptureKilledAndResumedEqualsUninterrupted) {
    World& w = world();
    ASSERT_EQ(run_distill(w.capture_args(w.d + "/cache-a"), w.d + "/cap-a.json"), 0);
    json ca = json::parse(read_file(w.d + "/cap-a.json"));
    EXPECT_GT(ca["bytes_per_token"].get<double>(), 0);
    EXPECT_LT(ca["bytes_per_token"].get<double>(), 64);
    EXPECT_GE(ca["kl_full_to_stored"].get<double>(), ca["kl_quantization"].get<double>());
    EXPECT_LT(ca["kl_quantization"].get<double>(), 1e-3);
    EXPECT_LT(ca["max_abs_logprob_error"].get<double>(), 0.13);

    // kill -9 the same capture repeatedly, at random moments, then let it finish
    const std::string b = w.d + "/cache-b";
    int kills = 0;
    for (int attempt = 0; attempt < 6; ++attempt) {
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            std::string cmd = std::string(DISTILL_BINARY) + " --quiet " + w.capture_args(b) + " >/dev/null 2>&1";
            execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), nullptr);
            _exit(127);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + 100 * attempt));
        ::kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status)) ++kills;
    }
    EXPECT_GT(kills, 0) << "the capture always finished before it could be killed";
    ASSERT_EQ(run_distill(w.capture_args(b), "/dev/null"), 0);

    LogitCacheReader ra(w.d + "/cache-a"), rb(b);
    ASSERT_TRUE(ra.complete());
    ASSERT_TRUE(rb.complete());
    ASSERT_EQ(ra.num_windows(), rb.num_windows());
    const int T = ra.info().window, K = ra.info().top_k;
    std::vector<int32_t> ia(T * K), ib(T * K);
    std::vector<float> la(T * K), lb(T * K);
    for (int64_t i = 0; i < ra.num_windows(); ++i) {
        ra.read_window(i, ia.data(), la.data());
        rb.read_window(i, ib.data(), lb.data());
        ASSERT_EQ(ia, ib) << "window " << i;
        ASSERT_EQ(la, lb) << "window " << i;
    }
}

TEST(DistillCli, OfflineOnlineAndBaselineTrain) {
    World& w = world();
    const std::string cache = w.d + "/cache-a";
    if (!file_exists(cache + "/header.json")) {
        ASSERT_EQ(run_distill(w.capture_args(cache)), 0);
    }
    for (const char* loss : {"fkl", "rkl", "jsd", "sfkl", "srkl", "tv"}) {
        const std::string run = w.d + "/off-" + loss;
        ASSERT_EQ(run_distill(w.train_args(run) + " --cache " + cache + " --loss " + loss +
                              " --temperature 2 --ce-weight 0.2"),
                  0)
            << loss;
        EXPECT_TRUE(file_exists(run + "/model/model.safetensors")) << loss;
        expect_loss_fell(run, loss);
    }
    ASSERT_EQ(run_distill(w.train_args(w.d + "/online") + " --teacher " + w.d + "/teacher/model --loss jsd"), 0);
    ASSERT_EQ(run_distill(w.train_args(w.d + "/online-topk") + " --teacher " + w.d +
                          "/teacher/model --online-top-logprobs 8"),
              0);
    ASSERT_EQ(run_distill(w.train_args(w.d + "/baseline") + " --loss ce"), 0);
    expect_loss_fell(w.d + "/online", "online jsd");
    expect_loss_fell(w.d + "/online-topk", "online top-8");
    expect_loss_fell(w.d + "/baseline", "ce");
}

TEST(DistillCli, MismatchedStudentIsRefusedWithReason) {
    World& w = world();
    const std::string cache = w.d + "/cache-a";
    if (!file_exists(cache + "/header.json")) {
        ASSERT_EQ(run_distill(w.capture_args(cache)), 0);
    }
    // another tokenizer, and data prepared with it
    ASSERT_EQ(run_distill("train-tokenizer --text " + w.d + "/train.txt --vocab-size 300 --out " + w.d +
                          "/tok2.json"),
              0);
    ASSERT_EQ(run_distill("prepare --tokenizer " + w.d + "/tok2.json --text " + w.d + "/train.txt --out " +
                          w.d + "/train2"),
              0);
    const std::string err = w.d + "/err.txt";
    std::string args = "train --config " + w.d + "/student.json --tokenizer " + w.d + "/tok2.json --data " +
                       w.d + "/train2 --run-dir " + w.d + "/bad --steps 2 --seq-len 32 --cache " + cache;
    EXPECT_EQ(run_distill(args, "/dev/null", err), 1);
    EXPECT_NE(read_file(err).find("tokenizer"), std::string::npos) << read_file(err);
    EXPECT_NE(read_file(err).find("differs"), std::string::npos) << read_file(err);
    // wrong window length
    args = "train --config " + w.d + "/student.json --tokenizer " + w.d + "/tok.json --data " + w.d +
           "/train --run-dir " + w.d + "/bad2 --steps 2 --seq-len 16 --cache " + cache;
    EXPECT_EQ(run_distill(args, "/dev/null", err), 1);
    EXPECT_NE(read_file(err).find("--seq-len 32"), std::string::npos) << read_file(err);
    // a capture into the same cache from another teacher is refused
    ASSERT_EQ(run_distill("--threads 1 pretrain --config " + w.d + "/teacher.json --tokenizer " + w.d +
                          "/tok.json --data " + w.d + "/train --run-dir " + w.d +
                          "/teacher2 --steps 3 --batch-size 2 --seq-len 32 --seed 9"),
              0);
    args = "capture --teacher " + w.d + "/teacher2/model --data " + w.d + "/train --out " + cache +
           " --top-logprobs 8 --seq-len 32";
    EXPECT_EQ(run_distill(args, "/dev/null", err), 1);
    EXPECT_NE(read_file(err).find("teacher"), std::string::npos) << read_file(err);
}
