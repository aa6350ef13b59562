#pragma once
// Splits qemu-guest-agent's input stream (JSON values one after another, no
// separator required) into whole values without buffering more than one
// value, and without recursion, so no input can make it use unbounded memory
// or stack (docs/qga.md, "Framing").
//
// What it tracks per byte: inside a string or not (and escapes, and UTF-8
// sequences, which must be valid), the stack of open containers and what the
// grammar expects next (a key, a colon, a value, a comma or a close). That is
// enough to say where a value ends and to notice most syntax errors at the
// byte that causes them, so that recovery can start right there: a truncated
// object followed by a new command fails at the new command's '{', which then
// starts a fresh value. Scalars (numbers, true/false/null) are only collected
// here; the caller's JSON parser checks them when it parses the whole value.
//
// Resynchronisation, as qemu-ga clients rely on it:
//   - a 0xFF byte anywhere drops whatever was partially read (no reply: the
//     client that sent it is about to send guest-sync-delimited);
//   - after a syntax error (one error frame), bytes are skipped up to the
//     next 0xFF, ASCII control character (a newline) or '{', which starts
//     the next value;
//   - a value over the size or nesting limit gives one error frame, then the
//     rest of that value is skipped (tracked, not stored) up to its end or
//     the next 0xFF.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace quiesce::agent::qga {

struct FramingLimits {
  std::size_t max_object_bytes = 1024 * 1024;
  std::size_t max_nesting = 64;
};

struct Frame {
  enum class Kind {
    value,           // `text` is one whole JSON value (object or array)
    syntax_error,    // `text` says what was wrong
    limit_exceeded,  // `text` says which limit; sockets close the connection
  };
  Kind kind = Kind::value;
  std::string text;
};

class JsonStreamSplitter {
 public:
  explicit JsonStreamSplitter(FramingLimits limits);

  // Consumes `bytes`, appending every frame completed by them to `out`.
  void feed(std::string_view bytes, std::vector<Frame>& out);

  // Drops any partial value and any recovery in progress (as a 0xFF does).
  void reset();

  // Bytes held for the value being read (bounded by max_object_bytes).
  [[nodiscard]] std::size_t buffered_bytes() const { return buffer_.size(); }

 private:
  enum class Mode {
    between,     // between values: whitespace, 0xFF, or the next value's '[' / '{'
    in_value,    // reading a value into buffer_
    recovering,  // after a syntax error: skipping to a resynchronisation point
    skipping,    // after a limit error: skipping the rest of the value (not stored)
  };
  // What the grammar accepts next inside a value.
  enum class Expect { value_or_close, value, key_or_close, key, colon, comma_or_close };

  void step(unsigned char byte, std::vector<Frame>& out);
  void step_value(unsigned char byte, std::vector<Frame>& out);
  void step_skipping(unsigned char byte);
  // A string byte (after the opening quote): escapes, the closing quote and
  // UTF-8 validity. Returns an error message, or "" when the byte is fine.
  std::string string_byte(unsigned char byte);
  void open_container(unsigned char byte, std::vector<Frame>& out);
  void close_container(unsigned char byte, std::vector<Frame>& out);
  void after_value(std::vector<Frame>& out);
  void end_scalar();
  void syntax_error(const std::string& message, unsigned char byte, std::vector<Frame>& out);
  void limit_error(const std::string& message, std::vector<Frame>& out);

  FramingLimits limits_;
  Mode mode_ = Mode::between;
  std::string buffer_;
  std::vector<char> stack_;  // '{' or '[' per open container (<= max_nesting)
  Expect expect_ = Expect::value;
  bool in_string_ = false;
  bool string_is_key_ = false;
  bool escape_ = false;
  int escape_hex_left_ = 0;   // hex digits still due after "\u"
  int utf8_left_ = 0;         // continuation bytes still due
  unsigned char utf8_lead_ = 0;
  bool utf8_first_continuation_ = false;
  bool in_scalar_ = false;
  // skipping: depth and string state of the value being thrown away.
  std::size_t skip_depth_ = 0;
  bool skip_in_string_ = false;
  bool skip_escape_ = false;
};

}  // namespace quiesce::agent::qga
