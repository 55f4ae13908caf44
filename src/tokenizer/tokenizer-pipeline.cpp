// distill — the tokenizer's normalizers and decoders (HF tokenizers semantics; see
// docs/tokenizer.md). Unicode normalization forms come from utf8proc.
#include <utf8proc.h>

#include <cstdlib>

#include "tokenizer/tokenizer-impl.h"
#include "util/error.h"

namespace distill {

namespace {

// The code point at s[i] (a malformed byte: U+FFFD); advances i past it.
uint32_t next_cp(std::string_view s, size_t& i) {
    size_t len = 1;
    const uint32_t cp = utf8_decode_at(s, i, &len);
    i += len;
    return cp == kUtf8Invalid ? 0xFFFD : cp;
}

bool is_ascii(unsigned char c) {
    return c < 0x80;
}

// NFC/NFD/NFKC/NFKD. ASCII is unchanged by every form and no two ASCII characters compose, so
// only the stretches around non-ASCII characters are handed to utf8proc (most text is ASCII).
void unicode_form(std::string_view s, utf8proc_option_t opts, std::string& out) {
    const auto* u = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && is_ascii(u[j])) ++j;
        if (j == n) {
            out.append(s.data() + i, n - i);
            break;
        }
        // The ASCII character before may be a starter that composes with what follows.
        size_t a = j > i ? j - 1 : j;
        out.append(s.data() + i, a - i);
        // The stretch ends before an ASCII character that is followed by ASCII (or the end).
        size_t k = j + 1;
        while (k < n && !(is_ascii(u[k]) && (k + 1 == n || is_ascii(u[k + 1])))) ++k;
        utf8proc_uint8_t* dst = nullptr;
        utf8proc_ssize_t len = utf8proc_map(u + a, utf8proc_ssize_t(k - a), &dst, opts);
        DISTILL_CHECK(len >= 0, "tokenizer: Unicode normalization failed: ",
                      utf8proc_errmsg(len));
        out.append(reinterpret_cast<const char*>(dst), size_t(len));
        std::free(dst);
        i = k;
    }
}

void lowercase(std::string_view s, std::string& out) {
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            out += char(c >= 'A' && c <= 'Z' ? c + 32 : c);
            ++i;
            continue;
        }
        uint32_t cp = next_cp(s, i);
        if (cp == 0x130) {  // the one unconditional multi-character lowercase mapping (Rust's)
            out += "i\xCC\x87";
            continue;
        }
        utf8_append(out, uint32_t(utf8proc_tolower(utf8proc_int32_t(cp))));
    }
}

std::string_view strip(std::string_view s, bool left, bool right) {
    if (left) {
        size_t i = 0;
        while (i < s.size()) {
            size_t j = i;
            if (!is_white_space(next_cp(s, j))) break;
            i = j;
        }
        s.remove_prefix(i);
    }
    if (right) {
        while (!s.empty()) {
            size_t b = s.size() - 1;
            while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
            size_t j = b;
            if (!is_white_space(next_cp(s, j))) break;
            s.remove_suffix(s.size() - b);
        }
    }
    return s;
}

}  // namespace

bool is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

bool is_word_char(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    if (cp == 0x200C || cp == 0x200D) return true;  // Join_Control
    // Other_Alphabetic outside the marks: circled and squared Latin letters.
    if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
        (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189))
        return true;
    switch (utf8proc_category(utf8proc_int32_t(cp))) {
        case UTF8PROC_CATEGORY_LU:
        case UTF8PROC_CATEGORY_LL:
        case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM:
        case UTF8PROC_CATEGORY_LO:
        case UTF8PROC_CATEGORY_NL:
        case UTF8PROC_CATEGORY_ND:
        case UTF8PROC_CATEGORY_MN:
        case UTF8PROC_CATEGORY_MC:
        case UTF8PROC_CATEGORY_ME:
        case UTF8PROC_CATEGORY_PC:
            return true;
        default:
            return false;
    }
}

std::string Regex::replace_all(const Regex* re, const std::string& literal, std::string_view s,
                               const std::string& content) {
    std::vector<std::pair<size_t, size_t>> m;
    if (re) {
        re->find_all(s.data(), s.size(), m);
    } else if (!literal.empty()) {
        for (size_t at = s.find(literal); at != std::string_view::npos;
             at = s.find(literal, at + literal.size()))
            m.emplace_back(at, at + literal.size());
    }
    if (m.empty()) return std::string(s);
    std::string out;
    out.reserve(s.size() + m.size() * content.size());
    size_t pos = 0;
    for (auto [a, b] : m) {
        out.append(s.data() + pos, a - pos);
        out += content;
        pos = b;
    }
    out.append(s.data() + pos, s.size() - pos);
    return out;
}

std::string normalize_text(const std::vector<NormStep>& steps, std::string_view in) {
    std::string cur(in), next;
    for (const NormStep& st : steps) {
        next.clear();
        switch (st.kind) {
            case NormStep::Kind::kNFC:
                unicode_form(cur, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE), next);
                break;
            case NormStep::Kind::kNFD:
                unicode_form(cur, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE), next);
                break;
            case NormStep::Kind::kNFKC:
                unicode_form(cur,
                             utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT),
                             next);
                break;
            case NormStep::Kind::kNFKD:
                unicode_form(
                    cur, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT),
                    next);
                break;
            case NormStep::Kind::kLowercase:
                lowercase(cur, next);
                break;
            case NormStep::Kind::kReplace:
                next = Regex::replace_all(st.regex.get(), st.literal, cur, st.content);
                break;
            case NormStep::Kind::kPrepend:
                if (!cur.empty()) next = st.content + cur;
                break;
            case NormStep::Kind::kStrip:
                next = std::string(strip(cur, st.strip_left, st.strip_right));
                break;
        }
        cur.swap(next);
    }
    return cur;
}

void decode_steps(const std::vector<DecStep>& steps, std::vector<std::string>& tokens) {
    const ByteAlphabet& alpha = ByteAlphabet::get();
    std::vector<std::string> next;
    std::string tmp;
    for (const DecStep& st : steps) {
        next.clear();
        switch (st.kind) {
            case DecStep::Kind::kByteLevel: {  // all tokens into one string
                std::string all;
                for (const auto& t : tokens) all += alpha.decode(t, tmp) ? tmp : t;
                next.push_back(utf8_valid(all) ? std::move(all) : utf8_lossy(all));
                break;
            }
            case DecStep::Kind::kByteFallback: {
                std::string bytes;  // consecutive <0xNN> tokens
                auto flush = [&] {
                    if (bytes.empty()) return;
                    if (utf8_valid(bytes))
                        next.push_back(bytes);
                    else
                        for (size_t k = 0; k < bytes.size(); ++k) next.push_back("\xEF\xBF\xBD");
                    bytes.clear();
                };
                for (auto& t : tokens) {
                    // Rust's u8::from_str_radix(_, 16) on the two characters: hex digits, or
                    // '+' and one hex digit.
                    int byte = -1;
                    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
                        auto hex = [](char c) {
                            return c >= '0' && c <= '9'   ? c - '0'
                                   : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                   : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                          : -1;
                        };
                        int h = hex(t[3]), l = hex(t[4]);
                        if (h >= 0 && l >= 0)
                            byte = h * 16 + l;
                        else if (t[3] == '+' && l >= 0)
                            byte = l;
                    }
                    if (byte >= 0) {
                        bytes += char(byte);
                    } else {
                        flush();
                        next.push_back(std::move(t));
                    }
                }
                flush();
                break;
            }
            case DecStep::Kind::kFuse: {
                std::string all;
                for (const auto& t : tokens) all += t;
                next.push_back(std::move(all));
                break;
            }
            case DecStep::Kind::kStrip:
                for (const auto& t : tokens) {
                    std::vector<uint32_t> cps = utf8_code_points(t);
                    size_t a = 0, b = cps.size();
                    while (a < st.start && a < cps.size() && cps[a] == st.ch) ++a;
                    for (size_t k = 0; k < st.stop && b > a && cps[b - 1] == st.ch; ++k) --b;
                    std::string s;
                    for (size_t k = a; k < b; ++k) utf8_append(s, cps[k]);
                    next.push_back(std::move(s));
                }
                break;
            case DecStep::Kind::kReplace:
                for (const auto& t : tokens)
                    next.push_back(Regex::replace_all(st.regex.get(), st.literal, t, st.content));
                break;
            case DecStep::Kind::kMetaspace:
                for (size_t i = 0; i < tokens.size(); ++i) {
                    std::string s;
                    for (uint32_t cp : utf8_code_points(tokens[i])) {
                        if (cp != st.ch)
                            utf8_append(s, cp);
                        else if (i != 0 || st.prepend_never)
                            s += ' ';
                    }
                    next.push_back(std::move(s));
                }
                break;
        }
        tokens.swap(next);
    }
}

}  // namespace distill
