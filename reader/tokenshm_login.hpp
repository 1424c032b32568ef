// `tokenshm login`, for tokenshm_cli.cpp's dispatcher.
#pragma once

#include <string_view>
#include <vector>

namespace tokenshm_cli {

extern const char* const kLoginUsage;
// The exit code (login.hpp's login_exit).
int cmd_login(const std::vector<std::string_view>& args);

}  // namespace tokenshm_cli
