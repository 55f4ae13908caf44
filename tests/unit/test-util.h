// distill — small helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace distill::testing_util {

inline std::string source_path(const std::string& rel) { return std::string(DISTILL_SOURCE_DIR) + "/" + rel; }

// The text corpus some tests train on and whose tolerances were measured with it: the file named
// by DISTILL_TEST_CORPUS, else the six novels scripts/test.sh writes to <build>/austen.txt (so that
// `ctest` run by hand sees what the README's command sees), else "" (the tests generate text).
inline std::string test_corpus_path() {
    if (const char* p = std::getenv("DISTILL_TEST_CORPUS"); p && *p) return p;
    const std::string built = std::string(DISTILL_BUILD_DIR) + "/austen.txt";
    std::error_code ec;
    return std::filesystem::is_regular_file(built, ec) && std::filesystem::file_size(built, ec) > 0 ? built : "";
}

// Runs a command; returns its exit status (-1 if it could not run).
inline int run(const std::string& cmd) {
    int rc = std::system(cmd.c_str());
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

// Runs a Python reference script with Debian's python3 (python3-torch, numpy).
inline int run_python(const std::string& script, const std::string& args) {
    return run("/usr/bin/python3 " + source_path(script) + " " + args);
}

// Runs the distill binary with `args`; stdout to `out_path` if given. Returns the exit status.
inline int run_distill(const std::string& args, const std::string& out_path = "",
                       const std::string& err_path = "") {
    std::string cmd = std::string(DISTILL_BINARY) + " --quiet " + args;
    cmd += " > " + (out_path.empty() ? std::string("/dev/null") : out_path);
    cmd += " 2> " + (err_path.empty() ? std::string("/dev/null") : err_path);
    return run(cmd);
}

// A small deterministic English-like text: `words` drawn by an LCG, a sentence break now and then.
inline std::string word_text(size_t bytes, uint64_t seed, const std::vector<std::string>& words) {
    uint64_t s = seed;
    std::string out;
    while (out.size() < bytes) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        out += words[(s >> 33) % words.size()];
        out += ((s >> 20) % 10 == 0) ? ".\n" : " ";
    }
    return out;
}

// The directories temp_dir() made, removed when the test program ends with every test passed; kept
// after a failure (to look at) or with DISTILL_KEEP_TEMP=1. Only the process that made them
// removes them (a forked child that exits must not).
struct TempDirs {
    pid_t owner = ::getpid();
    std::vector<std::string> dirs;
    ~TempDirs() {
        if (::getpid() != owner || std::getenv("DISTILL_KEEP_TEMP")) return;
        if (!::testing::UnitTest::GetInstance()->Passed()) return;
        std::error_code ec;
        for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
    }
};
inline TempDirs& temp_dirs() {
    static TempDirs dirs;
    return dirs;
}

// A new, empty directory for this test alone: named after `name`, the running test and the
// process, and made by mkdtemp, so that tests that CTest runs in parallel never share one.
inline std::string temp_dir(const std::string& name) {
    std::string test = "static";
    if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info())
        test = std::string(info->test_suite_name()) + "." + info->name();
    for (char& c : test)
        if (c == '/') c = '_';
    std::string base = ::testing::TempDir();
    if (!base.empty() && base.back() == '/') base.pop_back();
    std::string tmpl = base + "/distill-" + name + "-" + test + "-" + std::to_string(::getpid()) + "-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) {
        ADD_FAILURE() << "mkdtemp failed for " << tmpl;
        return tmpl;
    }
    temp_dirs().dirs.emplace_back(buf.data());
    return std::string(buf.data());
}

// A safetensors file from its header JSON and `data_bytes` zero bytes of data (the header length
// is written as given, little-endian, so tests can make it lie).
inline std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
    std::string out;
    for (int i = 0; i < 8; ++i) out.push_back(char((uint64_t(header.size()) >> (8 * i)) & 0xFF));
    return out + header + std::string(data_bytes, '\0');
}

}  // namespace distill::testing_util
