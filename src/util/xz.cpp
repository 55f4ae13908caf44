#include "util/xz.h"

#include <lzma.h>

#include <vector>

#include "util/error.h"

namespace distill {

int64_t xz_compressed_size(std::string_view data) {
    lzma_stream strm = LZMA_STREAM_INIT;
    lzma_ret ret = lzma_easy_encoder(&strm, 9 | LZMA_PRESET_EXTREME, LZMA_CHECK_CRC64);
    DISTILL_CHECK(ret == LZMA_OK, "liblzma: cannot start the xz encoder (error ", int(ret), ")");
    std::vector<uint8_t> out(1 << 16);
    strm.next_in = reinterpret_cast<const uint8_t*>(data.data());
    strm.avail_in = data.size();
    int64_t total = 0;
    for (;;) {
        strm.next_out = out.data();
        strm.avail_out = out.size();
        ret = lzma_code(&strm, LZMA_FINISH);
        total += int64_t(out.size() - strm.avail_out);
        if (ret == LZMA_STREAM_END) break;
        if (ret != LZMA_OK) {
            lzma_end(&strm);
            throw Error(str_cat("liblzma: compression failed (error ", int(ret), ")"));
        }
    }
    lzma_end(&strm);
    return total;
}

}  // namespace distill
