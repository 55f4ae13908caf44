// distill — running other programs with an argument vector (no shell, so no quoting pitfalls).
#pragma once

#include <string>
#include <vector>

namespace distill {

// Runs argv[0] (looked up in PATH) with `argv`, waits, and returns its exit status; 127 if it
// could not be started, 128 + N if signal N ended it. With `quiet`, its stdout and stderr go to
// /dev/null.
int run_program(const std::vector<std::string>& argv, bool quiet = false);

}  // namespace distill
