// distill — the base URLs of OpenAI-compatible endpoints, as the clients (API capture, remote eval) take them.
#pragma once

#include <string>
#include <utility>

namespace distill {

// "http://host:port/v1/" -> ("http://host:port", "/v1"): the server for httplib::Client and the
// path prefix (no trailing '/'). Anything but an http:// or https:// URL is an Error naming `flag`.
std::pair<std::string, std::string> split_api_url(const std::string& url, const std::string& flag);

}  // namespace distill
