#include "util/utf8.h"

#include <algorithm>

namespace distill {

// Length of the valid UTF-8 sequence at s[i, n), or 0 if it is invalid; `*maximal` receives the
// length of the maximal prefix of a valid sequence (at least 1) when invalid.
size_t utf8_seq(const unsigned char* s, size_t i, size_t n, size_t* maximal) {
    unsigned char c = s[i];
    if (c < 0x80) return 1;
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *maximal = 1;
        return 0;
    }
    size_t k = 1;
    for (; k <= need; ++k) {
        if (i + k >= n) break;
        unsigned char d = s[i + k];
        if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) break;
    }
    if (k == need + 1) return need + 1;
    *maximal = k;
    return 0;
}

bool utf8_valid(std::string_view sv) {
    const auto* s = reinterpret_cast<const unsigned char*>(sv.data());
    size_t n = sv.size(), i = 0, m;
    while (i < n) {
        if (s[i] < 0x80) {
            ++i;
            continue;
        }
        size_t len = utf8_seq(s, i, n, &m);
        if (len == 0) return false;
        i += len;
    }
    return true;
}

std::string utf8_lossy(std::string_view sv) {
    const auto* s = reinterpret_cast<const unsigned char*>(sv.data());
    size_t n = sv.size(), i = 0, m = 0;
    std::string out;
    out.reserve(n + 8);
    while (i < n) {
        size_t len = utf8_seq(s, i, n, &m);
        if (len) {
            out.append(sv.data() + i, len);
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            i += m;
        }
    }
    return out;
}

void utf8_append(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xC0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += char(0xE0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    } else {
        out += char(0xF0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3F));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    }
}

uint32_t utf8_decode_at(std::string_view sv, size_t i, size_t* len) {
    const auto* s = reinterpret_cast<const unsigned char*>(sv.data());
    size_t maximal = 1;
    const size_t n = utf8_seq(s, i, sv.size(), &maximal);
    if (n == 0) {
        *len = 1;
        return kUtf8Invalid;
    }
    uint32_t cp = n == 1 ? s[i] : (s[i] & (0x7F >> n));
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
    *len = n;
    return cp;
}

std::vector<uint32_t> utf8_code_points(std::string_view sv) {
    std::vector<uint32_t> out;
    size_t i = 0, len = 1;
    while (i < sv.size()) {
        const uint32_t cp = utf8_decode_at(sv, i, &len);
        out.push_back(cp == kUtf8Invalid ? 0xFFFD : cp);
        i += len;
    }
    return out;
}

size_t utf8_complete_prefix(std::string_view sv) {
    // back up over at most 3 continuation bytes to the start of the last character
    size_t start = sv.size();
    while (start > 0 && sv.size() - start < 4 && (static_cast<unsigned char>(sv[start - 1]) & 0xC0) == 0x80) --start;
    if (start == 0) return sv.size();
    size_t len = 1;
    const uint32_t cp = utf8_decode_at(sv, start - 1, &len);
    if (cp != kUtf8Invalid && start - 1 + len == sv.size()) return sv.size();
    const auto lead = static_cast<unsigned char>(sv[start - 1]);
    return lead >= 0xC0 ? start - 1 : sv.size();  // a cut multi-byte character: drop it
}

int64_t utf8_char_count(std::string_view s) {
    int64_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

}  // namespace distill
