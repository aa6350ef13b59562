// The input as a config file. Every outcome but a FieldError or a
// runtime_error (the documented refusals) is a bug: a crash, a sanitizer
// report, or another exception escaping.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "agent/core/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const quiesce::WriterRegistry registry;  // no writer types: writers[] entries are refused by type
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    (void)quiesce::agent::parse_config_text(text, registry, "fuzz");
  } catch (const quiesce::FieldError&) {
  } catch (const std::runtime_error&) {
  }
  return 0;
}
