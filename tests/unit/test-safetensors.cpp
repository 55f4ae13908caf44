#include <gtest/gtest.h>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "test-util.h"
#include "util/error.h"
#include "util/file.h"

using namespace distill;
using distill::testing_util::safetensors_bytes;

TEST(Safetensors, RoundTrip) {
    std::string path = distill::testing_util::temp_dir("st-rt") + "/rt.safetensors";
    auto a = torch::randn({3, 5});
    auto b = torch::arange(7, torch::kInt64);
    save_safetensors(path, {{"a", a}, {"b", b}, {"h", a.to(torch::kBFloat16)}}, {{"k", "v"}});
    SafetensorsFile f(path);
    EXPECT_TRUE(torch::equal(f.get("a"), a));
    EXPECT_TRUE(torch::equal(f.get("b", torch::kInt64), b));
    EXPECT_TRUE(torch::equal(f.get("h"), a.to(torch::kBFloat16).to(torch::kFloat32)));
    EXPECT_EQ(f.metadata().at("k"), "v");
    EXPECT_THROW(f.get("missing"), Error);
}

static void expect_error(const std::string& bytes, const std::string& needle) {
    std::string path = distill::testing_util::temp_dir("st-bad") + "/bad.safetensors";
    write_file_atomic(path, bytes);
    try {
        SafetensorsFile f(path);
        FAIL() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

TEST(Safetensors, HostileFiles) {
    expect_error("abc", "truncated");
    expect_error(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "header length");
    expect_error(safetensors_bytes("{not json", 0), "not valid JSON");
    expect_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
                 "outside");
    expect_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                 "need");
    expect_error(safetensors_bytes(R"({"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", 8),
                 "unsupported dtype");
    expect_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                 "negative");
    expect_error(
        safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
                    8),
        "overflow");
    expect_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
}
