// Reading a hook directory on Windows: a hook is a .bat, .cmd, .ps1 or
// .exe file (Windows has no execute bit; the extension decides how it
// runs, platform/win/subprocess.cpp), trusted by the same rules as a
// plugin DLL (platform/trusted_file.hpp: owned by SYSTEM or the
// Administrators, nothing writable by the broad groups, same for its
// directory).
#include <algorithm>
#include <cctype>
#include <filesystem>

#include "platform/trusted_file.hpp"
#include "platform/win/win_error.hpp"
#include "writers/hooks/hook_directory.hpp"

namespace quiesce::writers::hooks {

namespace {

namespace fs = std::filesystem;

constexpr const char* not_runnable = "not a .bat, .cmd, .ps1 or .exe file";

std::string lower_extension(const fs::path& path) {
  auto extension = platform::win::narrow(path.extension().wstring());
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return extension;
}

bool runnable(const fs::path& path) {
  const auto extension = lower_extension(path);
  return extension == ".bat" || extension == ".cmd" || extension == ".ps1" ||
         extension == ".exe";
}

// cmd.exe would expand or interpret these in a batch file's path even in
// quotes (platform/win/subprocess.cpp refuses such a path too): found at
// the scan, the whole phase is refused before any hook runs, rather than
// failing half-way.
std::string batch_path_problem(const fs::path& path) {
  const auto extension = lower_extension(path);
  if (extension != ".bat" && extension != ".cmd") {
    return "";
  }
  if (path.wstring().find_first_of(L"\"%!&|<>^") != std::wstring::npos) {
    return "its path has a character cmd.exe would interpret (\" % ! & | < > ^)";
  }
  return "";
}

// check_trusted_file's reason without the "hook <path>" it starts with:
// HookScan::problem names the file itself.
std::string trust_problem(const std::string& path, const ScanRules& rules) {
  auto trusted = platform::check_trusted_file(
      path, "hook", platform::TrustRules{.allow_foreign_owner = rules.allow_non_root_owner});
  if (trusted.problem.empty()) {
    return "";
  }
  std::string reason = trusted.problem;
  const std::string prefix = "hook " + path;
  if (reason.starts_with(prefix)) {
    reason.erase(0, prefix.size());
  }
  for (std::string_view lead : {" refused: ", ": "}) {
    if (reason.starts_with(lead)) {
      reason.erase(0, lead.size());
      break;
    }
  }
  return reason;
}

}  // namespace

SingleScript check_single_script(const std::string& path, const ScanRules& rules) {
  SingleScript script;
  std::error_code ec;
  const fs::path file(platform::win::widen(path));
  if (path.empty() || !fs::is_regular_file(file, ec)) {
    return script;
  }
  script.present = true;
  if (!runnable(file)) {
    script.problem = not_runnable;
  } else if (auto problem = batch_path_problem(file); !problem.empty()) {
    script.problem = problem;
  } else {
    script.problem = trust_problem(path, rules);
  }
  return script;
}

HookScan scan_hook_directory(const fs::path& directory, const ScanRules& rules) {
  HookScan scan;
  scan.directory = platform::win::narrow(directory.wstring());
  std::error_code ec;
  const auto status = fs::status(directory, ec);
  if (!fs::exists(status)) {
    if (ec && ec != std::errc::no_such_file_or_directory) {
      scan.exists = true;
      scan.directory_error = ec.message();
    }
    return scan;  // nothing installed: nothing to run
  }
  scan.exists = true;
  if (!fs::is_directory(status)) {
    scan.directory_error = "not a directory";
    return scan;
  }
  std::vector<std::string> names;
  for (fs::directory_iterator it(directory, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(platform::win::narrow(it->path().filename().wstring()));
  }
  if (ec) {
    scan.directory_error = "cannot read: " + ec.message();
    return scan;
  }
  // Byte order of the UTF-8 names, as on Linux: 10-x runs before 20-y.
  std::sort(names.begin(), names.end());

  for (const auto& name : names) {
    if (auto reason = skip_reason_for_name(name); !reason.empty()) {
      scan.skipped.push_back({name, reason});
      continue;
    }
    const fs::path path = directory / fs::path(platform::win::widen(name));
    const auto path_text = platform::win::narrow(path.wstring());
    std::error_code file_ec;
    const auto file_status = fs::status(path, file_ec);
    if (file_ec) {
      scan.skipped.push_back({name, "cannot stat: " + file_ec.message()});
      continue;
    }
    if (fs::is_directory(file_status)) {
      scan.skipped.push_back({name, "directory"});
      continue;
    }
    if (!fs::is_regular_file(file_status)) {
      scan.skipped.push_back({name, "not a regular file"});
      continue;
    }
    if (!runnable(path)) {
      scan.skipped.push_back({name, not_runnable});
      continue;
    }
    if (auto problem = batch_path_problem(path); !problem.empty()) {
      scan.refused.push_back({name, problem});
      continue;
    }
    if (auto problem = trust_problem(path_text, rules); !problem.empty()) {
      scan.refused.push_back({name, problem});
      continue;
    }
    scan.hooks.push_back({name, path_text});
  }
  return scan;
}

}  // namespace quiesce::writers::hooks
