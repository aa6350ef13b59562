// Feeds the input to the qga stream splitter in chunks whose sizes come from
// the input itself (so every split point is tried), then parses each value
// frame as QgaService would. Checks the splitter's own promises: a value
// frame is a whole JSON value within the limits, and buffered bytes never
// exceed the size limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "agent/qga/qga_framing.hpp"
#include "quiesce/json_nesting.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    return 0;
  }
  quiesce::agent::qga::FramingLimits limits;
  limits.max_object_bytes = 4096;
  limits.max_nesting = 16;
  quiesce::agent::qga::JsonStreamSplitter splitter(limits);
  const std::size_t chunk = 1 + data[0] % 64;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<quiesce::agent::qga::Frame> frames;
  while (!rest.empty()) {
    const auto piece = rest.substr(0, chunk);
    splitter.feed(piece, frames);
    rest.remove_prefix(piece.size());
    if (splitter.buffered_bytes() > limits.max_object_bytes) {
      std::abort();
    }
  }
  for (const auto& frame : frames) {
    if (frame.kind != quiesce::agent::qga::Frame::Kind::value) {
      continue;
    }
    if (frame.text.size() > limits.max_object_bytes ||
        !quiesce::json_nesting_within(frame.text, limits.max_nesting)) {
      std::abort();
    }
    (void)quiesce::parse_untrusted_json(frame.text);
  }
  return 0;
}
