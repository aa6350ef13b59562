// The `vss` writer under wine. Wine's VSS is a stub, so what is tested is
// what wine really does: the provider check at start refuses the writer,
// and with the check off the requester's first VSS call fails, the error
// names that call and its HRESULT, nothing is held (no hold event exists)
// and abort and thaw after it are clean no-ops. Plus the pure parts:
// options, the VSS writer state mapping, the window clamp.
#include <windows.h>

#include <doctest/doctest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <chrono>
#include <memory>
#include <string>

#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"
#include "writers/vss/provider/provider_ids.hpp"
#include "writers/vss/vss_model.hpp"
#include "writers/vss/vss_writer.hpp"

using namespace std::chrono_literals;
using quiesce::writers::vss::clamp_freeze_window;
using quiesce::writers::vss::map_writer_state;
using quiesce::writers::vss::parse_vss_options;

namespace {

std::shared_ptr<spdlog::logger> quiet_logger() {
  return std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

std::unique_ptr<quiesce::Writer> make_vss_writer(nlohmann::json options) {
  quiesce::WriterRegistry registry;
  quiesce::writers::register_vss_writer(registry);
  const auto* type = registry.find("vss");
  REQUIRE(type != nullptr);
  CHECK(type->default_level == quiesce::Level::filesystem);
  quiesce::WriterSpec spec{"vss", "volumes", quiesce::Level::filesystem, std::move(options)};
  return type->create(spec, quiesce::WriterEnvironment{quiet_logger(), "", ""});
}

quiesce::PhaseContext ctx() {
  auto now = quiesce::Clock::now();
  return quiesce::PhaseContext{"session-1", now + 30s, now + 40s, {}};
}

// Whether the agent side of a hold exists: the provider would find an
// event to report `frozen` on only while the writer is in a snapshot set.
bool hold_event_exists() {
  HANDLE event = ::OpenEventW(SYNCHRONIZE, FALSE, quiesce::vss_provider::event_frozen);
  if (event == nullptr) {
    return false;
  }
  ::CloseHandle(event);
  return true;
}

}  // namespace

TEST_CASE("vss options: full or copy, volumes, the freeze window clamped to what VSS holds") {
  auto defaults = parse_vss_options(nlohmann::json::object());
  CHECK(defaults.backup_type == quiesce::writers::vss::BackupType::full);
  CHECK(defaults.volumes.empty());
  CHECK(defaults.freeze_window == 9000ms);
  CHECK_FALSE(defaults.freeze_window_clamped);
  CHECK(defaults.require_provider);

  auto copy = parse_vss_options({{"backup_type", "copy"},
                                 {"volumes", {"C:\\", "\\\\?\\Volume{0b1d9a47-d1ff-4d2c-8f01-5f894e5b1e39}\\"}},
                                 {"freeze_window_ms", 60000}});
  CHECK(copy.backup_type == quiesce::writers::vss::BackupType::copy);
  CHECK(copy.volumes.size() == 2);
  CHECK(copy.freeze_window == 9000ms);  // VSS holds writes 10 s at most
  CHECK(copy.freeze_window_clamped);
  CHECK(copy.freeze_window_requested == 60000ms);

  auto rejects = [](const nlohmann::json& options, const std::string& expected) {
    try {
      (void)parse_vss_options(options);
      FAIL("accepted " << options.dump());
    } catch (const quiesce::FieldError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(expected) != std::string::npos);
    }
  };
  rejects({{"backup_type", "incremental"}}, "expected full or copy, got 'incremental'");
  rejects({{"volumes", {"D:"}}}, "'D:' is neither a drive root");
  rejects({{"volumes", nlohmann::json::array()}}, "non-empty list");
  rejects({{"freeze_window_ms", 10}}, "freeze_window_ms");
  rejects({{"snapshot", true}}, "snapshot");
}

TEST_CASE("vss freeze window: the session's window is clamped to VSS's limit, and says so") {
  auto short_window = clamp_freeze_window(3000ms, 9000ms);
  CHECK(short_window.effective == 3000ms);
  CHECK_FALSE(short_window.clamped);
  auto long_window = clamp_freeze_window(60000ms, 9000ms);
  CHECK(long_window.effective == 9000ms);
  CHECK(long_window.clamped);
  CHECK(long_window.note.find("60000 ms is clamped to 9000 ms") != std::string::npos);
  CHECK(long_window.note.find("VSS holds writes for at most 10000 ms") != std::string::npos);
  // The writer's own shorter window is a choice, not a clamp.
  auto writer_shorter = clamp_freeze_window(60000ms, 4000ms);
  CHECK(writer_shorter.effective == 4000ms);
  CHECK_FALSE(writer_shorter.clamped);
}

TEST_CASE("vss writer states map onto Quiesce's, with VSS's failure as an error class") {
  CHECK(map_writer_state(1, 0).state == "stable");
  CHECK(map_writer_state(2, 0).state == "preparing");
  CHECK(map_writer_state(3, 0).state == "frozen");
  CHECK(map_writer_state(5, 0).state == "thawed");
  auto failed = map_writer_state(9, 0x800423F2);  // FAILED_AT_FREEZE, WRITERERROR_TIMEOUT
  CHECK(failed.failed);
  CHECK(failed.state == "failed_at_freeze");
  CHECK(failed.vss_state == "VSS_WS_FAILED_AT_FREEZE");
  CHECK(failed.error_class == "timeout");
  CHECK(failed.failure.find("VSS_E_WRITERERROR_TIMEOUT (0x800423F2)") == 0);
  CHECK(map_writer_state(7, 0x800423F0).error_class == "inconsistent");
  CHECK(map_writer_state(8, 0x800423F4).error_class == "non_retryable");
  CHECK(map_writer_state(10, 0x800423F3).error_class == "retryable");
  CHECK(map_writer_state(10, 0).failure == "no failure code given");
  CHECK(map_writer_state(42, 0).state == "unknown");
  CHECK(quiesce::writers::vss::describe_hresult(0x12345678) == "HRESULT 0x12345678");
}

TEST_CASE("vss writer: refused at start when Quiesce's provider is not registered") {
  // Nothing registered it in this wine prefix: the check is real.
  try {
    (void)make_vss_writer(nlohmann::json::object());
    FAIL("the vss writer was created without its provider");
  } catch (const std::exception& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK(message.find("Quiesce's VSS provider is not registered") != std::string::npos);
    CHECK(message.find("{1c61feef-84ce-4dad-8a80-a94e475a2ad8}") != std::string::npos);
    CHECK(message.find("regsvr32 quiesce-vss-provider.dll") != std::string::npos);
  }
}

TEST_CASE("vss writer under wine: prepare fails naming the VSS call and its HRESULT, nothing held") {
  auto writer = make_vss_writer({{"require_provider", false}});
  quiesce::Identity identity;
  REQUIRE(writer->identify(ctx(), identity).is_ok());  // describing is not failing
  INFO(identity.metadata.dump());
  CHECK(identity.metadata["freeze_window_ms"] == 9000);
  REQUIRE(identity.metadata.contains("vss_error"));
  const std::string identify_error = identity.metadata["vss_error"];
  CHECK(identify_error.find(" failed: ") != std::string::npos);

  auto prepared = writer->prepare(ctx());
  REQUIRE_FALSE(prepared.is_ok());
  const auto& message = prepared.error().message;
  INFO(message);
  // Wine's vssapi: whichever call it refuses is named, with the HRESULT in hex.
  CHECK(message.find("vss: prepare: ") == 0);
  CHECK((message.find("IVssBackupComponents::") != std::string::npos ||
         message.find("CreateVssBackupComponents") != std::string::npos ||
         message.find("vssapi.dll") != std::string::npos));
  CHECK(message.find("(0x8") != std::string::npos);
  CHECK(message.find("nothing is held") != std::string::npos);
  CHECK_FALSE(hold_event_exists());

  // Freeze without a prepared backup holds nothing either; abort and thaw
  // are no-ops.
  auto frozen = writer->freeze(ctx());
  REQUIRE_FALSE(frozen.is_ok());
  CHECK(frozen.error().message.find("freeze without a prepared backup") != std::string::npos);
  CHECK(writer->abort(ctx()).is_ok());
  quiesce::HoldReport hold;
  CHECK(writer->thaw(ctx(), hold).is_ok());
  CHECK_FALSE(hold_event_exists());
}
