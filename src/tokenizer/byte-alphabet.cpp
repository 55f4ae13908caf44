// distill — the GPT-2 byte <-> unicode alphabet of byte-level BPE (ByteAlphabet): every byte is
// one printable character, so that tokens are strings ("Ġthe" for " the").
#include <algorithm>

#include "tokenizer/tokenizer-impl.h"

namespace distill {

ByteAlphabet::ByteAlphabet() {
    std::fill(std::begin(cp_to_byte), std::end(cp_to_byte), int16_t(-1));
    bool printable[256] = {};
    for (int b = 33; b <= 126; ++b) printable[b] = true;
    for (int b = 161; b <= 172; ++b) printable[b] = true;
    for (int b = 174; b <= 255; ++b) printable[b] = true;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
        byte_to_cp[b] = printable[b] ? uint32_t(b) : next++;
        cp_to_byte[byte_to_cp[b]] = int16_t(b);
        utf8_append(byte_to_str[b], byte_to_cp[b]);
    }
}

const ByteAlphabet& ByteAlphabet::get() {
    static const ByteAlphabet a;
    return a;
}

std::string ByteAlphabet::encode(std::string_view bytes) const {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes) out += byte_to_str[b];
    return out;
}

bool ByteAlphabet::decode(std::string_view token, std::string& out) const {
    out.clear();
    for (uint32_t cp : utf8_code_points(token)) {
        if (cp >= 324 || cp_to_byte[cp] < 0) return false;
        out += char(cp_to_byte[cp]);
    }
    return true;
}

}  // namespace distill
