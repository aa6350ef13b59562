// The OS-neutral part of reading a hook directory: names that are skipped,
// and the message for refused hooks. The scan itself is per OS
// (hook_directory_linux.cpp, hook_directory_windows.cpp).
#include "writers/hooks/hook_directory.hpp"

#include <array>
#include <filesystem>
#include <string_view>

namespace quiesce::writers::hooks {

namespace {

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace

std::string HookScan::problem() const {
  if (!directory_error.empty()) {
    return "hook directory " + directory + ": " + directory_error;
  }
  std::string text;
  for (const auto& file : refused) {
    if (!text.empty()) {
      text += "; ";
    }
    text += "refusing hook " + (std::filesystem::path(directory) / file.name).string() + ": " +
            file.reason;
  }
  return text;
}

std::string skip_reason_for_name(const std::string& name) {
  if (name.empty() || name.front() == '.') {
    return "hidden file";
  }
  if (name.back() == '~') {
    return "editor backup (*~)";
  }
  // What package managers and editors leave next to a changed file: the
  // copy is not meant to run, the file it sits beside is. qemu's
  // fsfreeze-hook skips the same (plus .bak/.orig, kept here too).
  static constexpr std::array<std::string_view, 3> suffixes{".sample", ".bak", ".orig"};
  for (auto suffix : suffixes) {
    if (ends_with(name, suffix)) {
      return "backup or sample file (*" + std::string(suffix) + ")";
    }
  }
  if (name.find(".dpkg-") != std::string::npos) {
    return "dpkg leftover (*.dpkg-*)";
  }
  if (name.find(".rpm") != std::string::npos) {
    return "rpm leftover (*.rpm*)";
  }
  if (name.find(".ucf-") != std::string::npos) {
    return "ucf leftover (*.ucf-*)";
  }
  return "";
}

}  // namespace quiesce::writers::hooks
