#include "quiesce/json_nesting.hpp"

#include <algorithm>

namespace quiesce {

std::size_t json_nesting_depth(std::string_view text, std::size_t max_nesting) {
  JsonNestingTracker tracker;
  std::size_t deepest = 0;
  for (char c : text) {
    tracker.step(static_cast<unsigned char>(c));
    deepest = std::max(deepest, tracker.depth());
    if (deepest > max_nesting) {
      return max_nesting + 1;
    }
  }
  return deepest;
}

std::optional<nlohmann::json> parse_untrusted_json(std::string_view text, std::size_t max_nesting) {
  if (!json_nesting_within(text, max_nesting)) {
    return std::nullopt;
  }
  auto parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return std::nullopt;
  }
  return parsed;
}

}  // namespace quiesce
