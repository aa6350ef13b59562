// JSON written by writer processes (the exec protocol's hello and replies)
// and by plugins (identify metadata): parsed with parse_untrusted_json, then
// read field by field with JsonFields as the exec writer reads a reply.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "quiesce/json_fields.hpp"
#include "quiesce/json_nesting.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = quiesce::parse_untrusted_json(text);
  if (!parsed || !parsed->is_object()) {
    return 0;
  }
  try {
    quiesce::JsonFields fields(*parsed, "");
    (void)fields.integer("id", 0, 0, 1'000'000);
    (void)fields.boolean("ok", false);
    (void)fields.optional_string("error");
    (void)fields.optional_string("class");
    if (fields.has("capabilities")) {
      (void)fields.strings("capabilities");
    }
    (void)fields.millis("hold_ms", std::nullopt);
    fields.reject_unknown();
  } catch (const quiesce::FieldError&) {
  }
  // Serialising what was parsed must not throw either (invalid UTF-8 was
  // refused by the parser).
  (void)parsed->dump();
  return 0;
}
