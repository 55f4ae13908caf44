// distill — what the subcommands share: the Command record, the flag vocabulary (docs/cli.md)
// and the usage-error type. Each subcommand lives in its own cmd-<name>.cpp.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

#include "guard/watermark.h"
#include "util/error.h"

namespace distill {
struct TrainOptions;
struct WindowOptions;
struct TrainResult;
}

namespace distill::cli {

// A subcommand: its CLI11 App, and what runs it once the flags are parsed (returns the exit
// status). Commands that do heavy math get a fast BLAS kernel first (see util/platform.h).
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
    bool heavy_math = true;
};

// A flag combination that cannot work (exit status 2, like a parse error).
class UsageError : public Error {
public:
    using Error::Error;
};
#define DISTILL_USAGE(cond, ...) \
    do {                         \
        if (!(cond)) throw ::distill::cli::UsageError(::distill::str_cat(__VA_ARGS__)); \
    } while (0)

// Validators for numeric flags: the message names the flag (CLI11 adds it) and the range. Every
// numeric flag has an upper bound too: a count too large to mean anything is a usage error.
CLI::Validator in_range(double lo, double hi);     // lo <= x <= hi
CLI::Validator above_up_to(double lo, double hi);  // lo < x <= hi
CLI::Validator above_below(double lo, double hi);  // lo < x < hi

// The shared vocabulary: one name per concept, the same in every command.
CLI::Option* add_model(CLI::App* c, std::string& v, const std::string& what = "the model");
CLI::Option* add_seq_len(CLI::App* c, int64_t& v, const std::string& what = "tokens per sequence");
CLI::Option* add_batch_size(CLI::App* c, int64_t& v, const std::string& what);
CLI::Option* add_seed(CLI::App* c, uint64_t& v);
CLI::Option* add_text(CLI::App* c, std::string& v);
CLI::Option* add_tokenizer(CLI::App* c, std::string& v);
// The optimizer and schedule flags of pretrain and train.
void add_train_flags(CLI::App* c, TrainOptions& o);
// --seq-len / --stride / --batch-size of sliding-window scoring (eval, score).
void add_window_flags(CLI::App* c, WindowOptions& w);

// The watermark (docs/guard.md): the key file and the settings, read when the command runs.
struct WatermarkFlags {
    std::string key_file;
    WatermarkOptions options;
    // The options with the key read from key_file (an Error if it is missing or empty); none
    // when no key file was given.
    std::optional<WatermarkOptions> resolve() const;
};
// Sampling (generate, serve): --watermark-key-file, --wm-gamma, --wm-delta, --wm-context, the
// last three only with the first. Detection (guard): --key-file (required), --wm-gamma,
// --wm-context.
void add_watermark_flags(CLI::App* c, WatermarkFlags& w, bool sampling);

// The JSON line pretrain and train print when they finish.
void print_train_result(const std::string& run_dir, const TrainResult& r);

// One function per subcommand (cmd-<name>.cpp), in the order `distill --help` lists them.
Command add_demo(CLI::App& app);
Command add_train_tokenizer(CLI::App& app);
Command add_prepare(CLI::App& app);
Command add_pretrain(CLI::App& app);
Command add_capture(CLI::App& app);
Command add_train(CLI::App& app);
Command add_launch(CLI::App& app);
// When argv is `distill [global flags] launch [launch flags] COMMAND ...`: keeps COMMAND ... for
// launch and returns the argc of what comes before it; otherwise returns argc.
int split_launch_command(int argc, char** argv);
Command add_eval(CLI::App& app);
Command add_report(CLI::App& app);
Command add_score(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_tokenize(CLI::App& app);
Command add_chat_template(CLI::App& app);
Command add_export(CLI::App& app);
Command add_serve(CLI::App& app);
Command add_guard(CLI::App& app);

}  // namespace distill::cli
