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

}  // namespace quiesce
