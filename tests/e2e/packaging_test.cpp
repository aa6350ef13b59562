// Issue #14, item 1: packaging/build-packages.sh turns this build tree into
// the .debs and the .rpms with the distributions' own tools (dpkg-buildpackage
// with debhelper, rpmbuild), lintian-clean; both carry the same files, and the
// Debian package has what an installed service needs: the config as a
// conffile, the unit enabled and started by its maintainer scripts, the
// state directory made at configure and removed at purge only. Installing and
// running the .deb is tests/vm/systemd_guest_test.cpp's part.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;

namespace {

std::string run_ok(const std::vector<std::string>& argv) {
  std::string output;
  const int code = quiesce::test::run_command(argv, &output);
  INFO("command: " << argv.at(0) << (argv.size() > 1 ? " " + argv.at(1) : "") << "\n" << output);
  REQUIRE(code == 0);
  return output;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  INFO(path.string());
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<fs::path> files_ending(const fs::path& dir, const std::string& suffix) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      found.push_back(entry.path());
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

// What both formats must agree on: every file and symlink the build
// installed. Each format compresses man pages and docs its own way (so
// ".gz" is dropped), and Debian adds its changelog and copyright to every
// package's doc directory (the spec's %license has no file to name yet).
std::string normalise(std::string path) {
  if (path.rfind("./", 0) == 0) {
    path.erase(0, 1);
  }
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0) {
    path.resize(path.size() - 3);
  }
  return path;
}

bool debian_only(const std::string& path) {
  return path.rfind("/usr/share/doc/", 0) == 0 &&
         (path.find("/changelog") != std::string::npos || path.find("/copyright") != std::string::npos);
}

// `dpkg-deb -c` lines: "perms owner size date time path [-> target]".
std::set<std::string> deb_files(const fs::path& deb) {
  std::set<std::string> files;
  std::istringstream lines(run_ok({"dpkg-deb", "-c", deb.string()}));
  std::string perms, owner, size, date, time, path;
  while (lines >> perms >> owner >> size >> date >> time >> path) {
    std::string rest;
    std::getline(lines, rest);
    if (perms.front() != 'd' && !debian_only(normalise(path))) {
      files.insert(normalise(path));
    }
  }
  return files;
}

std::set<std::string> rpm_files(const fs::path& rpm) {
  std::set<std::string> files;
  std::istringstream lines(
      run_ok({"rpm", "-qp", "--nosignature", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\\n]", rpm.string()}));
  std::string perms, path;
  while (lines >> perms >> path) {
    if (perms.front() != 'd') {
      files.insert(normalise(path));
    }
  }
  return files;
}

std::string joined(const std::set<std::string>& set) {
  std::string out;
  for (const auto& item : set) {
    out += "  " + item + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("packaging: the .debs and the .rpms of this build carry the same files, lintian-clean") {
  quiesce::test::TempDir tmp("quiesce-packages");
  const auto out = tmp / "packages";
  // Fails (non-zero) on a dpkg-buildpackage, rpmbuild or lintian error or
  // lintian warning; prints the time of each step.
  const auto log = run_ok({(fs::path(QUIESCE_SOURCE_DIR) / "packaging/build-packages.sh").string(),
                           QUIESCE_BUILD_DIR, out.string()});
  MESSAGE(log);

  const auto debs = files_ending(out, ".deb");
  const auto rpms = files_ending(out, ".rpm");
  REQUIRE(debs.size() == 2);  // quiesce, quiesce-dev
  REQUIRE(rpms.size() == 2);  // quiesce, quiesce-devel

  std::set<std::string> in_debs;
  std::set<std::string> in_rpms;
  for (const auto& deb : debs) {
    const auto files = deb_files(deb);
    in_debs.insert(files.begin(), files.end());
  }
  for (const auto& rpm : rpms) {
    const auto files = rpm_files(rpm);
    in_rpms.insert(files.begin(), files.end());
  }
  std::set<std::string> only_deb;
  std::set<std::string> only_rpm;
  std::set_difference(in_debs.begin(), in_debs.end(), in_rpms.begin(), in_rpms.end(),
                      std::inserter(only_deb, only_deb.end()));
  std::set_difference(in_rpms.begin(), in_rpms.end(), in_debs.begin(), in_debs.end(),
                      std::inserter(only_rpm, only_rpm.end()));
  CHECK_MESSAGE(only_deb.empty(), "only in the .debs:\n" << joined(only_deb));
  CHECK_MESSAGE(only_rpm.empty(), "only in the .rpms:\n" << joined(only_rpm));

  // The files a user and a plugin author look for, each in its package.
  const fs::path main_deb = debs.at(1).filename().string().rfind("quiesce_", 0) == 0 ? debs.at(1) : debs.at(0);
  const fs::path dev_deb = main_deb == debs.at(0) ? debs.at(1) : debs.at(0);
  const auto main_files = deb_files(main_deb);
  const auto dev_files = deb_files(dev_deb);
  for (const std::string path :
       {"/usr/sbin/quiesce-agent", "/usr/sbin/quiesce-freeze-holder", "/usr/bin/quiescectl", "/usr/bin/quiesce-host",
        "/usr/bin/quiesce-writer-check", "/etc/quiesce/agent.json", "/lib/systemd/system/quiesce-agent.service",
        "/usr/share/man/man8/quiesce-agent.8", "/usr/share/man/man1/quiescectl.1",
        "/usr/share/man/man1/quiesce-host.1", "/usr/share/man/man1/quiesce-writer-check.1",
        "/usr/share/man/man5/quiesce-agent.json.5"}) {
    CHECK_MESSAGE(main_files.count(path) == 1, path << " is not in " << main_deb.filename().string());
  }
  for (const std::string path : {"/usr/include/quiesce/plugin_abi.h", "/usr/include/quiesce/plugin_sdk.hpp",
                                 "/usr/share/cmake/Quiesce/QuiesceConfig.cmake"}) {
    CHECK_MESSAGE(dev_files.count(path) == 1, path << " is not in " << dev_deb.filename().string());
    CHECK_MESSAGE(main_files.count(path) == 0, path << " is in " << main_deb.filename().string() << " too");
  }
  // The directories the agent's default config and the docs point at.
  const auto listing = run_ok({"dpkg-deb", "-c", main_deb.string()});
  CHECK(listing.find("./etc/quiesce/hooks.d/") != std::string::npos);
  CHECK(listing.find("./usr/lib/quiesce/plugins/") != std::string::npos);

  // The control side: conffile, maintainer scripts.
  const auto control = tmp / "control";
  run_ok({"dpkg-deb", "-e", main_deb.string(), control.string()});
  CHECK(read_text(control / "conffiles").find("/etc/quiesce/agent.json") != std::string::npos);
  const auto postinst = read_text(control / "postinst");
  CHECK(postinst.find("install -d -m 0750 -o root -g root /var/lib/quiesce") != std::string::npos);
  CHECK(postinst.find("deb-systemd-helper") != std::string::npos);         // enabled
  CHECK(postinst.find("deb-systemd-invoke") != std::string::npos);        // started
  // The group that may drive the agent over D-Bus, and the config checked
  // by the new agent before the (re)start debhelper added after it.
  CHECK(postinst.find("addgroup --system quiesce") != std::string::npos);
  const auto checked = postinst.find("quiesce-agent --check-config");
  CHECK(checked != std::string::npos);
  CHECK(checked < postinst.find("deb-systemd-invoke"));
  const auto depends = run_ok({"dpkg-deb", "-f", main_deb.string(), "Depends"});
  CHECK(depends.find("adduser") != std::string::npos);
  CHECK(depends.find("default-dbus-system-bus | dbus-system-bus") != std::string::npos);
  const fs::path main_rpm = rpms.at(0).filename().string().find("devel") == std::string::npos ? rpms.at(0) : rpms.at(1);
  const auto scripts = run_ok({"rpm", "-qp", "--scripts", main_rpm.string()});
  CHECK(scripts.find("groupadd -r quiesce") != std::string::npos);
  CHECK(scripts.find("--check-config") != std::string::npos);
  const auto postrm = read_text(control / "postrm");
  CHECK(postrm.find("rm -rf /var/lib/quiesce") != std::string::npos);
  CHECK(postrm.find("purge") != std::string::npos);
}
