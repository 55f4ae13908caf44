// distill — multi-process data parallel on libtorch's c10d: a TCPStore rendezvous from the
// torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_USE_AGENT_STORE) and ProcessGroupGloo (ProcessGroupNCCL on CUDA builds).
// docs/distributed.md tells how it runs.
#pragma once

#include <torch/types.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace distill {

struct DistOptions {
    int64_t timeout_s = 300;     // bounds the rendezvous and every collective
    int64_t bucket_mb = 25;      // gradient all-reduce bucket size
};

class Distributed {
public:
    // From the torchrun environment; nullptr when WORLD_SIZE is unset or 1 (one process). Throws
    // Error with what to fix when the environment is inconsistent or the master cannot be reached
    // within the timeout.
    static std::unique_ptr<Distributed> from_env(const DistOptions& opts);
    ~Distributed();
    // WORLD_SIZE (1 when unset), without joining anything.
    static int world_from_env();

    int rank() const { return rank_; }
    int world() const { return world_; }
    int local_rank() const { return local_rank_; }
    const DistOptions& options() const { return opts_; }

    // Every rank publishes `settings` through the store; when any rank's differs, every rank
    // throws an Error naming the rank and the keys that differ.
    void check_same_settings(const nlohmann::json& settings);
    // Averages the gradients of `params` over the ranks, in flat buckets of opts.bucket_mb.
    // Returns the milliseconds spent.
    double all_reduce_gradients(const std::vector<torch::Tensor>& params);
    // Sums `values` over the ranks, in place.
    void all_reduce_sum(std::vector<double>& values);
    // Copies rank 0's values of `tensors` to every rank.
    void broadcast(const std::vector<torch::Tensor>& tensors);
    void barrier();

private:
    struct Impl;
    Distributed() = default;
    std::unique_ptr<Impl> impl_;
    int rank_ = 0, world_ = 1, local_rank_ = 0;
    DistOptions opts_;
};

// The rows [begin, end) of a global batch of B that `rank` of `world` computes.
inline std::pair<int64_t, int64_t> rank_rows(int64_t B, int rank, int world) {
    const int64_t per = B / world;
    return {per * rank, per * (rank + 1)};
}

}  // namespace distill
