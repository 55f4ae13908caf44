// The CLI's flag handling, through the binary: every numeric flag of every command rejects 0 (where
// 0 means nothing), -1 and a huge value with exit status 2 and a message naming the flag, never a
// signal; global flags work after the subcommand; usage errors exit 2, other errors 1.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;

namespace {

// Runs the binary through the shell; returns the raw wait status.
struct Result {
    int status;
    std::string err;
};
Result run_raw(const std::string& dir, const std::string& args) {
    const std::string err = dir + "/stderr.txt";
    const std::string cmd = std::string(DISTILL_BINARY) + " --quiet " + args + " >/dev/null 2>" + err;
    const int status = std::system(cmd.c_str());
    return {status, read_file(err)};
}

// A command whose inputs exist (so that parsing passes) but are not what they claim to be (so
// that the run stops at once with exit 1 when the flags are fine).
struct Case {
    std::string base;                   // subcommand and required flags
    std::vector<std::string> flags;     // numeric flags that must be > 0
    std::vector<std::string> zero_ok;   // numeric flags for which 0 is a valid value
};

std::vector<Case> cases(const std::string& f, const std::string& d) {
    const std::vector<std::string> train = {"--steps", "--batch-size", "--seq-len", "--grad-accum", "--checkpoint-every",
                                            "--log-every"};
    auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    return {
        {"demo --run-dir " + f + "/sub", {"--vocab-size", "--teacher-steps", "--student-steps", "--top-logprobs",
                                         "--temperature"}, {"--ce-weight"}},
        {"train-tokenizer --text " + f + " --out " + f + "/sub/tok.json", {"--vocab-size", "--min-frequency"}, {}},
        {"prepare --tokenizer " + f + " --text " + f + " --out " + d + "/shard", {}, {"--heldout-fraction"}},
        {"pretrain --config " + f + " --tokenizer " + f + " --data " + d + "/x --run-dir " + d + "/run", train,
         {"--lr", "--min-lr-ratio", "--warmup", "--weight-decay", "--grad-clip"}},
        {"capture --teacher " + f + " --data " + d + "/x --out " + d + "/cache",
         {"--top-logprobs", "--seq-len", "--batch-size"}, {"--max-windows"}},
        {"train --config " + f + " --tokenizer " + f + " --data " + d + "/x --run-dir " + d + "/run",
         with(train, {"--temperature"}), {"--ce-weight", "--beta", "--alpha", "--online-top-logprobs", "--lr"}},
        {"eval --model " + f + " --text " + f,
         {"--seq-len", "--stride", "--batch-size", "--builtin-items", "--sample-tokens", "--timeout"},
         {"--retries", "--samples"}},
        {"score --model " + f + " --text " + f, {"--seq-len", "--stride", "--batch-size"}, {"--top-logprobs"}},
        {"generate --model " + f + " --prompt hi", {"--max-new-tokens", "--top-p"}, {"--temperature", "--top-k"}},
        {"serve --model " + f + " --port 0", {"--parallel", "--max-body-bytes", "--max-tokens", "--max-queue"},
         {"--http-threads", "--rate-limit-rpm", "--rate-limit-tpm", "--max-prompt-tokens", "--max-top-logprobs",
          "--shutdown-timeout"}},
        // the watermark's flags (docs/guard.md) need a key file
        {"generate --model " + f + " --prompt hi --watermark-key-file " + f, {"--wm-gamma", "--wm-context"},
         {"--wm-delta"}},
        {"serve --model " + f + " --port 0 --watermark-key-file " + f, {"--wm-gamma", "--wm-context"}, {"--wm-delta"}},
        {"guard detect --key-file " + f + " --tokenizer " + f, {"--wm-gamma", "--wm-context"}, {}},
    };
}

bool signaled(int status) { return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) >= 128); }

}  // namespace

TEST(Flags, EveryNumericFlagIsRangeChecked) {
    const std::string d = temp_dir("flags");
    const std::string f = d + "/not-a-model.txt";
    write_file_atomic(f, "plain text, not a model, tokenizer or config\n");
    int checked = 0;
    for (const Case& c : cases(f, d)) {
        // the base command parses: it fails on its inputs (exit 1), not on its flags (exit 2)
        Result base = run_raw(d, c.base);
        ASSERT_TRUE(WIFEXITED(base.status)) << c.base;
        ASSERT_EQ(WEXITSTATUS(base.status), 1) << c.base << "\n" << base.err;
        auto expect_usage_error = [&](const std::string& flag, const std::string& value) {
            Result r = run_raw(d, c.base + " " + flag + " " + value);
            EXPECT_FALSE(signaled(r.status)) << c.base << " " << flag << " " << value;
            ASSERT_TRUE(WIFEXITED(r.status));
            EXPECT_EQ(WEXITSTATUS(r.status), 2) << c.base << " " << flag << " " << value << "\n" << r.err;
            EXPECT_NE(r.err.find(flag), std::string::npos) << "the message should name " << flag << ": " << r.err;
            ++checked;
        };
        for (const auto& flag : c.flags) {
            expect_usage_error(flag, "0");
            expect_usage_error(flag, "-1");
            expect_usage_error(flag, "100000000000000000000000000000");
            expect_usage_error(flag, "abc");
        }
        for (const auto& flag : c.zero_ok) {
            // 0 parses (the run then fails on its inputs), -1 and huge values do not
            Result r = run_raw(d, c.base + " " + flag + " 0");
            ASSERT_TRUE(WIFEXITED(r.status));
            EXPECT_EQ(WEXITSTATUS(r.status), 1) << c.base << " " << flag << " 0\n" << r.err;
            expect_usage_error(flag, "-1");
            expect_usage_error(flag, "100000000000000000000000000000");
        }
    }
    // global flags too
    for (const char* v : {"-1", "100000000000000000000000000000", "x"}) {
        Result r = run_raw(d, std::string("--threads ") + v + " eval --model " + f + " --text " + f);
        ASSERT_TRUE(WIFEXITED(r.status));
        EXPECT_EQ(WEXITSTATUS(r.status), 2) << v << ": " << r.err;
    }
    EXPECT_GT(checked, 100);
}

TEST(Flags, GlobalFlagsWorkAfterTheSubcommand) {
    const std::string d = temp_dir("flags-global");
    const std::string f = d + "/x.txt";
    write_file_atomic(f, "x\n");
    for (const std::string& args : {"eval --model " + f + " --text " + f + " --threads 4",
                                    "eval --model " + f + " --text " + f + " -t 2 --device cpu",
                                    "eval --model " + f + " --text " + f + " --precision bf16",
                                    "--threads 4 eval --model " + f + " --text " + f}) {
        Result r = run_raw(d, args);
        ASSERT_TRUE(WIFEXITED(r.status)) << args;
        EXPECT_EQ(WEXITSTATUS(r.status), 1) << args << "\n" << r.err;  // gets as far as loading the model
        EXPECT_NE(r.err.find(f), std::string::npos) << "the error should name the model file: " << r.err;
    }
}

TEST(Flags, UsageErrorsExit2) {
    const std::string d = temp_dir("flags-usage");
    const std::string f = d + "/x.txt";
    write_file_atomic(f, "x\n");
    for (const std::string& args : std::vector<std::string>{std::string("eval --text ") + f,          // a required flag missing
                                    "eval --model " + f + " --text " + f + " --no-such-flag",
                                    std::string("no-such-command"),
                                    "prepare --tokenizer " + f + " --text " + f + " --out " + d +
                                        "/s --heldout-fraction 0.1",  // without --heldout-out
                                    "eval --model " + f + " --text " + f + " --seq-len 8 --stride 9",
                                    "export --model " + f + " --out " + d + "/o --format hf --type q8_0",
                                    "eval --model " + f + " --text " + f + " --device tpu",
                                    "eval --model " + f + " --text " + f + " --precision fp16",
                                    "generate --model " + f + " --prompt hi --wm-gamma 0.5",  // without a key
                                    std::string("guard"),                                    // no subcommand
                                    "guard detect --tokenizer " + f}) {                      // no --key-file
        Result r = run_raw(d, args);
        ASSERT_TRUE(WIFEXITED(r.status)) << args;
        EXPECT_EQ(WEXITSTATUS(r.status), args.find("--device tpu") != std::string::npos ? 1 : 2)
            << args << "\n" << r.err;
        EXPECT_FALSE(r.err.empty()) << args;
    }
    Result help = run_raw(d, "eval --help");
    EXPECT_TRUE(WIFEXITED(help.status) && WEXITSTATUS(help.status) == 0);
}
