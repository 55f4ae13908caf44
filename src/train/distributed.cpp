#include "train/distributed.h"

// c10d's Gloo process group is compiled in only with this macro (libtorch_cpu has the symbols;
// Debian's libgloo-dev has the headers it includes).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DISTILL_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>

#include "util/error.h"
#include "util/progress.h"

namespace distill {

namespace {

std::string env_or(const char* name, const std::string& dflt) {
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : dflt;
}

int64_t env_int(const char* name, int64_t dflt, int64_t lo, int64_t hi) {
    const std::string v = env_or(name, "");
    if (v.empty()) return dflt;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    DISTILL_CHECK(end && *end == '\0' && x >= lo && x <= hi, "environment variable ", name, "='", v,
                  "' is not an integer in [", lo, ", ", hi, "]: fix it (torchrun and distill launch set it)");
    return x;
}

// c10::Error's message without its C++ backtrace.
std::string message(const std::exception& e) {
    if (auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
    return e.what();
}

std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string from_bytes(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

// The keys (a.b paths) where two settings objects differ.
void diff_keys(const nlohmann::json& a, const nlohmann::json& b, const std::string& path,
               std::vector<std::string>& out) {
    if (a.is_object() && b.is_object()) {
        for (auto it = a.begin(); it != a.end(); ++it) {
            const std::string k = path.empty() ? it.key() : path + "." + it.key();
            if (!b.contains(it.key())) out.push_back(k);
            else diff_keys(it.value(), b.at(it.key()), k, out);
        }
        for (auto it = b.begin(); it != b.end(); ++it)
            if (!a.contains(it.key())) out.push_back(path.empty() ? it.key() : path + "." + it.key());
    } else if (a != b) {
        out.push_back(path.empty() ? "(settings)" : path);
    }
}

}  // namespace

struct Distributed::Impl {
    // Overlapped gradient reduction (attach_gradient_hooks): flat buckets in launch order.
    struct Bucket {
        std::vector<size_t> members;        // indices into params
        torch::Tensor flat;                 // their gradients, concatenated
        size_t pending = 0;                 // members whose gradient has not come yet
        c10::intrusive_ptr<c10d::Work> work;  // the all-reduce, once started
    };
    std::vector<torch::Tensor> params;
    std::vector<Bucket> buckets;
    std::vector<size_t> bucket_of;
    std::vector<int64_t> offset_of;
    std::vector<char> arrived;
    std::vector<unsigned> hook_ids;
    size_t next_launch = 0;
    bool armed = false, grads_zero = false;

    c10::intrusive_ptr<c10d::Store> store;
    c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef DISTILL_WITH_NCCL
    c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
    std::chrono::milliseconds timeout{300000};

    // Runs a collective on whichever group this build and device use, and waits for it.
    template <class F>
    void run(const char* what, F&& f) {
        try {
#ifdef DISTILL_WITH_NCCL
            if (nccl) {
                f(*nccl)->wait(timeout);
                return;
            }
#endif
            f(*gloo)->wait(timeout);
        } catch (const std::exception& e) {  // c10::Error, or gloo's own exceptions
            throw Error(str_cat("distributed ", what, " failed (another rank died, or did not get there within "
                                "--dist-timeout ", timeout.count() / 1000, " s): ", message(e)));
        }
    }

    // Starts the all-reduce of every full bucket from next_launch on, in order, stopping at the
    // first that is not full: every rank starts them in the same order.
    void launch_ready() {
        while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
            Bucket& b = buckets[next_launch++];
            std::vector<torch::Tensor> v{b.flat};
            try {
#ifdef DISTILL_WITH_NCCL
                if (nccl) {
                    b.work = nccl->allreduce(v);
                    continue;
                }
#endif
                b.work = gloo->allreduce(v);
            } catch (const std::exception& e) {
                throw Error(str_cat("distributed gradient all-reduce failed to start: ", message(e)));
            }
        }
    }

    // A parameter's gradient is ready (from its hook, or after backward for one that got none).
    void arrive(size_t i, const torch::Tensor& g) {
        if (arrived[i]) return;
        arrived[i] = 1;
        Bucket& b = buckets[bucket_of[i]];
        torch::Tensor dst = b.flat.narrow(0, offset_of[i], params[i].numel());
        torch::Tensor prior = params[i].grad();
        if (!g.defined()) {
            if (prior.defined() && !grads_zero) dst.copy_(prior.reshape({-1}));
            else dst.zero_();
        } else if (prior.defined() && !grads_zero) {
            torch::add_out(dst, prior.reshape({-1}), g.reshape({-1}));
        } else {
            dst.copy_(g.reshape({-1}));
        }
        if (--b.pending == 0) launch_ready();
    }
};

Distributed::~Distributed() {
    // the parameters outlive this: their hooks go with it
    if (impl_)
        for (size_t i = 0; i < impl_->hook_ids.size(); ++i) impl_->params[i].remove_hook(impl_->hook_ids[i]);
}

int Distributed::world_from_env() { return static_cast<int>(env_int("WORLD_SIZE", 1, 1, 1 << 16)); }

std::unique_ptr<Distributed> Distributed::from_env(const DistOptions& opts) {
    const int64_t world = world_from_env();
    if (world <= 1) return nullptr;
    DISTILL_CHECK(opts.timeout_s > 0, "--dist-timeout must be positive");
    DISTILL_CHECK(std::getenv("RANK"), "WORLD_SIZE=", world, " but RANK is not set: start the ranks with "
                  "`distill launch -n N` or torchrun, or set RANK=0..", world - 1, " yourself");
    const int64_t rank = env_int("RANK", 0, 0, 1 << 16);
    DISTILL_CHECK(rank < world, "RANK=", rank, " is not below WORLD_SIZE=", world,
                  ": every rank needs the same WORLD_SIZE and a RANK in 0..", world - 1);
    const std::string addr = env_or("MASTER_ADDR", "127.0.0.1");
    const int64_t port = env_int("MASTER_PORT", 29500, 1, 65535);
    std::unique_ptr<Distributed> d(new Distributed());
    d->rank_ = static_cast<int>(rank);
    d->world_ = static_cast<int>(world);
    d->local_rank_ = static_cast<int>(env_int("LOCAL_RANK", rank, 0, 1 << 16));
    d->opts_ = opts;
    d->impl_ = std::make_unique<Impl>();
    Impl& m = *d->impl_;
    m.timeout = std::chrono::milliseconds(opts.timeout_s * 1000);
    const bool agent_store = env_or("TORCHELASTIC_USE_AGENT_STORE", "") == "True";
    try {
        c10d::TCPStoreOptions so;
        so.port = static_cast<uint16_t>(port);
        so.timeout = m.timeout;
        so.numWorkers = static_cast<size_t>(world);
        if (agent_store) {
            // torchrun's agent hosts the store: every rank is a client, under the same prefix as
            // torch.distributed.rendezvous._create_c10d_store (torch 1.13 and 2.x).
            so.isServer = false;
            so.waitWorkers = false;
            auto tcp = c10::make_intrusive<c10d::TCPStore>(addr, so);
            m.store = c10::make_intrusive<c10d::PrefixStore>(
                "/worker/attempt_" + env_or("TORCHELASTIC_RESTART_COUNT", "0"), tcp);
        } else {
            so.isServer = rank == 0;
            so.waitWorkers = true;
            m.store = c10::make_intrusive<c10d::TCPStore>(addr, so);
        }
    } catch (const std::exception& e) {
        throw Error(str_cat("rank ", rank, " of ", world, ": the rendezvous at MASTER_ADDR=", addr,
                            " MASTER_PORT=", port, " failed within --dist-timeout ", opts.timeout_s,
                            " s (", rank == 0 && !agent_store ? "is the port in use? " : "is rank 0 running "
                            "and the address reachable? ", "do all ranks have WORLD_SIZE=", world, "?): ",
                            message(e)));
    }
    m.store->setTimeout(m.timeout);
    // every rank must agree on WORLD_SIZE before the process group (whose own failure on a
    // mismatch is an opaque address-size check in gloo)
    try {
        m.store->set("distill/world/" + std::to_string(rank), to_bytes(std::to_string(world)));
        for (int64_t r = 0; r < world; ++r) {
            if (r == rank || (rank != 0 && r != 0)) continue;
            const std::string w = from_bytes(m.store->get("distill/world/" + std::to_string(r)));
            DISTILL_CHECK(w == std::to_string(world), "rank ", rank, " has WORLD_SIZE=", world, " but rank ", r,
                          " has WORLD_SIZE=", w, ": start every rank with the same WORLD_SIZE");
        }
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(str_cat("rank ", rank, " of ", world, ": not every rank joined within --dist-timeout ",
                            opts.timeout_s, " s (is WORLD_SIZE=", world, " right on every rank, and did they all "
                            "start?): ", message(e)));
    }
    try {
#ifdef DISTILL_WITH_NCCL
        if (torch::cuda::is_available() && env_or("DISTILL_DIST_BACKEND", "nccl") == "nccl") {
            auto o = c10d::ProcessGroupNCCL::Options::create();
            o->timeout = m.timeout;
            m.nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(m.store, d->rank_, d->world_, o);
        }
        if (!m.nccl)
#endif
        {
            auto o = c10d::ProcessGroupGloo::Options::create();
            o->timeout = m.timeout;
            const std::string iface = env_or("GLOO_SOCKET_IFNAME", "");
            o->devices.push_back(iface.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                               : c10d::ProcessGroupGloo::createDeviceForInterface(iface));
            m.gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(m.store, d->rank_, d->world_, o);
        }
    } catch (const std::exception& e) {
        throw Error(str_cat("rank ", rank, " of ", world, ": the process group did not form within --dist-timeout ",
                            opts.timeout_s, " s: ", message(e)));
    }
    return d;
}

void Distributed::check_same_settings(const nlohmann::json& settings) {
    Impl& m = *impl_;
    nlohmann::json mine = {{"world_size", world_}, {"settings", settings}};
    m.store->set("distill/settings/" + std::to_string(rank_), to_bytes(mine.dump()));
    std::string problem;
    for (int r = 0; r < world_; ++r) {
        if (r == rank_) continue;
        nlohmann::json other;
        try {
            other = nlohmann::json::parse(from_bytes(m.store->get("distill/settings/" + std::to_string(r))));
        } catch (const std::exception& e) {
            throw Error(str_cat("rank ", rank_, ": rank ", r, " did not publish its settings within --dist-timeout ",
                                opts_.timeout_s, " s (did it die, or is WORLD_SIZE wrong?): ", message(e)));
        }
        std::vector<std::string> keys;
        diff_keys(mine, other, "", keys);
        if (!keys.empty() && problem.empty()) {
            std::string list;
            for (size_t i = 0; i < keys.size() && i < 12; ++i) list += (i ? ", " : "") + keys[i];
            problem = str_cat("rank ", rank_, " and rank ", r, " were started with different settings (", list,
                              "): start every rank with the same flags, data and model");
        }
    }
    DISTILL_CHECK(problem.empty(), problem);
    // nobody starts training before every rank has compared
    barrier();
}

void Distributed::attach_gradient_hooks(const std::vector<torch::Tensor>& params) {
    Impl& m = *impl_;
    if (!opts_.overlap || !m.params.empty()) return;
    m.params = params;
    const size_t n = params.size();
    m.bucket_of.assign(n, 0);
    m.offset_of.assign(n, 0);
    m.arrived.assign(n, 0);
    // reverse order, as backward makes them; the first bucket small so that communication
    // starts early (as PyTorch DDP does), the others up to bucket_mb
    const int64_t cap = std::max<int64_t>(1024, static_cast<int64_t>(opts_.bucket_mb * 1048576.0));
    int64_t bytes = 0;
    for (size_t k = n; k-- > 0;) {
        const int64_t limit = m.buckets.size() <= 1 ? std::min<int64_t>(cap, 1 << 20) : cap;
        if (m.buckets.empty() || (bytes >= limit && !m.buckets.back().members.empty())) {
            m.buckets.emplace_back();
            bytes = 0;
        }
        m.buckets.back().members.push_back(k);
        bytes += params[k].numel() * params[k].element_size();
    }
    for (size_t b = 0; b < m.buckets.size(); ++b) {
        auto& bk = m.buckets[b];
        int64_t off = 0;
        for (size_t i : bk.members) {
            m.bucket_of[i] = b;
            m.offset_of[i] = off;
            off += params[i].numel();
        }
        bk.flat = torch::zeros({off}, params[bk.members[0]].options().requires_grad(false));
        bk.pending = bk.members.size();
    }
    for (size_t i = 0; i < n; ++i) {
        torch::Tensor p = params[i];
        m.hook_ids.push_back(p.register_hook([this, i](torch::Tensor g) {
            Impl& mm = *impl_;
            if (!mm.armed) return;
            torch::NoGradGuard ng;
            mm.arrive(i, g);
        }));
    }
}

void Distributed::expect_last_backward(bool grads_are_zero) {
    Impl& m = *impl_;
    if (m.params.empty()) return;
    m.armed = true;
    m.grads_zero = grads_are_zero;
}

double Distributed::all_reduce_gradients(const std::vector<torch::Tensor>& params) {
    const double t0 = now_seconds();
    torch::NoGradGuard ng;
    Impl& m = *impl_;
    if (m.armed) {
        // the parameters whose hook did not fire (no gradient this step) join with what they have
        for (size_t i = 0; i < m.params.size(); ++i)
            if (!m.arrived[i]) m.arrive(i, torch::Tensor());
        DISTILL_ASSERT(m.next_launch == m.buckets.size(), "every gradient bucket has started");
        for (auto& b : m.buckets) {
            try {
                b.work->wait(m.timeout);
            } catch (const std::exception& e) {
                m.armed = false;
                throw Error(str_cat("distributed gradient all-reduce failed (another rank died, or did not get there "
                                    "within --dist-timeout ", m.timeout.count() / 1000, " s): ", message(e)));
            }
            b.work.reset();
            b.flat.div_(double(world_));
            for (size_t i : b.members) {
                torch::Tensor p = m.params[i];
                torch::Tensor src = b.flat.narrow(0, m.offset_of[i], p.numel()).view_as(p);
                if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
                p.mutable_grad().copy_(src);
            }
            b.pending = b.members.size();
        }
        std::fill(m.arrived.begin(), m.arrived.end(), 0);
        m.next_launch = 0;
        m.armed = false;
        return (now_seconds() - t0) * 1000.0;
    }
    const int64_t bucket_bytes = std::max<int64_t>(1024, static_cast<int64_t>(opts_.bucket_mb * 1048576.0));
    int64_t bytes = 0;
    // flat buckets: concatenate, reduce, copy back
    std::vector<torch::Tensor> members;
    auto reduce = [&](std::vector<torch::Tensor>& g) {
        if (g.empty()) return;
        std::vector<torch::Tensor> views;
        for (auto& t : g) views.push_back(t.reshape({-1}));
        std::vector<torch::Tensor> flat{torch::cat(views)};
        impl_->run("gradient all-reduce", [&](auto& pg) { return pg.allreduce(flat); });
        flat[0].div_(double(world_));
        int64_t off = 0;
        for (auto& t : g) {
            t.copy_(flat[0].narrow(0, off, t.numel()).view_as(t));
            off += t.numel();
        }
        g.clear();
    };
    for (const auto& p : params) {
        torch::Tensor g = p.grad();
        if (!g.defined()) {
            // a parameter without a gradient on this rank still takes part (zeros), so that the
            // buckets line up on every rank
            p.mutable_grad() = torch::zeros_like(p);
            g = p.grad();
        }
        members.push_back(g);
        bytes += g.numel() * g.element_size();
        if (bytes >= bucket_bytes) {
            reduce(members);
            bytes = 0;
        }
    }
    reduce(members);
    return (now_seconds() - t0) * 1000.0;
}

void Distributed::all_reduce_sum(std::vector<double>& values) {
    if (values.empty()) return;
    std::vector<torch::Tensor> t{torch::tensor(values, torch::kFloat64)};
    impl_->run("metrics all-reduce", [&](auto& pg) { return pg.allreduce(t); });
    for (size_t i = 0; i < values.size(); ++i) values[i] = t[0][static_cast<int64_t>(i)].item<double>();
}

std::vector<torch::Tensor> Distributed::all_gather(const torch::Tensor& t) {
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> in{t.contiguous()};
    std::vector<std::vector<torch::Tensor>> out(1);
    for (int r = 0; r < world_; ++r) out[0].push_back(torch::empty_like(in[0]));
    impl_->run("all-gather", [&](auto& pg) { return pg.allgather(out, in); });
    return out[0];
}

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors) {
    torch::NoGradGuard ng;
    for (const auto& x : tensors) {
        std::vector<torch::Tensor> v{x.is_contiguous() ? x : x.contiguous()};
        impl_->run("broadcast", [&](auto& pg) { return pg.broadcast(v); });
        if (!v[0].is_same(x)) x.copy_(v[0]);
    }
}

void Distributed::barrier() {
    std::vector<double> one{1.0};
    all_reduce_sum(one);  // a barrier that honours the timeout on every backend
}

}  // namespace distill
