// distill — the project's one UTF-8 decoder: validity (as Rust's str and the WHATWG decoder
// judge it: no overlongs, no surrogates, nothing above U+10FFFF), lossy repair, encoding, and
// decoding one character at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace distill {

inline constexpr uint32_t kUtf8Invalid = 0xFFFFFFFF;

// The length (1 to 4) that a lead byte announces: for stepping through text known to be valid.
inline size_t utf8_char_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

// True if `s` is well-formed UTF-8.
bool utf8_valid(std::string_view s);
// Each maximal invalid subsequence becomes U+FFFD, exactly as Rust's String::from_utf8_lossy
// (and the WHATWG decoder) do. Valid input comes back unchanged.
std::string utf8_lossy(std::string_view s);
// Appends the UTF-8 encoding of code point `cp` to `out`.
void utf8_append(std::string& out, uint32_t cp);
// The character at s[i]: its code point and length, or kUtf8Invalid with *len = 1 where the
// bytes there are not a well-formed sequence (or are cut off by the end).
uint32_t utf8_decode_at(std::string_view s, size_t i, size_t* len);
// Code points in `s`, counting each byte that is not a continuation byte (the unit of the legacy
// completions API's text_offset, as Python's len of the text).
int64_t utf8_char_count(std::string_view s);
// All code points of `s` (a malformed byte becomes U+FFFD).
std::vector<uint32_t> utf8_code_points(std::string_view s);
// The length of `s` without a multi-byte character that the end cuts off.
size_t utf8_complete_prefix(std::string_view s);
// Length of the valid sequence at s[i, n), or 0 if invalid; *maximal gets the length of the
// maximal prefix of a valid sequence (at least 1) when invalid.
size_t utf8_seq(const unsigned char* s, size_t i, size_t n, size_t* maximal);

}  // namespace distill
