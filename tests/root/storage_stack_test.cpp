// The fsfreeze writer on stacked storage: filesystems stored on loop devices
// whose images live on other selected filesystems, device-mapper over loop,
// xfs on loop on ext4, btrfs subvolumes, an overlay's upper directory, and a
// filesystem someone else froze. Each layout runs many full sessions through
// the real quiesce-freeze-holder with unsynced data in every filesystem: a
// wrong order (a lower filesystem frozen before one stored on it) deadlocks
// in the kernel, which the per-session watchdog turns into a failure.
//
// Only mounts these tests create are ever frozen (explicit `mounts`).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <thread>

#include "tests/root/fsfreeze_under_test.hpp"
#include "tests/root/loop_fs.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/storage_layouts.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"

using namespace std::chrono_literals;
using quiesce::test::Layout;
using quiesce::test::WriteProbe;
using quiesce::test::WriterUnderTest;

namespace {

int sessions_per_layout() {
  const char* text = std::getenv("QUIESCE_STACK_SESSIONS");
  return text != nullptr ? std::max(1, std::atoi(text)) : 200;
}

double median(std::vector<double> values) {
  if (values.empty()) {
    return 0;
  }
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

int wave_of(const quiesce::Identity& identity, const std::string& mount_point) {
  for (const auto& component : identity.components) {
    if (component["path"] == mount_point) {
      return component["wave"].get<int>();
    }
    for (const auto& other : component["also_mounted_at"]) {
      if (other == mount_point) {
        return component["wave"].get<int>();
      }
    }
  }
  return -1;
}

// The sessions of one layout; what a session must see is in `layout`.
void run_sessions(const Layout& layout, const std::filesystem::path& run_dir,
                  nlohmann::json extra_options = nlohmann::json::object()) {
  nlohmann::json options = extra_options;
  options["mounts"] = layout.mounts;
  WriterUnderTest under(run_dir.string(), options);
  auto& writer = *under.writer;

  quiesce::Identity identity;
  REQUIRE(writer.identify(quiesce::test::context(), identity).is_ok());
  MESSAGE(layout.name << ": " << identity.components.dump());
  for (const auto& [upper, lower] : layout.order) {
    INFO(upper << " must freeze before " << lower);
    CHECK(wave_of(identity, upper) >= 0);
    CHECK(wave_of(identity, upper) < wave_of(identity, lower));
  }

  quiesce::test::ThawWatchdog watchdog(layout.lowest_first);
  const int sessions = sessions_per_layout();
  constexpr std::size_t before_prepare = 2U << 20;
  constexpr std::size_t after_prepare = 1U << 20;
  int hung = 0;
  int left_frozen = 0;
  int bad_data = 0;
  int broken_holds = 0;
  std::vector<double> session_ms;
  std::vector<double> freeze_ms;
  for (int s = 0; s < sessions; ++s) {
    const bool sample = s % 20 == 0;
    watchdog.arm(10s);
    // A filesystem still frozen from the last session blocks these writes
    // until the watchdog thaws it.
    std::vector<std::pair<std::string, std::string>> written;  // path, content
    for (const auto& dir : layout.data_dirs) {
      written.emplace_back(dir + "/dirty-a",
                           quiesce::test::write_unsynced(dir + "/dirty-a", before_prepare, s));
    }
    if (watchdog.disarm()) {
      ++left_frozen;
      FAIL_CHECK(layout.name << ": session " << s << ": writes blocked, something was left frozen");
      continue;
    }
    watchdog.arm(10s);
    const auto started = std::chrono::steady_clock::now();
    auto context = quiesce::test::context("stack-" + std::to_string(s), 15s, 10s);
    auto status = writer.prepare(context);
    REQUIRE_MESSAGE(status.is_ok(), quiesce::test::message_of(status));
    for (const auto& dir : layout.data_dirs) {
      written.emplace_back(dir + "/dirty-b",
                           quiesce::test::write_unsynced(dir + "/dirty-b", after_prepare, s + 7));
    }
    const auto freeze_started = std::chrono::steady_clock::now();
    status = writer.freeze(context);
    freeze_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - freeze_started)
            .count());
    if (layout.expect_busy) {
      // Someone else's freeze: refused as retryable, all rolled back.
      CHECK_FALSE(status.is_ok());
      CHECK(status.error().error_class == quiesce::ErrorClass::retryable);
      CHECK(writer.abort(context).is_ok());
    } else {
      REQUIRE_MESSAGE(status.is_ok(), quiesce::test::message_of(status));
    }
    std::vector<std::unique_ptr<WriteProbe>> probes;
    // (Someone else's freeze outlives the session: run_layout probes it at the end.)
    if (sample && !layout.expect_busy) {
      for (const auto& dir : layout.frozen_dirs) {
        probes.push_back(std::make_unique<WriteProbe>(dir));
      }
      std::this_thread::sleep_for(100ms);
      for (std::size_t i = 0; i < probes.size(); ++i) {
        INFO(layout.name << ": session " << s << ": write to " << layout.frozen_dirs[i]);
        CHECK_FALSE(probes[i]->finished_within(0ms));
      }
    }
    if (!layout.expect_busy) {
      quiesce::HoldReport hold;
      status = writer.thaw(context, hold);
      CHECK_MESSAGE(status.is_ok(), quiesce::test::message_of(status));
      if (!hold.continuous) {
        ++broken_holds;
      }
    }
    for (std::size_t i = 0; i < probes.size(); ++i) {
      INFO(layout.name << ": session " << s << ": write to " << layout.frozen_dirs[i]);
      CHECK(probes[i]->finished_within(5s));
    }
    probes.clear();
    if (sample) {
      for (const auto& dir : layout.thawed_dirs) {
        if (!quiesce::test::writable_within(dir, 5s)) {
          ++left_frozen;
        }
      }
    }
    session_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
            .count());
    if (watchdog.disarm()) {
      ++hung;
      FAIL_CHECK(layout.name << ": session " << s << " did not finish in 10 s (deadlock?)");
    }
    for (const auto& [path, content] : written) {
      if (!quiesce::test::has_content(path, content)) {
        ++bad_data;
      }
    }
  }
  std::cout << "storage stack '" << layout.name << "': " << sessions << " sessions, " << hung
            << " hung, " << left_frozen << " left frozen, " << broken_holds
            << " broken holds, median session " << median(session_ms) << " ms, median freeze "
            << median(freeze_ms) << " ms\n";
  CHECK(hung == 0);
  CHECK(left_frozen == 0);
  CHECK(bad_data == 0);
  CHECK(broken_holds == 0);
  for (const auto& dir : layout.thawed_dirs) {
    CHECK(quiesce::test::writable_within(dir, 5s));
  }
}

// One layout: built, its sessions run, torn down (thawed first) whatever
// happened.
void run_layout(const std::string& name) {
  quiesce::test::TempDir dir("storage-stack");
  std::unique_ptr<quiesce::test::StorageStack> stack;
  try {
    stack = quiesce::test::build_layout(name, dir.path());
  } catch (const std::exception& error) {
    FAIL(name << ": cannot build the layout: " << error.what());
  }
  run_sessions(stack->layout(), dir.path() / "run");
  if (stack->layout().expect_busy) {
    // Whoever froze it still holds it: we neither thawed it nor left anything else frozen.
    for (const auto& frozen : stack->layout().frozen_dirs) {
      WriteProbe still_frozen(frozen);
      CHECK_FALSE(still_frozen.finished_within(200ms));
      quiesce::test::must_run({"fsfreeze", "-u", frozen});
      CHECK(still_frozen.finished_within(5s));
    }
  }
}

}  // namespace

TEST_CASE("storage stack: loop on ext4 two levels deep") { run_layout("two-deep"); }

TEST_CASE("storage stack: two deep plus a bind of the lowest mounted last, beneath the top") {
  run_layout("two-deep-bind-last");
}

TEST_CASE("storage stack: device-mapper linear over a loop device") {
  if (!quiesce::test::device_mapper_available()) {
    MESSAGE("skipped: this kernel has no device-mapper (dmsetup version fails)");
    return;
  }
  run_layout("dm-over-loop");
}

TEST_CASE("storage stack: btrfs with subvolumes mounted separately, an ext4 image in one") {
  run_layout("btrfs-subvolumes");
}

TEST_CASE("storage stack: xfs on loop on ext4") { run_layout("xfs-on-ext4"); }

TEST_CASE("storage stack: overlayfs with its upper directory on a selected filesystem") {
  run_layout("overlay-upper");
}

TEST_CASE("storage stack: a filesystem frozen by someone else is refused and left frozen") {
  run_layout("frozen-by-other");
}
