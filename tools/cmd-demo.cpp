// distill demo — the whole story on the embedded default (six Jane Austen novels).
#include "cli.h"
#include "demo/demo.h"

namespace distill::cli {

Command add_demo(CLI::App& app) {
    auto o = std::make_shared<DemoOptions>();
    CLI::App* c = app.add_subcommand("demo", "the whole story on six Jane Austen novels, Persuasion held out");
    c->add_option("--run-dir", o->run_dir, "where everything is built (re-running reuses it)")->capture_default_str();
    c->add_option("--vocab-size", o->vocab_size, "BPE vocabulary size")->check(in_range(260, 1 << 20))
        ->capture_default_str();
    c->add_option("--teacher-steps", o->teacher_steps, "teacher pretraining steps")->check(in_range(1, 1e9))
        ->capture_default_str();
    c->add_option("--student-steps", o->student_steps, "steps of each student")->check(in_range(1, 1e9))
        ->capture_default_str();
    add_seed(c, o->seed);
    c->add_option("--student-seeds", o->student_seeds, "train the student pair for each of these seeds (default: --seed)")
        ->delimiter(',');
    c->add_option("--top-logprobs", o->top_k, "teacher log-probs stored per position")->check(in_range(1, 1024))
        ->capture_default_str();
    c->add_option("--loss", o->loss, "distillation loss")
        ->check(CLI::IsMember({"fkl", "rkl", "jsd", "sfkl", "srkl", "tv"}))->capture_default_str();
    c->add_option("--temperature", o->temperature, "distillation temperature")->check(in_range(0.05, 100))
        ->capture_default_str();
    c->add_option("--ce-weight", o->ce_weight, "weight of cross-entropy on the data")->check(in_range(0, 1))
        ->capture_default_str();
    c->add_option("--api-prompts", o->api_prompts,
                  "prompts the served teacher continues for the API students (0: skip that stage)")
        ->check(in_range(0, 1e7))->capture_default_str();
    c->add_option("--api-max-tokens", o->api_max_tokens, "tokens per API completion")->check(in_range(1, 4096))
        ->capture_default_str();
    c->add_option("--api-fault-rate", o->api_fault_rate, "share of API requests answered with a fault")
        ->check(in_range(0, 0.9))->capture_default_str();
    c->add_option("--guard-fraction", o->guard_fraction,
                  "share of a student's API text that carries the teacher's watermark, for the radioactivity "
                  "stage (0: skip it)")
        ->check(in_range(0, 1))->capture_default_str();
    c->add_flag("--quick", o->quick, "a much smaller run (a first look, and the tests)");
    return {c, [o] { return run_demo(*o); }};
}

}  // namespace distill::cli
