// distill — the cost ledger of one model (docs/eval.md, "Cost ledger"): what it is (parameters,
// bytes of weights, forward FLOPs per token) and, when the model sits in a run directory
// (RUN/model with RUN/run.json and RUN/done.json beside it), what training it cost.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"

namespace distill {

// parameters, weight_bytes, forward_flops_per_token (at `seq_len`), and from the run directory:
// train_steps, train_tokens, train_flops (3 x forward FLOPs per token at the run's seq_len x
// tokens: 6 N D plus attention), train_seconds, teacher_tokens (the positions a distilled run read
// from its teacher or cache; 0 for a run without a teacher), run_kind; null where unknown.
nlohmann::json cost_ledger(const std::string& path, const ModelConfig& cfg, int64_t seq_len);

// The run directory a model path belongs to ("" if none): the parent of a `model` directory that
// has done.json beside it.
std::string run_dir_of(const std::string& path);

}  // namespace distill
