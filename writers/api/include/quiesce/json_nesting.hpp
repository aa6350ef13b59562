#pragma once
// How deeply JSON containers nest, found without recursion and without
// parsing. nlohmann_json's parser recurses once per '[' or '{', so a body of
// 70,000 '[' overflows the stack; every parse of text from outside (request
// bodies, the config file, exec-writer replies, plugin metadata, the qga
// stream) checks the depth with this first.
//
// Only brackets outside strings count; whether the text is valid JSON is left
// to the parser that runs afterwards.

#include <cstddef>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

namespace quiesce {

// Deepest nesting the agent accepts in any JSON it parses (docs/api.md).
inline constexpr std::size_t default_max_json_nesting = 64;

// Byte-at-a-time tracker, for callers that see a stream (the qga framing).
class JsonNestingTracker {
 public:
  JsonNestingTracker() = default;
  // Resumes in the middle of a value: `depth` containers open, possibly
  // inside a string (and right after a backslash in it).
  JsonNestingTracker(std::size_t depth, bool in_string, bool after_escape)
      : depth_(depth), in_string_(in_string), escape_(after_escape) {}

  void step(unsigned char byte) {
    if (in_string_) {
      if (escape_) {
        escape_ = false;
      } else if (byte == '\\') {
        escape_ = true;
      } else if (byte == '"') {
        in_string_ = false;
      }
      return;
    }
    if (byte == '"') {
      in_string_ = true;
    } else if (byte == '{' || byte == '[') {
      ++depth_;
    } else if ((byte == '}' || byte == ']') && depth_ > 0) {
      --depth_;
    }
  }

  [[nodiscard]] std::size_t depth() const { return depth_; }
  [[nodiscard]] bool in_string() const { return in_string_; }
  [[nodiscard]] bool after_escape() const { return escape_; }

 private:
  std::size_t depth_ = 0;
  bool in_string_ = false;
  bool escape_ = false;
};

// The deepest nesting in `text`, or max_nesting + 1 as soon as it is passed
// (so the scan of a hostile body stops early).
[[nodiscard]] std::size_t json_nesting_depth(std::string_view text, std::size_t max_nesting);

// True when no container in `text` nests deeper than `max_nesting`.
[[nodiscard]] inline bool json_nesting_within(std::string_view text,
                                              std::size_t max_nesting = default_max_json_nesting) {
  return json_nesting_depth(text, max_nesting) <= max_nesting;
}

// Parses JSON that came from outside the agent (a writer process, a plugin):
// nothing when it is not JSON or nests deeper than `max_nesting`, checked
// before the recursive parser runs.
[[nodiscard]] std::optional<nlohmann::json> parse_untrusted_json(
    std::string_view text, std::size_t max_nesting = default_max_json_nesting);

}  // namespace quiesce
