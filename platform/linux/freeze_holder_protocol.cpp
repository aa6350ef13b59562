#include "platform/linux/freeze_holder_protocol.hpp"

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <charconv>

#include "platform/linux/mountinfo.hpp"

namespace quiesce::platform::holder {

namespace {

constexpr std::array<std::string_view, 10> state_names{
    "pending", "frozen", "unsupported", "busy-ignored", "busy",
    "failed",  "thawed", "was-thawed",  "thaw-failed",  "stuck"};

std::string encode_field(std::string_view field) {
  if (field.empty()) {
    return "-";
  }
  if (field == "-") {
    return "\\055";
  }
  return escape_mount_path(field);
}

std::string decode_field(std::string_view field) {
  if (field == "-") {
    return "";
  }
  return unescape_mount_path(field);
}

std::vector<std::string> split_line(std::string_view line) {
  std::vector<std::string> fields;
  std::size_t pos = 0;
  while (pos <= line.size()) {
    auto end = line.find(' ', pos);
    if (end == std::string_view::npos) {
      end = line.size();
    }
    if (end > pos) {
      fields.push_back(decode_field(line.substr(pos, end - pos)));
    }
    pos = end + 1;
  }
  return fields;
}

void append_line(std::string& out, std::string_view first, const std::vector<std::string>& rest) {
  out += first;
  for (const auto& field : rest) {
    out += ' ';
    out += encode_field(field);
  }
  out += '\n';
}

template <typename Integer>
bool parse_integer(std::string_view text, Integer& out) {
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return !text.empty() && ec == std::errc{} && ptr == end;
}

}  // namespace

std::string encode(const Message& message) {
  std::string out;
  append_line(out, message.verb, message.args);
  for (const auto& row : message.rows) {
    if (row.empty()) {
      continue;
    }
    out += encode_field(row.front());
    append_line(out, "", std::vector<std::string>(row.begin() + 1, row.end()));
  }
  return out;
}

std::optional<Message> decode(std::string_view text) {
  Message message;
  bool first = true;
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    auto fields = split_line(text.substr(pos, end - pos));
    pos = end + 1;
    if (fields.empty()) {
      continue;
    }
    if (first) {
      message.verb = fields.front();
      message.args.assign(fields.begin() + 1, fields.end());
      first = false;
    } else {
      message.rows.push_back(std::move(fields));
    }
  }
  if (first) {
    return std::nullopt;
  }
  return message;
}

std::string_view to_string(MountState state) {
  return state_names.at(static_cast<std::size_t>(state));
}

std::optional<MountState> parse_mount_state(std::string_view text) {
  for (std::size_t i = 0; i < state_names.size(); ++i) {
    if (state_names[i] == text) {
      return static_cast<MountState>(i);
    }
  }
  return std::nullopt;
}

Message to_message(const FreezeRequest& request) {
  Message message{"FREEZE",
                  {std::to_string(request.deadline_ns), request.ignore_frozen ? "1" : "0",
                   std::to_string(request.freeze_deadline_ns)},
                  {}};
  for (const auto& mount : request.mounts) {
    message.rows.push_back(
        {std::to_string(mount.wave), std::to_string(mount.mount_id), mount.path});
  }
  return message;
}

std::optional<FreezeRequest> freeze_request_from(const Message& message) {
  if (message.verb != "FREEZE" || message.args.size() != 3) {
    return std::nullopt;
  }
  FreezeRequest request;
  if (!parse_integer(message.args[0], request.deadline_ns) ||
      !parse_integer(message.args[2], request.freeze_deadline_ns) ||
      (message.args[1] != "0" && message.args[1] != "1")) {
    return std::nullopt;
  }
  request.ignore_frozen = message.args[1] == "1";
  for (const auto& row : message.rows) {
    MountRequest mount;
    if (row.size() != 3 || !parse_integer(row[0], mount.wave) ||
        !parse_integer(row[1], mount.mount_id) || row[2].empty() || row[2].front() != '/') {
      return std::nullopt;
    }
    mount.path = row[2];
    request.mounts.push_back(std::move(mount));
  }
  return request;
}

std::vector<std::string> to_row(const MountResult& result) {
  return {std::string(to_string(result.state)), std::to_string(result.mount_id),
          std::to_string(result.error_number), result.path};
}

std::optional<MountResult> mount_result_from(const std::vector<std::string>& row) {
  if (row.size() != 4) {
    return std::nullopt;
  }
  auto state = parse_mount_state(row[0]);
  MountResult result;
  if (!state || !parse_integer(row[1], result.mount_id) ||
      !parse_integer(row[2], result.error_number)) {
    return std::nullopt;
  }
  result.state = *state;
  result.path = row[3];
  return result;
}

std::optional<std::vector<MountResult>> mount_results_from(const Message& message) {
  std::vector<MountResult> results;
  for (const auto& row : message.rows) {
    auto result = mount_result_from(row);
    if (!result) {
      return std::nullopt;
    }
    results.push_back(std::move(*result));
  }
  return results;
}

ssize_t receive_datagram(int fd, std::string& buffer, int flags) {
  // MSG_TRUNC with MSG_PEEK answers the datagram's full length.
  auto size = ::recv(fd, nullptr, 0, MSG_PEEK | MSG_TRUNC | flags);
  if (size <= 0) {
    return size;
  }
  if (static_cast<std::size_t>(size) > max_message_size) {
    char discard = 0;
    (void)::recv(fd, &discard, 1, flags);
    errno = EMSGSIZE;
    return -1;
  }
  buffer.resize(static_cast<std::size_t>(size));
  auto n = ::recv(fd, buffer.data(), buffer.size(), flags);
  if (n >= 0) {
    buffer.resize(static_cast<std::size_t>(n));
  }
  return n;
}

}  // namespace quiesce::platform::holder
