// The checkpoint store and the checkpointer's checks, with a VM made of
// plain files (no root needed): bad manifests, missing disks and snapshot
// files, an unreachable agent, deletion of parents, the CLI's exit codes.

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "host-bridge/checkpoint/checkpointer.hpp"
#include "host-bridge/checkpoint/process.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/running_agent.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::host;
using namespace std::chrono_literals;

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

// A VM whose disks are files and whose agent is never there.
class FileVm final : public VirtualMachine {
 public:
  explicit FileVm(const test::TempDir& dir) : dir_(dir.path()) {
    std::filesystem::create_directories(dir_ / "disks");
    write_text(dir_ / "disks" / "data.img", "data v1");
    write_text(dir_ / "disks" / "logs.img", "logs v1");
  }
  std::vector<DiskSpec> disks() const override {
    return {{"data", (dir_ / "disks" / "data.img").string()}, {"logs", (dir_ / "disks" / "logs.img").string()}};
  }
  bool running() const override { return running_; }
  Status power_off() override {
    running_ = false;
    ++power_offs;
    return ok_status();
  }
  Status power_on() override {
    running_ = true;
    return ok_status();
  }
  client::ClientOptions agent_client_options() const override {
    client::ClientOptions options;
    options.endpoint.path = (dir_ / "no-agent.sock").string();
    if (agent_endpoint) {
      options.endpoint = *agent_endpoint;
      options.timeout = 30s;
    }
    options.timeout = 1s;
    options.retries = 0;
    return options;
  }
  int power_offs = 0;
  std::optional<client::Endpoint> agent_endpoint;  // a real agent, where a test starts one

 private:
  std::filesystem::path dir_;
  bool running_ = true;
};

struct Fixture {
  test::TempDir dir;
  FileVm vm{dir};
  CheckpointStore store{dir / "checkpoints"};
  FileBackend backend;
  Checkpointer checkpointer{store, backend, vm};

  Manifest standard(const std::string& label) {
    CreateOptions options;
    options.type = CheckpointType::standard;
    options.label = label;
    auto m = checkpointer.create(options);
    REQUIRE_MESSAGE(m.ok(), (m.ok() ? "" : m.error().message));
    return *m;
  }
};

}  // namespace

TEST_CASE("checkpoint store: standard checkpoints, parents, apply restores the files") {
  Fixture f;
  auto first = f.standard("one");
  CHECK(first.type == CheckpointType::standard);
  CHECK(first.consistency == Consistency::crash);  // the VM was running, no guest help
  CHECK_FALSE(first.parent.has_value());
  CHECK(first.disks.size() == 2);
  write_text(f.dir / "disks" / "data.img", "data v2");
  auto second = f.standard("two");
  REQUIRE(second.parent.has_value());
  CHECK(*second.parent == first.id);

  auto listing = f.store.list();
  CHECK(listing.problems.empty());
  REQUIRE(listing.manifests.size() == 2);
  auto tree = checkpoint_tree(listing.manifests, second.id);
  REQUIRE(tree.size() == 1);
  CHECK(tree[0]["children"][0]["id"] == second.id);
  CHECK(tree[0]["children"][0]["current"] == true);

  auto applied = f.checkpointer.apply(first.id, false);
  REQUIRE_MESSAGE(applied.ok(), (applied.ok() ? "" : applied.error().message));
  CHECK(read_text(f.dir / "disks" / "data.img") == "data v1");
  CHECK(f.vm.running());
  CHECK(**f.store.current() == first.id);
}

TEST_CASE("checkpoint store: a corrupt manifest is named and nothing changes") {
  Fixture f;
  auto m = f.standard("one");
  write_text(f.store.manifest_path(m.id), R"({"format": 1, "id": ")" + m.id + R"(", "type": "sideways"})");
  const auto before = read_text(f.dir / "disks" / "data.img");
  write_text(f.dir / "disks" / "data.img", "data v2");

  auto loaded = f.store.load(m.id);
  REQUIRE_FALSE(loaded.ok());
  CHECK(loaded.error().kind == ErrorKind::invalid_input);
  CHECK(loaded.error().message.find(f.store.manifest_path(m.id).string()) != std::string::npos);

  auto applied = f.checkpointer.apply(m.id, true);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().message.find("manifest.json") != std::string::npos);
  CHECK(f.vm.power_offs == 0);
  CHECK(read_text(f.dir / "disks" / "data.img") == "data v2");
  CHECK(f.store.list().manifests.empty());
  CHECK(f.store.list().problems.size() == 1);

  auto removed = f.checkpointer.remove(m.id, true);
  CHECK_FALSE(removed.ok());
  CHECK(std::filesystem::exists(f.store.dir_of(m.id)));

  write_text(f.store.manifest_path(m.id), "{not json");
  auto garbled = f.store.load(m.id);
  REQUIRE_FALSE(garbled.ok());
  CHECK(garbled.error().message.find("not valid JSON") != std::string::npos);
  (void)before;
}

TEST_CASE("checkpoint store: a missing snapshot file or disk image changes nothing") {
  Fixture f;
  auto m = f.standard("one");
  write_text(f.dir / "disks" / "data.img", "data v2");
  std::filesystem::remove(m.disks[1].snapshot);
  auto applied = f.checkpointer.apply(m.id, false);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().kind == ErrorKind::not_found);
  CHECK(applied.error().message.find(m.disks[1].snapshot) != std::string::npos);
  CHECK(f.vm.power_offs == 0);
  CHECK(read_text(f.dir / "disks" / "data.img") == "data v2");

  std::filesystem::remove(f.dir / "disks" / "logs.img");
  const auto count = f.store.list().manifests.size();
  CreateOptions options;
  auto created = f.checkpointer.create(options);
  REQUIRE_FALSE(created.ok());
  CHECK(created.error().kind == ErrorKind::not_found);
  CHECK(created.error().message.find("logs.img") != std::string::npos);
  CHECK(f.store.list().manifests.size() == count);
}

TEST_CASE("checkpoint store: an unreachable agent fails production cleanly, fallback takes standard") {
  Fixture f;
  CreateOptions options;
  options.type = CheckpointType::production;
  auto created = f.checkpointer.create(options);
  REQUIRE_FALSE(created.ok());
  CHECK(created.error().kind == ErrorKind::agent);
  CHECK(created.error().message.find("unreachable") != std::string::npos);
  CHECK(f.store.list().manifests.empty());  // nothing recorded, nothing changed

  options.fallback_standard = true;
  auto fallback = f.checkpointer.create(options);
  REQUIRE_MESSAGE(fallback.ok(), (fallback.ok() ? "" : fallback.error().message));
  CHECK(fallback->type == CheckpointType::standard);
  CHECK(fallback->consistency == Consistency::crash);
  REQUIRE(fallback->fallback_reason.has_value());
  CHECK(fallback->fallback_reason->find("unreachable") != std::string::npos);
}

TEST_CASE("checkpoint store: deleting a parent needs --force, which re-parents the children") {
  Fixture f;
  auto a = f.standard("a");
  auto b = f.standard("b");
  auto c = f.standard("c");
  REQUIRE(*c.parent == b.id);
  auto refused = f.checkpointer.remove(b.id, false);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().kind == ErrorKind::conflict);
  CHECK(refused.error().message.find(c.id) != std::string::npos);
  CHECK(std::filesystem::exists(f.store.dir_of(b.id)));

  auto removed = f.checkpointer.remove(b.id, true);
  REQUIRE(removed.ok());
  CHECK(removed->reparented == std::vector<std::string>{c.id});
  CHECK_FALSE(std::filesystem::exists(f.store.dir_of(b.id)));
  CHECK(*f.store.load(c.id)->parent == a.id);

  // A leaf goes without --force; the current one moves to its parent.
  REQUIRE(f.checkpointer.remove(c.id, false).ok());
  CHECK(**f.store.current() == a.id);
}

TEST_CASE("checkpoint store: the command backend runs argv with variables, no shell") {
  test::TempDir dir;
  write_text(dir / "disk one.img", "content");
  CommandBackendOptions options;
  options.snapshot = {"cp", "{image}", "{dest}"};
  options.restore = {"cp", "{snapshot}", "{image}"};
  options.remove = {"rm", "-f", "{snapshot}"};
  CommandBackend backend(options);
  const DiskSpec disk{"one", (dir / "disk one.img").string()};
  auto snap = backend.snapshot(disk, "cp-x", dir / "cp-x");
  REQUIRE_MESSAGE(snap.ok(), (snap.ok() ? "" : snap.error().message));
  CHECK(read_text(snap->snapshot) == "content");
  write_text(disk.image, "changed");
  REQUIRE(backend.restore(*snap, disk, "cp-x").ok());
  CHECK(read_text(disk.image) == "content");
  REQUIRE(backend.remove(*snap, "cp-x").ok());
  CHECK_FALSE(std::filesystem::exists(snap->snapshot));

  CommandBackend failing({{"sh", "-c", "echo broken >&2; exit 3"}, {"true"}, {}, {}, false, 5s});
  auto failed = failing.snapshot(disk, "cp-y", dir / "cp-y");
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().kind == ErrorKind::backend);
  CHECK(failed.error().message.find("exited with 3: broken") != std::string::npos);
}

TEST_CASE("checkpoint store: sparse-aware copy keeps holes") {
  test::TempDir dir;
  const auto image = dir / "sparse.img";
  {
    std::ofstream(image) << "start";
  }
  std::filesystem::resize_file(image, 64 * 1024 * 1024);
  auto stats = copy_image(image.string(), (dir / "copy.img").string());
  REQUIRE(stats.ok());
  CHECK(stats->bytes == 64U * 1024 * 1024);
  CHECK(std::filesystem::file_size(dir / "copy.img") == 64U * 1024 * 1024);
  CHECK(stats->allocated_bytes < 4U * 1024 * 1024);
  CHECK(read_text(dir / "copy.img").substr(0, 5) == "start");
}

TEST_CASE("quiesce-host: exit codes for a bad vm.json, an unknown checkpoint, bad usage") {
  test::TempDir dir;
  const auto host = test::built_binary("quiesce-host").string();
  std::string output;
  CHECK(test::run_command({host, "--vm", dir.path().string(), "checkpoint", "list"}, &output) == 4);
  CHECK(output.find("vm.json") != std::string::npos);
  write_text(dir / "vm.json", R"({"disks": [{"name": "data", "size_mb": "big"}]})");
  CHECK(test::run_command({host, "--vm", dir.path().string(), "checkpoint", "list"}, &output) == 3);
  CHECK(output.find("disks[0].size_mb") != std::string::npos);
  write_text(dir / "vm.json", R"({"disks": [{"name": "data"}]})");
  CHECK(test::run_command({host, "--vm", dir.path().string(), "checkpoint", "show", "cp-nope"}, &output) == 4);
  CHECK(test::run_command({host, "--vm", dir.path().string(), "checkpoint", "show", "../etc"}, &output) == 3);
  CHECK(test::run_command({host, "--vm", dir.path().string(), "checkpoint", "frobnicate"}, &output) == 2);
  CHECK(test::run_command({host, "--vm", dir.path().string(), "--json", "checkpoint", "list"}, &output) == 0);
  CHECK(output.find("\"checkpoints\":[]") != std::string::npos);
}

TEST_CASE("checkpoint store: a production checkpoint over qga records which agent quiesced") {
  Fixture f;
  auto config = test::agent_config(
      f.dir, {{{"type", "delay"}, {"name", "app"}, {"options", {{"delays_ms", {{"freeze", 5}}}}}}});
  config["qga"] = {{"virtio_serial_path", nullptr},
                   {"unix_socket", {{"path", (f.dir / "qga.sock").string()}}}};
  test::RunningAgent agent(f.dir, config);
  REQUIRE(test::eventually(10s, [&] { return std::filesystem::exists(f.dir / "qga.sock"); }));
  f.vm.agent_endpoint = client::Endpoint::parse("qga:" + (f.dir / "qga.sock").string());

  CreateOptions options;
  options.label = "over qga";
  auto m = f.checkpointer.create(options);
  REQUIRE_MESSAGE(m.ok(), (m.ok() ? "" : m.error().message));
  CHECK(m->consistency == Consistency::application);
  REQUIRE(m->agent.is_object());
  CHECK(m->agent["kind"] == "quiesce");
  CHECK(m->agent["version"] == agent.client().health().body["version"]);
  REQUIRE(m->writers.size() == 1);
  CHECK(m->writers[0]["name"] == "app");

  // The manifest keeps it, and a filesystem-only checkpoint reads back as one.
  auto loaded = f.store.load(m->id);
  REQUIRE(loaded.ok());
  CHECK(loaded->agent == m->agent);
  auto text = loaded->to_json();
  text["consistency"] = "filesystem";
  text["agent"] = {{"kind", "qemu-guest-agent"}, {"version", "7.2.22"}};
  auto stock = Manifest::from_json(text);
  REQUIRE(stock.ok());
  CHECK(stock->consistency == Consistency::filesystem);
  CHECK(stock->to_json()["consistency"] == "filesystem");
  text["agent"] = "qemu-ga";
  CHECK_FALSE(Manifest::from_json(text).ok());
}
