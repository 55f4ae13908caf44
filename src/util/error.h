// distill — the one error type for bad input, and always-on internal asserts.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace distill {

// Thrown for anything the user can fix: a bad file, flag, request or shape.
// The message says what was wrong and what to do. Caught only at the edges (CLI, server).
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void concat(std::ostringstream&) {}
template <typename T, typename... Rest>
void concat(std::ostringstream& os, const T& v, const Rest&... rest) {
    os << v;
    concat(os, rest...);
}
}  // namespace detail

template <typename... Args>
std::string str_cat(const Args&... args) {
    std::ostringstream os;
    detail::concat(os, args...);
    return os.str();
}

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace distill

// Bad user input: throws distill::Error with the concatenated message.
#define DISTILL_CHECK(cond, ...)                                 \
    do {                                                         \
        if (!(cond)) throw ::distill::Error(::distill::str_cat(__VA_ARGS__)); \
    } while (0)

// Internal invariant (a bug in distill if it fails): always on, says file and line.
#define DISTILL_ASSERT(cond, ...)                                                  \
    do {                                                                           \
        if (!(cond))                                                               \
            ::distill::assert_fail(#cond, __FILE__, __LINE__, ::distill::str_cat(__VA_ARGS__)); \
    } while (0)
