// distill — the size `xz -9e` compresses bytes to, computed in-process with liblzma.
#pragma once

#include <cstdint>
#include <string_view>

namespace distill {

// Bytes of the .xz stream (preset 9 | extreme, CRC64 check, as `xz -9e -T1` writes it).
int64_t xz_compressed_size(std::string_view data);

}  // namespace distill
