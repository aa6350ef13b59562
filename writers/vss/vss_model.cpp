#include "writers/vss/vss_model.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <utility>

#include "quiesce/json_fields.hpp"

namespace quiesce::writers::vss {

namespace {

struct KnownHresult {
  std::uint32_t value;
  const char* name;
  const char* meaning;
};

// From vsserror.h / winerror.h: the codes a requester meets, with what an
// operator should read.
constexpr std::array<KnownHresult, 24> known_hresults{{
    {0x80004001, "E_NOTIMPL", "not implemented (wine's VSS is a stub)"},
    {0x80004005, "E_FAIL", "unspecified failure"},
    {0x80070005, "E_ACCESSDENIED", "access denied (VSS needs Administrators or Backup Operators)"},
    {0x80070057, "E_INVALIDARG", "an argument is not valid"},
    {0x8007000E, "E_OUTOFMEMORY", "out of memory"},
    {0x80040154, "REGDB_E_CLASSNOTREG", "class not registered (the VSS service is missing)"},
    {0x80042301, "VSS_E_BAD_STATE", "the call is not valid in the backup's current state"},
    {0x80042304, "VSS_E_PROVIDER_NOT_REGISTERED", "the provider is not registered"},
    {0x80042308, "VSS_E_OBJECT_NOT_FOUND", "the object (volume, snapshot) was not found"},
    {0x8004230E, "VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER", "the provider does not support this volume"},
    {0x8004230F, "VSS_E_UNEXPECTED_PROVIDER_ERROR", "the provider failed"},
    {0x80042313, "VSS_E_FLUSH_WRITES_TIMEOUT", "the system could not flush writes in time"},
    {0x80042314, "VSS_E_HOLD_WRITES_TIMEOUT", "writes were held longer than VSS allows (10 s)"},
    {0x80042316, "VSS_E_SNAPSHOT_SET_IN_PROGRESS", "another snapshot set is in progress"},
    {0x80042317, "VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED", "too many snapshots"},
    {0x80042319, "VSS_E_WRITER_NOT_RESPONDING", "a writer does not respond"},
    {0x8004231B, "VSS_E_UNSUPPORTED_CONTEXT", "the snapshot context is not supported"},
    {0x800423F0, "VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT", "the writer's data would be inconsistent"},
    {0x800423F1, "VSS_E_WRITERERROR_OUTOFRESOURCES", "the writer ran out of resources"},
    {0x800423F2, "VSS_E_WRITERERROR_TIMEOUT", "the writer timed out"},
    {0x800423F3, "VSS_E_WRITERERROR_RETRYABLE", "the writer failed; a retry may succeed"},
    {0x800423F4, "VSS_E_WRITERERROR_NONRETRYABLE", "the writer failed; a retry will not help"},
    {0x800423F5, "VSS_E_WRITERERROR_RECOVERY_FAILED", "the writer's recovery failed"},
    {0x80042336, "VSS_E_WRITERERROR_PARTIAL_FAILURE", "some of the writer's components failed"},
}};

std::string hex(std::uint32_t value) {
  std::array<char, 16> text{};
  std::snprintf(text.data(), text.size(), "0x%08X", static_cast<unsigned>(value));
  return text.data();
}

// VSS's failure -> Quiesce's error class (DESIGN.md): what helps next.
std::string error_class_of(std::uint32_t failure) {
  switch (failure) {
    case 0x800423F0: return "inconsistent";
    case 0x800423F2:
    case 0x80042319:
    case 0x80042313:
    case 0x80042314: return "timeout";
    case 0x800423F4:
    case 0x800423F5: return "non_retryable";
    default: return "retryable";  // OUTOFRESOURCES, RETRYABLE, PARTIAL_FAILURE, unknown
  }
}

}  // namespace

std::string describe_hresult(std::uint32_t hresult) {
  for (const auto& known : known_hresults) {
    if (known.value == hresult) {
      return std::string(known.name) + " (" + hex(hresult) + "): " + known.meaning;
    }
  }
  return "HRESULT " + hex(hresult);
}

VssOptions parse_vss_options(const nlohmann::json& json) {
  VssOptions options;
  JsonFields fields(json, "options");
  const auto type = fields.string("backup_type", std::string("full"));
  if (type == "full") {
    options.backup_type = BackupType::full;
  } else if (type == "copy") {
    options.backup_type = BackupType::copy;
  } else {
    throw FieldError(fields.path_of("backup_type"), "expected full or copy, got '" + type + "'");
  }
  if (fields.has("volumes")) {
    options.volumes = fields.strings("volumes");
    if (options.volumes.empty()) {
      throw FieldError(fields.path_of("volumes"),
                       "expected a non-empty list of volume roots like \"C:\\\\\"");
    }
    for (const auto& text : options.volumes) {
      // A drive root ("C:\") or a volume GUID path ("\\?\Volume{...}\"):
      // what AddToSnapshotSet accepts; both end in a backslash.
      const bool drive_root = text.size() == 3 &&
                              std::isalpha(static_cast<unsigned char>(text[0])) != 0 &&
                              text[1] == ':' && text[2] == '\\';
      const bool volume_guid = text.starts_with("\\\\?\\Volume{") && text.ends_with("}\\");
      if (!drive_root && !volume_guid) {
        throw FieldError(fields.path_of("volumes"),
                         "'" + text + "' is neither a drive root (\"C:\\\\\") nor a volume GUID path");
      }
    }
  }
  const auto window = std::chrono::milliseconds(fields.integer(
      "freeze_window_ms", default_freeze_window.count(), 100, 24LL * 3600 * 1000));
  options.freeze_window_requested = window;
  const auto limit = vss_hold_limit - vss_hold_margin;
  options.freeze_window = std::min(window, limit);
  options.freeze_window_clamped = window > limit;
  options.require_provider = fields.boolean("require_provider", true);
  fields.reject_unknown();
  return options;
}

FreezeWindow clamp_freeze_window(std::chrono::milliseconds session_window,
                                 std::chrono::milliseconds writer_window) {
  const auto limit = vss_hold_limit - vss_hold_margin;
  FreezeWindow window{std::min({session_window, writer_window, limit}), false, ""};
  if (session_window > limit && writer_window >= limit) {
    window.clamped = true;
    window.note = "the session's freeze window of " + std::to_string(session_window.count()) +
                  " ms is clamped to " + std::to_string(limit.count()) +
                  " ms: VSS holds writes for at most " +
                  std::to_string(vss_hold_limit.count()) + " ms";
  }
  return window;
}

MappedState map_writer_state(int vss_state, std::uint32_t writer_failure) {
  static constexpr std::array<std::pair<const char*, const char*>, 16> names{{
      {"VSS_WS_UNKNOWN", "unknown"},
      {"VSS_WS_STABLE", "stable"},
      {"VSS_WS_WAITING_FOR_FREEZE", "preparing"},
      {"VSS_WS_WAITING_FOR_THAW", "frozen"},
      {"VSS_WS_WAITING_FOR_POST_SNAPSHOT", "thawed"},
      {"VSS_WS_WAITING_FOR_BACKUP_COMPLETE", "thawed"},
      {"VSS_WS_FAILED_AT_IDENTIFY", "failed_at_identify"},
      {"VSS_WS_FAILED_AT_PREPARE_BACKUP", "failed_at_prepare"},
      {"VSS_WS_FAILED_AT_PREPARE_SNAPSHOT", "failed_at_prepare"},
      {"VSS_WS_FAILED_AT_FREEZE", "failed_at_freeze"},
      {"VSS_WS_FAILED_AT_THAW", "failed_at_thaw"},
      {"VSS_WS_FAILED_AT_POST_SNAPSHOT", "failed_at_post_snapshot"},
      {"VSS_WS_FAILED_AT_BACKUP_COMPLETE", "failed_at_post_snapshot"},
      {"VSS_WS_FAILED_AT_PRE_RESTORE", "failed_at_post_restore"},
      {"VSS_WS_FAILED_AT_POST_RESTORE", "failed_at_post_restore"},
      {"VSS_WS_FAILED_AT_BACKUPSHUTDOWN", "failed_at_abort"},
  }};
  MappedState mapped;
  if (vss_state < 0 || vss_state >= static_cast<int>(names.size())) {
    mapped.state = "unknown";
    mapped.vss_state = "VSS_WS_" + std::to_string(vss_state);
    return mapped;
  }
  mapped.vss_state = names[static_cast<std::size_t>(vss_state)].first;
  mapped.state = names[static_cast<std::size_t>(vss_state)].second;
  mapped.failed = vss_state >= static_cast<int>(VssWriterState::failed_at_identify);
  if (mapped.failed) {
    mapped.error_class = error_class_of(writer_failure);
    mapped.failure = writer_failure == 0 ? "no failure code given" : describe_hresult(writer_failure);
  }
  return mapped;
}

}  // namespace quiesce::writers::vss
