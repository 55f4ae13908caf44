// `distill demo` at full size (label `slow`, about 9 to 10 minutes on 2 cores; not in the default
// suite): the distilled student must beat the same student trained without a teacher, by margins
// below those of the measured runs in docs/demo.md (the 9m20s run: held-out bpb 1.8691 vs 1.9496,
// KL to the teacher 0.475 vs 0.687, top-1 agreement 0.598 vs 0.508).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test-util.h"
#include "util/file.h"

using namespace distill;
using namespace distill::testing_util;
using nlohmann::json;

TEST(DemoFull, DistilledStudentBeatsTheBaseline) {
    const std::string run = temp_dir("demo-full") + "/run";
    ASSERT_EQ(run_distill("demo --run-dir " + run), 0);
    const json r = json::parse(read_file(run + "/report.json"));
    const json& teacher = r["models"][0];
    const json& kd = r["models"][1];
    const json& base = r["models"][2];
    EXPECT_LT(kd["bpb"].get<double>(), base["bpb"].get<double>() - 0.02);
    EXPECT_LT(kd["kl_to_teacher"].get<double>(), 0.8 * base["kl_to_teacher"].get<double>());
    EXPECT_GT(kd["top1_agreement"].get<double>(), base["top1_agreement"].get<double>() + 0.03);
    // the teacher is better than xz -9e, which has read the same five novels, and reaches the
    // held-out bpb the demo is built for (1.7376 measured; docs/demo.md)
    EXPECT_LT(teacher["bpb"].get<double>(), r["xz_bpb"].get<double>());
    EXPECT_LE(teacher["bpb"].get<double>(), 1.80);
}
