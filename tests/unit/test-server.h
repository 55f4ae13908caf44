// distill — `distill serve` as a child process on a free port, for the tests that talk to it.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test-util.h"
#include "util/file.h"

extern char** environ;

namespace distill::testing_util {

class ServerProcess {
public:
    // `distill --threads 1 serve --model MODEL --port 0 EXTRA...`, its output in a log file; waits
    // for the port it announces, then (with `healthy`) until /health says 200.
    ServerProcess(const std::string& model, const std::vector<std::string>& extra, bool healthy = true) {
        log_ = temp_dir("serve-proc") + "/out.txt";
        std::vector<std::string> args = {DISTILL_BINARY, "--threads", "1", "serve", "--model", model, "--port", "0"};
        args.insert(args.end(), extra.begin(), extra.end());
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        EXPECT_EQ(posix_spawn(&pid_, DISTILL_BINARY, &fa, nullptr, argv.data(), environ), 0);
        posix_spawn_file_actions_destroy(&fa);
        const std::regex re("listening on http://127\\.0\\.0\\.1:([0-9]+)");
        for (int i = 0; i < 600 && port_ == 0; ++i) {
            std::smatch m;
            std::string text = file_exists(log_) ? read_file(log_) : "";
            if (std::regex_search(text, m, re)) port_ = std::stoi(m[1]);
            else std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        EXPECT_GT(port_, 0) << "no port announced:\n" << read_file(log_);
        if (!healthy || port_ == 0) return;
        for (int i = 0; i < 600; ++i) {
            auto r = client().Get("/health");
            if (r && r->status == 200) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        ADD_FAILURE() << "server never became healthy:\n" << read_file(log_);
    }
    ~ServerProcess() {
        if (pid_ > 0) stop();
    }
    ServerProcess(const ServerProcess&) = delete;
    ServerProcess& operator=(const ServerProcess&) = delete;

    httplib::Client client() const {
        httplib::Client c("127.0.0.1", port_);
        c.set_read_timeout(120);
        return c;
    }
    std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }
    int port() const { return port_; }
    pid_t pid() const { return pid_; }
    // SIGTERM, then the exit status (128 + N for a signal).
    int stop() {
        kill(pid_, SIGTERM);
        return wait();
    }
    int wait() {
        int st = 0;
        waitpid(pid_, &st, 0);
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    std::string log() const { return read_file(log_); }

private:
    pid_t pid_ = -1;
    int port_ = 0;
    std::string log_;
};

}  // namespace distill::testing_util
