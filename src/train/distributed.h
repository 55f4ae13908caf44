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
    double bucket_mb = 25;       // gradient all-reduce bucket size (the first bucket: at most 1 MiB)
    bool overlap = true;         // start each bucket's all-reduce during backward, once its gradients are in
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
    // Returns the milliseconds spent. With overlap, after attach_gradient_hooks(params) and
    // expect_last_backward() before the step's last backward, the buckets' all-reduces have
    // started during that backward and this waits for them: it returns the milliseconds that
    // were not hidden behind backward.
    double all_reduce_gradients(const std::vector<torch::Tensor>& params);
    // Hooks on `params` (leaf tensors) that copy each gradient into its bucket as backward makes
    // it and start the bucket's all-reduce once the bucket is full, in the same bucket order on
    // every rank (reverse parameter order, roughly backward's). Nothing happens until
    // expect_last_backward(). A no-op without opts.overlap.
    void attach_gradient_hooks(const std::vector<torch::Tensor>& params);
    // The next backward is the step's last micro-batch; `grads_are_zero`: nothing has been
    // accumulated into .grad before it in this step (no gradient accumulation).
    void expect_last_backward(bool grads_are_zero);
    // Sums `values` over the ranks, in place.
    void all_reduce_sum(std::vector<double>& values);
    // Every rank's `t` (the same shape and type on every rank), in rank order.
    std::vector<torch::Tensor> all_gather(const torch::Tensor& t);
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
