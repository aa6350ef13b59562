// Reading a hook directory on Linux: executables owned by root, not
// writable by group or others (platform/linux/file_ownership.hpp).
#include "writers/hooks/hook_directory.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "platform/linux/file_ownership.hpp"

namespace quiesce::writers::hooks {

SingleScript check_single_script(const std::string& path, const ScanRules& rules) {
  SingleScript script;
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return script;
  }
  script.present = true;
  if ((st.st_mode & (S_IXUSR | S_IXGRP | S_IXOTH)) == 0) {
    // open-vm-tools would try to run it and fail; saying why is kinder.
    script.problem = "not executable";
  } else {
    script.problem = platform::ownership_problem(st, rules.allow_non_root_owner);
  }
  return script;
}

HookScan scan_hook_directory(const std::filesystem::path& directory, const ScanRules& rules) {
  HookScan scan;
  scan.directory = directory.string();
  struct stat dir_stat {};
  if (::stat(scan.directory.c_str(), &dir_stat) != 0) {
    if (errno == ENOENT) {
      return scan;  // nothing installed: nothing to run
    }
    scan.exists = true;
    scan.directory_error = std::strerror(errno);
    return scan;
  }
  scan.exists = true;
  if (!S_ISDIR(dir_stat.st_mode)) {
    scan.directory_error = "not a directory";
    return scan;
  }
  if (auto problem = platform::ownership_problem(dir_stat, rules.allow_non_root_owner); !problem.empty()) {
    scan.directory_error = problem;
    return scan;
  }

  DIR* dir = ::opendir(scan.directory.c_str());
  if (dir == nullptr) {
    scan.directory_error = std::string("cannot read: ") + std::strerror(errno);
    return scan;
  }
  std::vector<std::string> names;
  while (auto* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") {
      names.push_back(std::move(name));
    }
  }
  ::closedir(dir);
  // std::string compares bytes (as unsigned char): the C-locale order run-parts uses.
  std::sort(names.begin(), names.end());

  for (const auto& name : names) {
    if (auto reason = skip_reason_for_name(name); !reason.empty()) {
      scan.skipped.push_back({name, reason});
      continue;
    }
    const std::string path = scan.directory + "/" + name;
    struct stat st {};
    // Follows symlinks: a link to a script elsewhere is judged by the script.
    if (::stat(path.c_str(), &st) != 0) {
      scan.skipped.push_back({name, std::string("cannot stat: ") + std::strerror(errno)});
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      scan.skipped.push_back({name, "directory"});
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      scan.skipped.push_back({name, "not a regular file"});
      continue;
    }
    if ((st.st_mode & (S_IXUSR | S_IXGRP | S_IXOTH)) == 0) {
      scan.skipped.push_back({name, "not executable"});
      continue;
    }
    if (auto problem = platform::ownership_problem(st, rules.allow_non_root_owner); !problem.empty()) {
      scan.refused.push_back({name, problem});
      continue;
    }
    scan.hooks.push_back({name, path});
  }
  return scan;
}

}  // namespace quiesce::writers::hooks
