#pragma once
// How run_subprocess turns a program's output into lines, on every OS
// (platform/linux/subprocess.cpp, platform/win/subprocess.cpp), so the
// bounds and the "last stderr line" in errors are the same everywhere.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

#include "platform/subprocess.hpp"

namespace quiesce::platform {

// Splits one stream into lines, keeps and forwards the first bytes up to
// the bound, and remembers the last non-empty line whatever the bound.
class StreamCollector {
 public:
  StreamCollector(OutputStream stream, const SubprocessSpec& spec, std::string& text,
                  std::size_t& dropped, std::string* last_line)
      : stream_(stream), spec_(spec), text_(text), dropped_(dropped), last_line_(last_line) {}

  void add(std::string_view data) {
    for (char c : data) {
      if (c == '\n') {
        emit();
        continue;
      }
      pending_.push_back(c);
      if (pending_.size() >= std::max<std::size_t>(spec_.max_line_bytes, 1)) {
        emit();
      }
    }
  }

  void finish() {
    if (!pending_.empty()) {
      emit();
    }
  }

 private:
  void emit() {
    std::string_view line = pending_;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    if (last_line_ != nullptr && line.find_first_not_of(" \t") != std::string_view::npos) {
      last_line_->assign(line);
    }
    const std::size_t cost = line.size() + 1;
    if (kept_ + cost <= spec_.max_output_bytes) {
      kept_ += cost;
      text_.append(line);
      text_.push_back('\n');
      if (spec_.on_line) {
        spec_.on_line(stream_, line);
      }
    } else {
      dropped_ += cost;
    }
    pending_.clear();
  }

  OutputStream stream_;
  const SubprocessSpec& spec_;
  std::string& text_;
  std::size_t& dropped_;
  std::string* last_line_;
  std::string pending_;
  std::size_t kept_ = 0;
};

}  // namespace quiesce::platform
