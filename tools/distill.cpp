// distill — the command-line tool. Each subcommand lives in cmd-<name>.cpp (flags, help, and a
// call into the library); this file holds the global flags and the dispatch.
#include <torch/torch.h>

#include <cstdio>

#include "cli.h"
#include "util/device.h"
#include "util/error.h"
#include "util/platform.h"
#include "util/progress.h"

using namespace distill;

int main(int argc, char** argv) {
    CLI::App app{"distill — knowledge distillation for language models"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "distill 0.1.0");
    // Global flags work before or after the subcommand (`distill eval ... --threads 4`).
    app.fallthrough();
    int threads = 0;
    bool quiet = false;
    std::string device = "auto";
    app.add_option("-t,--threads", threads, "CPU threads (0 = all cores)")->check(cli::in_range(0, 4096))
        ->capture_default_str();
    app.add_flag("--quiet", quiet, "no progress output");
    app.add_option("--device", device, "where the math runs: cpu, cuda, cuda:N or auto (a GPU if there is one)")
        ->capture_default_str();
    std::string precision = "auto";
    app.add_option("--precision", precision,
                   "matrix products in training: fp32, bf16 (float32 master weights), or auto (bf16 where the "
                   "device has fast bf16 products, measured at start; env DISTILL_PRECISION)")
        ->check(CLI::IsMember({"auto", "fp32", "bf16"}))
        ->envname("DISTILL_PRECISION")
        ->capture_default_str();

    const std::vector<cli::Command> commands = {
        cli::add_demo(app),     cli::add_train_tokenizer(app), cli::add_prepare(app),
        cli::add_pretrain(app), cli::add_capture(app),         cli::add_train(app),           cli::add_launch(app),
        cli::add_eval(app),     cli::add_report(app),          cli::add_score(app),           cli::add_generate(app),
        cli::add_tokenize(app), cli::add_chat_template(app),   cli::add_export(app),
        cli::add_serve(app),    cli::add_guard(app),
    };

    try {
        // `distill launch ... train ...`: what follows the launcher's own flags is the ranks' command,
        // global flags included, so CLI11 sees only what comes before it
        app.parse(cli::split_launch_command(argc, argv), argv);
    } catch (const CLI::ParseError& e) {
        // --help and --version exit 0; every usage error exits 2, as getopt-style tools do.
        if (e.get_exit_code() == 0) return app.exit(e);
        app.exit(e);
        return 2;
    }

    const cli::Command* cmd = nullptr;
    for (const auto& c : commands)
        if (c.app->parsed()) cmd = &c;
    if (!cmd) return 2;

    // Commands that do heavy math get a fast BLAS kernel (this may re-execute the program once);
    // quick ones (tokenize, --help) do not pay for it.
    if (cmd->heavy_math) ensure_fast_blas(argc, argv);

    try {
        Progress::quiet = quiet;
        tune_allocator();
        set_threads(threads);
        if (cmd->heavy_math) set_compute_device(resolve_device(device));
        set_precision_spec(precision);
        return cmd->run();
    } catch (const cli::UsageError& e) {
        std::fprintf(stderr, "distill %s: %s\nRun with --help for more information.\n", cmd->app->get_name().c_str(),
                     e.what());
        return 2;
    } catch (const Error& e) {
        std::fprintf(stderr, "\ndistill: error: %s\n", e.what());
        return 1;
    } catch (const c10::Error& e) {
        std::fprintf(stderr, "\ndistill: error: %s\n", e.what_without_backtrace());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "\ndistill: error: %s\n", e.what());
        return 1;
    }
}
