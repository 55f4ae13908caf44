// distill launch — the ranks of a data-parallel job on this machine, with the torchrun
// environment (docs/distributed.md).
#include "cli.h"
#include "train/launch.h"

namespace distill::cli {

namespace {
std::vector<std::string> g_command;  // the ranks' command, split off argv before parsing

// Every flag of `launch` and of the global set takes a value, except these.
bool is_valueless_flag(const std::string& a) {
    return a == "-h" || a == "--help" || a == "--quiet" || a == "--version" || a.find('=') != std::string::npos;
}

// The index of the first argument at or after `i` that is not a flag or a flag's value.
int first_positional(int argc, char** argv, int i) {
    while (i < argc) {
        const std::string a = argv[i];
        if (a.empty() || a[0] != '-') return i;
        i += is_valueless_flag(a) ? 1 : 2;
    }
    return argc;
}
}  // namespace

int split_launch_command(int argc, char** argv) {
    const int sub = first_positional(argc, argv, 1);
    if (sub >= argc || std::string(argv[sub]) != "launch") return argc;
    const int cmd = first_positional(argc, argv, sub + 1);
    g_command.assign(argv + cmd, argv + argc);
    return cmd;
}

Command add_launch(CLI::App& app) {
    auto o = std::make_shared<LaunchOptions>();
    CLI::App* c = app.add_subcommand(
        "launch", "run a distill command as N data-parallel ranks (as torchrun does): distill launch -n 2 train ...");
    c->add_option("-n,--nproc-per-node", o->nproc, "ranks on this machine")->required()->check(in_range(1, 1024));
    c->add_option("--nnodes", o->nnodes, "machines in the job, each running `distill launch` with its --node-rank")
        ->check(in_range(1, 65536))->capture_default_str();
    c->add_option("--node-rank", o->node_rank, "this machine's place in 0..nnodes-1")
        ->check(in_range(0, 65535))->capture_default_str();
    c->add_option("--master-addr", o->master_addr, "address of the machine that runs rank 0")->capture_default_str();
    c->add_option("--master-port", o->master_port, "port of rank 0's store (0 = a free port; one machine only)")
        ->check(in_range(0, 65535))->capture_default_str();
    c->add_option("--max-restarts", o->max_restarts,
                  "times the whole job is restarted after a rank fails (it resumes from the last checkpoint)")
        ->check(in_range(0, 1000))->capture_default_str();
    c->add_option("--stop-grace", o->grace_s, "seconds the other ranks get to stop after one failed, before SIGKILL")
        ->check(in_range(0, 3600))->capture_default_str();
    c->add_option("--log-dir", o->log_dir, "write the output of ranks other than 0 to DIR/rank-N.log (default: "
                  "stderr, each line prefixed with [rank N])");
    c->footer("\nEverything after the launcher's flags is the command every rank runs, global flags included:\n"
              "  distill launch -n 2 --max-restarts 1 train --data data/train ... --run-dir runs/ddp\n"
              "Each rank gets --threads (cores / n) unless its command sets --threads. docs/distributed.md");
    return {c,
            [o] {
                o->command = g_command;
                DISTILL_USAGE(!o->command.empty(), "name the command the ranks run: distill launch -n ",
                              o->nproc, " train ...");
                DISTILL_USAGE(o->command[0] != "launch", "a rank cannot itself be a launcher");
                DISTILL_USAGE(o->nnodes > 1 || o->node_rank == 0, "--node-rank ", o->node_rank,
                              " needs --nnodes above it");
                DISTILL_USAGE(o->node_rank < o->nnodes, "--node-rank ", o->node_rank, " must be below --nnodes ",
                              o->nnodes);
                DISTILL_USAGE(o->nnodes == 1 || o->master_port > 0,
                              "a job on several machines needs --master-port (and --master-addr: rank 0's machine)");
                return launch(*o);
            },
            /*heavy_math=*/false};
}

}  // namespace distill::cli
