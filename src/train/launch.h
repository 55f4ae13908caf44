// distill launch — starts the ranks of a data-parallel job on this machine with the torchrun
// environment, watches them, stops them all when one fails, and restarts the job when asked
// (docs/distributed.md). For users without Python; torchrun starts the same job.
#pragma once

#include <string>
#include <vector>

namespace distill {

struct LaunchOptions {
    int nproc = 1;                        // ranks on this machine
    int nnodes = 1;                       // machines in the job, each running one launcher
    int node_rank = 0;                    // this machine's place among them
    std::string master_addr = "127.0.0.1";
    int master_port = 0;                  // 0: a free port (one machine only)
    int max_restarts = 0;                 // restarts of the whole job after a rank fails
    double grace_s = 10;                  // seconds the other ranks get to stop after one failed
    std::string log_dir;                  // ranks > 0 write here instead of a prefixed stderr
    std::vector<std::string> command;     // the distill command every rank runs (train ...)
};

// Runs the job; returns 0 when every rank of the last attempt exited with 0, else the first
// failing rank's status (128 + N for signal N). Throws Error for what cannot start at all.
int launch(const LaunchOptions& opts);

}  // namespace distill
