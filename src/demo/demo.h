// distill — `distill demo`: the whole story on the embedded default (six Jane Austen novels).
#pragma once

#include <string>

namespace distill {

struct DemoOptions {
    std::string run_dir = "runs/demo";
    int64_t vocab_size = 4096;
    int64_t teacher_steps = 600;
    int64_t student_steps = 600;
    int64_t seq_len = 128;
    int64_t batch_size = 16;
    uint64_t seed = 1;
    int top_k = 32;          // captured teacher top-k
    std::string loss = "fkl";
    double temperature = 1.0;
    double ce_weight = 0.0;
    bool quick = false;      // a much smaller run, for tests and a first look
    int threads = 0;
};

// Runs (or resumes) the demo and writes <run_dir>/report.json and report.md. Returns 0.
int run_demo(const DemoOptions& opts);

}  // namespace distill
