// distill report — one self-contained page for a set of runs (docs/report.md): report.html (the
// charts and tables, Chart.js inlined, nothing fetched), report.md and report.json (its data).
#include <cstdio>
#include <filesystem>

#include "cli.h"
#include "report/report.h"

namespace distill::cli {

namespace {
struct Options {
    std::vector<std::string> inputs;
    std::string out;
};

// <first input>/report, or report/ beside a file given first: next to what it describes, and
// never over a demo's own report.json
std::string default_out(const std::string& first) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_regular_file(first, ec)) {
        const fs::path p(first);
        return (p.has_parent_path() ? p.parent_path() / "report" : fs::path("report")).string();
    }
    return (fs::path(first) / "report").string();
}

int run(const Options& o) {
    const ReportFiles f = write_report(o.inputs, o.out.empty() ? default_out(o.inputs.front()) : o.out);
    std::printf("%s\n", nlohmann::json({{"html", f.html}, {"md", f.md}, {"json", f.json}}).dump().c_str());
    return 0;
}
}  // namespace

Command add_report(CLI::App& app) {
    auto o = std::make_shared<Options>();
    CLI::App* c = app.add_subcommand(
        "report", "one self-contained page (report.html, .md, .json) from demo runs, training runs and eval results");
    c->add_option("inputs", o->inputs,
                  "demo run directories, training run directories (metrics.jsonl) and eval results "
                  "(`distill eval -o FILE`, or a directory holding them)")
        ->required();
    c->add_option("-o,--out", o->out, "the directory to write report.html, report.md and report.json into "
                                      "(default: <first input>/report)");
    return {c, [o] { return run(*o); }, false};
}

}  // namespace distill::cli
