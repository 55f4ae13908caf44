// Process-level helpers: atomic writes (parent folders, directory sync), running programs with an
// argv (paths with spaces and quotes), and liblzma's xz size against the xz program itself.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "test-util.h"
#include "util/error.h"
#include "util/file.h"
#include "util/process.h"
#include "util/utf8.h"
#include "util/xz.h"

using namespace distill;
using namespace distill::testing_util;

TEST(Platform, AtomicWriteCreatesParentFolders) {
    const std::string d = temp_dir("platform-write");
    const std::string p = d + "/a/b c/d.txt";
    write_file_atomic(p, "hello");
    EXPECT_EQ(read_file(p), "hello");
    write_file_atomic(p, "again");
    EXPECT_EQ(read_file(p), "again");
    fsync_dir(d + "/a");
    EXPECT_THROW(fsync_dir(d + "/missing"), Error);
}

TEST(Platform, RunProgramPassesArgumentsVerbatim) {
    const std::string d = temp_dir("platform-run");
    const std::string out = d + "/it's a \"dir\" $HOME";
    // sh -c 'mkdir -p "$1" && printf %s "$2" > "$1/f"' with the path as an argument, never parsed
    ASSERT_EQ(run_program({"sh", "-c", "mkdir -p \"$1\" && printf %s \"$2\" > \"$1/f\"", "sh", out, "a 'b' \"c\""}),
              0);
    EXPECT_EQ(read_file(out + "/f"), "a 'b' \"c\"");
    EXPECT_EQ(run_program({"sh", "-c", "exit 3"}), 3);
    EXPECT_EQ(run_program({"/no/such/program"}), 127);
    EXPECT_EQ(run_program({"sh", "-c", "kill -9 $$"}), 128 + 9);
}

TEST(Platform, XzSizeEqualsTheXzProgram) {
    const std::string d = temp_dir("platform-xz");
    std::string text = word_text(300000, 7, {"the", "of", "Anne", "Wentworth", "Bath", "said", "and", "was"});
    text += "\xC3\xA9\xE2\x80\x94 unicode tail";
    const std::string f = d + "/t.txt";
    write_file_atomic(f, text);
    // the reference: Debian's xz-utils, run separately
    ASSERT_EQ(run("xz -9e -c -T1 < " + f + " > " + f + ".xz"), 0) << "xz-utils is needed (scripts/setup.sh --tests)";
    const int64_t want = static_cast<int64_t>(read_file(f + ".xz").size());
    EXPECT_EQ(xz_compressed_size(text), want);
    EXPECT_EQ(xz_compressed_size(""), static_cast<int64_t>(32));  // an empty .xz stream is 32 bytes
    EXPECT_LT(xz_compressed_size(text), static_cast<int64_t>(text.size()) / 3);
}

TEST(Platform, Utf8DecoderAndCompletePrefix) {
    size_t len = 0;
    EXPECT_EQ(utf8_decode_at("\xC3\xA9", 0, &len), 0xE9u);
    EXPECT_EQ(len, 2u);
    EXPECT_EQ(utf8_decode_at("\xF0\x9F\x98\x80", 0, &len), 0x1F600u);
    EXPECT_EQ(len, 4u);
    // overlong, surrogate, cut off, lone continuation: invalid, one byte at a time
    for (std::string bad : {"\xC0\xAF", "\xED\xA0\x80", "\xE2\x82", "\x80", "\xF5\x80\x80\x80"}) {
        EXPECT_EQ(utf8_decode_at(bad, 0, &len), kUtf8Invalid) << bad.size();
        EXPECT_EQ(len, 1u);
    }
    EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
    EXPECT_EQ(utf8_complete_prefix("ab\xC3\xA9"), 4u);
    EXPECT_EQ(utf8_complete_prefix("ab\xC3"), 2u);
    EXPECT_EQ(utf8_complete_prefix("ab\xE2\x82"), 2u);
    EXPECT_EQ(utf8_complete_prefix("ab\xF0\x9F\x98"), 2u);
    EXPECT_EQ(utf8_complete_prefix(""), 0u);
    EXPECT_EQ(utf8_code_points("a\xC3\xA9\xFF"), (std::vector<uint32_t>{'a', 0xE9, 0xFFFD}));
}
