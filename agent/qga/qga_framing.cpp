#include "agent/qga/qga_framing.hpp"

#include <cstdio>

#include "quiesce/json_nesting.hpp"

namespace quiesce::agent::qga {

namespace {

constexpr unsigned char kReset = 0xFF;

bool is_whitespace(unsigned char byte) {
  return byte == ' ' || byte == '\t' || byte == '\r' || byte == '\n';
}

// Bytes that may appear in a number or in true/false/null; the JSON parser
// that reads the finished value decides whether the scalar is valid.
bool is_scalar_byte(unsigned char byte) {
  return (byte >= '0' && byte <= '9') || (byte >= 'a' && byte <= 'z') ||
         (byte >= 'A' && byte <= 'Z') || byte == '-' || byte == '+' || byte == '.';
}

bool is_hex(unsigned char byte) {
  return (byte >= '0' && byte <= '9') || (byte >= 'a' && byte <= 'f') ||
         (byte >= 'A' && byte <= 'F');
}

// "'x'" for printable bytes, "byte 0x1f" otherwise: error descriptions
// must stay valid UTF-8 whatever the input was.
std::string describe(unsigned char byte) {
  if (byte >= 0x20 && byte < 0x7F) {
    return std::string("'") + static_cast<char>(byte) + "'";
  }
  char text[16];
  std::snprintf(text, sizeof text, "byte 0x%02x", byte);
  return text;
}

}  // namespace

JsonStreamSplitter::JsonStreamSplitter(FramingLimits limits) : limits_(limits) {
  if (limits_.max_nesting == 0) {
    limits_.max_nesting = 1;
  }
}

void JsonStreamSplitter::reset() {
  mode_ = Mode::between;
  buffer_.clear();
  stack_.clear();
  expect_ = Expect::value;
  in_string_ = false;
  string_is_key_ = false;
  escape_ = false;
  escape_hex_left_ = 0;
  utf8_left_ = 0;
  in_scalar_ = false;
  skip_depth_ = 0;
  skip_in_string_ = false;
  skip_escape_ = false;
}

void JsonStreamSplitter::feed(std::string_view bytes, std::vector<Frame>& out) {
  for (char c : bytes) {
    step(static_cast<unsigned char>(c), out);
  }
}

void JsonStreamSplitter::step(unsigned char byte, std::vector<Frame>& out) {
  if (byte == kReset) {
    reset();
    return;
  }
  switch (mode_) {
    case Mode::between:
      if (is_whitespace(byte)) {
        return;
      }
      if (byte == '{' || byte == '[') {
        buffer_.clear();
        stack_.clear();
        mode_ = Mode::in_value;
        open_container(byte, out);
        return;
      }
      syntax_error("JSON parse error, stray " + describe(byte) + " where a JSON object must start",
                   byte, out);
      return;
    case Mode::recovering:
      if (byte < 0x20) {
        mode_ = Mode::between;
      } else if (byte == '{') {
        mode_ = Mode::between;
        step(byte, out);
      }
      return;
    case Mode::skipping:
      step_skipping(byte);
      return;
    case Mode::in_value:
      step_value(byte, out);
      return;
  }
}

void JsonStreamSplitter::step_value(unsigned char byte, std::vector<Frame>& out) {
  if (buffer_.size() >= limits_.max_object_bytes) {
    skip_depth_ = stack_.size();
    skip_in_string_ = in_string_;
    skip_escape_ = escape_;
    limit_error("JSON object size limit exceeded (" + std::to_string(limits_.max_object_bytes) +
                    " bytes)",
                out);
    step_skipping(byte);
    return;
  }
  if (in_string_) {
    if (auto error = string_byte(byte); !error.empty()) {
      syntax_error(error, byte, out);
      return;
    }
    if (!in_string_) {
      if (string_is_key_) {
        expect_ = Expect::colon;
      } else {
        after_value(out);
      }
    }
    return;
  }
  if (in_scalar_) {
    if (is_scalar_byte(byte)) {
      buffer_.push_back(static_cast<char>(byte));
      return;
    }
    end_scalar();
  }
  if (is_whitespace(byte)) {
    return;  // not kept: the grammar already separates tokens
  }
  const bool value_expected = expect_ == Expect::value || expect_ == Expect::value_or_close;
  switch (byte) {
    case '"':
      if (value_expected || expect_ == Expect::key_or_close || expect_ == Expect::key) {
        string_is_key_ = !value_expected;
        in_string_ = true;
        buffer_.push_back('"');
        return;
      }
      break;
    case '{':
    case '[':
      if (value_expected) {
        open_container(byte, out);
        return;
      }
      break;
    case '}':
      if (stack_.back() == '{' &&
          (expect_ == Expect::key_or_close || expect_ == Expect::comma_or_close)) {
        close_container(byte, out);
        return;
      }
      break;
    case ']':
      if (stack_.back() == '[' &&
          (expect_ == Expect::value_or_close || expect_ == Expect::comma_or_close)) {
        close_container(byte, out);
        return;
      }
      break;
    case ':':
      if (expect_ == Expect::colon) {
        buffer_.push_back(':');
        expect_ = Expect::value;
        return;
      }
      break;
    case ',':
      if (expect_ == Expect::comma_or_close) {
        buffer_.push_back(',');
        expect_ = stack_.back() == '{' ? Expect::key : Expect::value;
        return;
      }
      break;
    default:
      if (is_scalar_byte(byte) && value_expected) {
        in_scalar_ = true;
        buffer_.push_back(static_cast<char>(byte));
        return;
      }
      break;
  }
  const char* wanted = "a value";
  switch (expect_) {
    case Expect::value_or_close: wanted = "a value or ']'"; break;
    case Expect::value: wanted = "a value"; break;
    case Expect::key_or_close: wanted = "a member name or '}'"; break;
    case Expect::key: wanted = "a member name"; break;
    case Expect::colon: wanted = "':'"; break;
    case Expect::comma_or_close:
      wanted = stack_.back() == '{' ? "',' or '}'" : "',' or ']'";
      break;
  }
  syntax_error("JSON parse error, expecting " + std::string(wanted) + ", got " + describe(byte),
               byte, out);
}

std::string JsonStreamSplitter::string_byte(unsigned char byte) {
  if (utf8_left_ > 0) {
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (utf8_first_continuation_) {
      // Overlong forms, UTF-16 surrogates and code points past U+10FFFF.
      if (utf8_lead_ == 0xE0) {
        low = 0xA0;
      } else if (utf8_lead_ == 0xED) {
        high = 0x9F;
      } else if (utf8_lead_ == 0xF0) {
        low = 0x90;
      } else if (utf8_lead_ == 0xF4) {
        high = 0x8F;
      }
    }
    if (byte < low || byte > high) {
      return "invalid UTF-8 in a JSON string (" + describe(byte) + " after lead byte " +
             describe(utf8_lead_) + ")";
    }
    utf8_first_continuation_ = false;
    --utf8_left_;
  } else if (escape_hex_left_ > 0) {
    if (!is_hex(byte)) {
      return "JSON parse error, \\u must be followed by four hex digits, got " + describe(byte);
    }
    --escape_hex_left_;
  } else if (escape_) {
    static constexpr std::string_view escapes = "\"\\/bfnrtu";
    if (escapes.find(static_cast<char>(byte)) == std::string_view::npos) {
      return "JSON parse error, invalid escape \\" + std::string(1, static_cast<char>(byte));
    }
    escape_ = false;
    if (byte == 'u') {
      escape_hex_left_ = 4;
    }
  } else if (byte == '\\') {
    escape_ = true;
  } else if (byte == '"') {
    in_string_ = false;
  } else if (byte < 0x20) {
    return "JSON parse error, control character " + describe(byte) + " inside a string";
  } else if (byte >= 0x80) {
    if (byte >= 0xC2 && byte <= 0xDF) {
      utf8_left_ = 1;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
      utf8_left_ = 2;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      utf8_left_ = 3;
    } else {
      return "invalid UTF-8 in a JSON string (" + describe(byte) + " cannot start a character)";
    }
    utf8_lead_ = byte;
    utf8_first_continuation_ = true;
  }
  buffer_.push_back(static_cast<char>(byte));
  return {};
}

void JsonStreamSplitter::open_container(unsigned char byte, std::vector<Frame>& out) {
  if (stack_.size() >= limits_.max_nesting) {
    skip_depth_ = stack_.size() + 1;  // this bracket too
    skip_in_string_ = false;
    skip_escape_ = false;
    limit_error("JSON nesting depth limit exceeded (" + std::to_string(limits_.max_nesting) + ")",
                out);
    return;
  }
  buffer_.push_back(static_cast<char>(byte));
  stack_.push_back(static_cast<char>(byte));
  expect_ = byte == '{' ? Expect::key_or_close : Expect::value_or_close;
}

void JsonStreamSplitter::close_container(unsigned char byte, std::vector<Frame>& out) {
  buffer_.push_back(static_cast<char>(byte));
  stack_.pop_back();
  if (!stack_.empty()) {
    expect_ = Expect::comma_or_close;
    return;
  }
  out.push_back(Frame{Frame::Kind::value, std::move(buffer_)});
  buffer_.clear();
  mode_ = Mode::between;
}

void JsonStreamSplitter::after_value(std::vector<Frame>& /*out*/) {
  expect_ = Expect::comma_or_close;
}

void JsonStreamSplitter::end_scalar() {
  in_scalar_ = false;
  expect_ = Expect::comma_or_close;
}

void JsonStreamSplitter::syntax_error(const std::string& message, unsigned char byte,
                                      std::vector<Frame>& out) {
  out.push_back(Frame{Frame::Kind::syntax_error, message});
  reset();
  if (byte == '{') {
    // The byte that broke this value may well start the next command (a
    // truncated object followed by a new one): read it as such.
    step(byte, out);
  } else if (byte >= 0x20) {
    mode_ = Mode::recovering;
  }
}

void JsonStreamSplitter::limit_error(const std::string& message, std::vector<Frame>& out) {
  out.push_back(Frame{Frame::Kind::limit_exceeded, message});
  const auto depth = skip_depth_;
  const auto in_string = skip_in_string_;
  const auto escape = skip_escape_;
  reset();
  buffer_.shrink_to_fit();  // give the limit's worth of memory back
  mode_ = Mode::skipping;
  skip_depth_ = depth;
  skip_in_string_ = in_string;
  skip_escape_ = escape;
}

void JsonStreamSplitter::step_skipping(unsigned char byte) {
  // The same bracket-and-string tracking every JSON depth check uses
  // (quiesce/json_nesting.hpp), resumed from where the skipped value stood.
  JsonNestingTracker tracker(skip_depth_, skip_in_string_, skip_escape_);
  const std::size_t depth_before = skip_depth_;
  tracker.step(byte);
  skip_depth_ = tracker.depth();
  skip_in_string_ = tracker.in_string();
  skip_escape_ = tracker.after_escape();
  if (depth_before == 1 && skip_depth_ == 0) {
    mode_ = Mode::between;
  }
}

}  // namespace quiesce::agent::qga
