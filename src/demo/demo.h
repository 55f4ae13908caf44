// distill — `distill demo`: the whole story on the embedded default (six Jane Austen novels).
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace distill {

struct DemoOptions {
    std::string run_dir = "runs/demo";
    int64_t vocab_size = 4096;
    int64_t teacher_steps = 1500;
    int64_t student_steps = 600;
    int64_t seq_len = 128;
    int64_t batch_size = 16;          // the students' sequences a step
    int64_t teacher_batch_size = 8;   // the teacher's (see docs/demo.md: more, smaller steps)
    double teacher_lr = 2e-3;
    double student_lr = 3e-3;
    uint64_t seed = 1;
    std::vector<uint64_t> student_seeds;  // students trained for each (default: {seed})
    int top_k = 32;          // teacher log-probs captured per position (--top-logprobs)
    std::string loss = "fkl";
    double temperature = 1.0;
    double ce_weight = 0.5;  // see docs/demo.md: with top-32 alone the tail is unconstrained
    // the teacher through its API (0 prompts: skip): completions of passages cut from the
    // training text, captured with faults injected, and two students trained on them
    int64_t api_prompts = 3000;
    int64_t api_max_tokens = 64;
    double api_fault_rate = 0.25;
    // the owner's side (needs the API stage; 0: skip): the same prompts continued by the teacher
    // served with a watermark, a student trained on completions of which this share is
    // watermarked, and the radioactivity test on it and on students that saw none
    double guard_fraction = 0.10;
    bool quick = false;      // a much smaller run, for tests and a first look
};

// The demo's teacher and student shapes (the student has <= 1/4 of the teacher's parameters).
struct DemoSizes {
    ModelConfig teacher, student;
};
DemoSizes demo_sizes(int64_t vocab, bool quick);

// Runs (or resumes) the demo and writes <run_dir>/report.json and report.md. Returns 0.
int run_demo(const DemoOptions& opts);

}  // namespace distill
