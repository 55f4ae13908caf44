#include "train/launch.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <thread>

#include "util/error.h"
#include "util/file.h"
#include "util/progress.h"

extern char** environ;

namespace distill {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int sig) { g_stop_signal = sig; }

// A port that nobody listens on now (the ranks' store binds it a moment later).
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    DISTILL_CHECK(fd >= 0, "launch: cannot open a socket: ", std::strerror(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = 0;
    socklen_t n = sizeof a;
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n) == 0;
    ::close(fd);
    DISTILL_CHECK(ok, "launch: cannot find a free port (pass --master-port)");
    return ntohs(a.sin_port);
}

std::string self_exe() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    DISTILL_CHECK(n > 0, "launch: cannot find the distill executable (/proc/self/exe): ", std::strerror(errno));
    return std::string(buf, static_cast<size_t>(n));
}

bool has_threads_flag(const std::vector<std::string>& args) {
    for (const auto& a : args)
        if (a == "-t" || a == "--threads" || a.rfind("--threads=", 0) == 0) return true;
    return false;
}

std::string describe_status(int status) {
    if (WIFSIGNALED(status)) return str_cat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
    return str_cat("exited with status ", WEXITSTATUS(status));
}

int exit_code(int status) { return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status); }

struct Rank {
    int local = 0, global = 0;
    pid_t pid = -1;
    int out = -1;          // read end of its output pipe (ranks > 0 without --log-dir)
    std::string partial;   // output after its last newline
    bool running = false;
    int status = 0;
};

void forward(Rank& r, const char* data, size_t n) {
    r.partial.append(data, n);
    size_t start = 0, nl;
    while ((nl = r.partial.find('\n', start)) != std::string::npos) {
        std::fprintf(stderr, "[rank %d] %.*s\n", r.global, int(nl - start), r.partial.data() + start);
        start = nl + 1;
    }
    r.partial.erase(0, start);
}

void drain(Rank& r, bool to_eof) {
    if (r.out < 0) return;
    char buf[8192];
    for (;;) {
        const ssize_t n = ::read(r.out, buf, sizeof buf);
        if (n > 0) {
            forward(r, buf, size_t(n));
            if (!to_eof) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !to_eof) return;
        if (!r.partial.empty()) forward(r, "\n", 1);
        ::close(r.out);
        r.out = -1;
        return;
    }
}

// One attempt: starts every rank, waits; when one fails, stops the others. Returns the first
// failing rank's status (or 0), and sets `failed_rank`.
int run_attempt(const LaunchOptions& o, const std::vector<std::string>& argv, int port, int attempt,
                int& failed_rank) {
    const int world = o.nproc * o.nnodes;
    std::vector<Rank> ranks(static_cast<size_t>(o.nproc));
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    const pid_t launcher = ::getpid();
    for (int i = 0; i < o.nproc; ++i) {
        Rank& r = ranks[size_t(i)];
        r.local = i;
        r.global = o.node_rank * o.nproc + i;
        // the environment torchrun gives its workers
        std::map<std::string, std::string> env;
        for (char** e = environ; *e; ++e) {
            const std::string kv = *e;
            const size_t eq = kv.find('=');
            if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
        env.erase("TORCHELASTIC_USE_AGENT_STORE");
        env["RANK"] = std::to_string(r.global);
        env["LOCAL_RANK"] = std::to_string(i);
        env["GROUP_RANK"] = std::to_string(o.node_rank);
        env["ROLE_RANK"] = std::to_string(r.global);
        env["WORLD_SIZE"] = std::to_string(world);
        env["LOCAL_WORLD_SIZE"] = std::to_string(o.nproc);
        env["ROLE_WORLD_SIZE"] = std::to_string(world);
        env["MASTER_ADDR"] = o.master_addr;
        env["MASTER_PORT"] = std::to_string(port);
        env["TORCHELASTIC_RESTART_COUNT"] = std::to_string(attempt);
        env["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(o.max_restarts);
        std::vector<std::string> kvs;
        for (const auto& [k, v] : env) kvs.push_back(k + "=" + v);
        std::vector<char*> cenv;
        for (auto& kv : kvs) cenv.push_back(kv.data());
        cenv.push_back(nullptr);

        int pipefd[2] = {-1, -1};
        int logfd = -1;
        if (r.global != 0) {
            if (!o.log_dir.empty()) {
                const std::string path = path_join(o.log_dir, str_cat("rank-", r.global, ".log"));
                logfd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                DISTILL_CHECK(logfd >= 0, "launch: cannot open '", path, "': ", std::strerror(errno));
            } else {
                DISTILL_CHECK(::pipe2(pipefd, O_CLOEXEC) == 0, "launch: pipe: ", std::strerror(errno));
            }
        }
        const pid_t pid = ::fork();
        DISTILL_CHECK(pid >= 0, "launch: cannot start rank ", r.global, ": ", std::strerror(errno));
        if (pid == 0) {
            // the rank dies with the launcher, whatever kills it
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != launcher) ::_exit(127);
            ::signal(SIGINT, SIG_DFL);
            ::signal(SIGTERM, SIG_DFL);
            ::signal(SIGHUP, SIG_DFL);
            const int fd = logfd >= 0 ? logfd : pipefd[1];
            if (fd >= 0) {
                ::dup2(fd, 1);
                ::dup2(fd, 2);
            }
            ::execve(cargv[0], cargv.data(), cenv.data());
            std::fprintf(stderr, "launch: cannot run %s: %s\n", cargv[0], std::strerror(errno));
            ::_exit(127);
        }
        r.pid = pid;
        r.running = true;
        if (logfd >= 0) ::close(logfd);
        if (pipefd[1] >= 0) {
            ::close(pipefd[1]);
            r.out = pipefd[0];
            ::fcntl(r.out, F_SETFL, ::fcntl(r.out, F_GETFL) | O_NONBLOCK);
        }
    }

    failed_rank = -1;
    int first_status = 0;
    double stop_deadline = -1;  // when the survivors of a failure get SIGKILL
    bool forwarded_signal = false;
    auto signal_all = [&](int sig) {
        for (auto& r : ranks)
            if (r.running) ::kill(r.pid, sig);
    };
    for (;;) {
        std::vector<pollfd> fds;
        std::vector<Rank*> owners;
        for (auto& r : ranks)
            if (r.out >= 0) {
                fds.push_back({r.out, POLLIN, 0});
                owners.push_back(&r);
            }
        if (!fds.empty()) {
            const int n = ::poll(fds.data(), fds.size(), 100);
            if (n > 0)
                for (size_t k = 0; k < fds.size(); ++k)
                    if (fds[k].revents) drain(*owners[k], false);
        } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (g_stop_signal && !forwarded_signal) {
            forwarded_signal = true;
            signal_all(SIGTERM);
            if (stop_deadline < 0) stop_deadline = now_seconds() + o.grace_s;
        }
        // the ranks that ended since the last look; when several failed at once (one died, its
        // peers' collectives failed), the one a signal killed is the likely cause
        const bool stopping = stop_deadline >= 0;
        Rank* cause = nullptr;
        for (auto& r : ranks) {
            if (!r.running) continue;
            int status = 0;
            if (::waitpid(r.pid, &status, WNOHANG) != r.pid) continue;
            r.running = false;
            r.status = status;
            drain(r, true);
            const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (ok || stopping || g_stop_signal) continue;
            std::fprintf(stderr, "distill launch: rank %d (pid %d) %s\n", r.global, int(r.pid),
                         describe_status(status).c_str());
            if (!cause || (WIFSIGNALED(status) && !WIFSIGNALED(cause->status))) cause = &r;
        }
        if (cause) {
            failed_rank = cause->global;
            first_status = cause->status;
            std::fprintf(stderr, "distill launch: stopping the other ranks\n");
            signal_all(SIGTERM);
            stop_deadline = now_seconds() + o.grace_s;
        }
        if (std::none_of(ranks.begin(), ranks.end(), [](const Rank& r) { return r.running; })) break;
        if (stop_deadline >= 0 && now_seconds() > stop_deadline) {
            signal_all(SIGKILL);
            stop_deadline = now_seconds() + 3600;
        }
    }
    for (auto& r : ranks) drain(r, true);
    if (g_stop_signal) return 128 + g_stop_signal;
    return failed_rank < 0 ? 0 : exit_code(first_status);
}

}  // namespace

int launch(const LaunchOptions& o) {
    DISTILL_CHECK(o.nproc >= 1, "launch: -n must be at least 1");
    DISTILL_CHECK(o.nnodes >= 1 && o.node_rank >= 0 && o.node_rank < o.nnodes, "launch: --node-rank ", o.node_rank,
                  " must be in 0..", o.nnodes - 1);
    DISTILL_CHECK(!o.command.empty(), "launch: no command to run: `distill launch -n N train ...`");
    DISTILL_CHECK(o.nnodes == 1 || o.master_port > 0,
                  "launch: a job on several machines needs --master-port (and --master-addr, rank 0's machine)");
    if (!o.log_dir.empty()) make_dirs(o.log_dir);
    std::vector<std::string> argv{self_exe()};
    // ranks share the machine's cores unless the command says otherwise
    if (!has_threads_flag(o.command)) {
        const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
        argv.push_back("--threads");
        argv.push_back(std::to_string(std::max(1, cores / o.nproc)));
    }
    // `distill --quiet launch ...` quiets the ranks too
    if (Progress::quiet && std::find(o.command.begin(), o.command.end(), "--quiet") == o.command.end())
        argv.push_back("--quiet");
    argv.insert(argv.end(), o.command.begin(), o.command.end());

    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);

    int rc = 0;
    for (int attempt = 0;; ++attempt) {
        const int port = o.master_port > 0 ? o.master_port : free_port();
        if (attempt == 0) {
            std::string cmd;
            for (size_t i = 1; i < argv.size(); ++i) cmd += " " + argv[i];
            log_info(str_cat("launch: ", o.nproc, " rank", o.nproc > 1 ? "s" : "", " (", o.nproc * o.nnodes,
                             " in the job), MASTER_ADDR=", o.master_addr, " MASTER_PORT=", port, "; each runs distill",
                             cmd));
        }
        int failed_rank = -1;
        rc = run_attempt(o, argv, port, attempt, failed_rank);
        if (rc == 0 || g_stop_signal) break;
        if (attempt >= o.max_restarts) {
            std::fprintf(stderr, "distill launch: the job failed (rank %d, status %d)%s; %s\n", failed_rank, rc,
                         o.max_restarts > 0 ? str_cat(" after ", o.max_restarts, " restart(s)").c_str() : "",
                         rc == 2 ? "its command was refused: fix the flags"
                                 : "running the same command again resumes from the last checkpoint");
            break;
        }
        std::fprintf(stderr, "distill launch: restarting the job (restart %d of %d); it resumes from the last checkpoint\n",
                     attempt + 1, o.max_restarts);
    }
    return rc;
}

}  // namespace distill
