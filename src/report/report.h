// distill — one report for a set of runs (docs/report.md): the results table, training curves,
// agreement and task-accuracy bars with error bars, the cost ledger, teacher recovered % and the
// samples, as report.json (the data), report.md and a self-contained report.html (Chart.js
// inlined, nothing fetched).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace distill {

// Reads every input and merges them into the report's data, the single source of the page and
// the Markdown. An input is a demo run directory (its report.json and the runs it names), a
// training run directory (metrics.jsonl), or an eval result (what `distill eval -o` writes; the
// file, or a directory holding it). A missing or malformed input is an Error naming the file.
nlohmann::json collect_report(const std::vector<std::string>& inputs);

std::string report_markdown(const nlohmann::json& data);
std::string report_html(const nlohmann::json& data);

struct ReportFiles {
    std::string html, md, json;
};

// collect_report, then report.html, report.md and report.json written atomically into out_dir.
ReportFiles write_report(const std::vector<std::string>& inputs, const std::string& out_dir);

}  // namespace distill
