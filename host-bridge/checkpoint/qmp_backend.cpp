#include "host-bridge/checkpoint/qmp_backend.hpp"

#include <cstdio>

#include "host-bridge/checkpoint/layer_merge.hpp"
#include "host-bridge/checkpoint/process.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"

namespace quiesce::host {

using nlohmann::json;

Expected<QmpBackendOptions> QmpBackendOptions::from_json(const json& j, const std::string& where) {
  QmpBackendOptions options;
  for (const auto& [key, value] : j.items()) {
    if (key != "type" && key != "socket" && key != "disks" && key != "timeout_ms" && key != "qemu_img") {
      return Error{ErrorKind::invalid_input, where + "." + key + ": unknown field"};
    }
  }
  if (!j.contains("socket") || !j["socket"].is_string() || j["socket"].get<std::string>().empty()) {
    return Error{ErrorKind::invalid_input, where + ".socket: expected the path of QEMU's QMP Unix socket"};
  }
  options.socket = j["socket"].get<std::string>();
  if (!j.contains("disks") || !j["disks"].is_object() || j["disks"].empty()) {
    return Error{ErrorKind::invalid_input,
                 where + ".disks: expected an object mapping each disk to its QMP device or {\"node_name\": ...}"};
  }
  for (const auto& [name, value] : j["disks"].items()) {
    QmpDiskTarget target;
    if (value.is_string() && !value.get<std::string>().empty()) {
      target.device = value.get<std::string>();
    } else if (value.is_object() && value.size() == 1 && value.contains("node_name") &&
               value["node_name"].is_string() && !value["node_name"].get<std::string>().empty()) {
      target.node_name = value["node_name"].get<std::string>();
    } else {
      return Error{ErrorKind::invalid_input,
                   where + ".disks." + name + ": expected a device name or {\"node_name\": \"...\"}"};
    }
    options.disks[name] = std::move(target);
  }
  if (auto it = j.find("timeout_ms"); it != j.end()) {
    if (!it->is_number_unsigned() || it->get<std::uint64_t>() == 0) {
      return Error{ErrorKind::invalid_input, where + ".timeout_ms: expected a positive integer"};
    }
    options.timeout = std::chrono::milliseconds(it->get<std::uint64_t>());
  }
  if (auto it = j.find("qemu_img"); it != j.end()) {
    if (!it->is_string() || it->get<std::string>().empty()) {
      return Error{ErrorKind::invalid_input, where + ".qemu_img: expected a program path"};
    }
    options.qemu_img = it->get<std::string>();
  }
  return options;
}

namespace {

// The image a disk writes to now, and its virtual size; nullopt when QEMU
// does not know the target (the transaction then fails and says so).
struct ActiveImage {
  std::string file;
  std::uint64_t virtual_size = 0;
};

Expected<std::optional<ActiveImage>> active_image(QmpClient& qmp, const QmpDiskTarget& target) {
  if (!target.device.empty()) {
    auto block = qmp.execute("query-block");
    if (!block) {
      return block.error();
    }
    for (const auto& dev : *block) {
      if (dev.value("device", std::string()) == target.device && dev.contains("inserted")) {
        const auto& inserted = dev["inserted"];
        ActiveImage image{inserted.value("file", std::string()), 0};
        if (inserted.contains("image")) {
          image.virtual_size = inserted["image"].value("virtual-size", std::uint64_t{0});
        }
        return std::optional<ActiveImage>(image);
      }
    }
    return std::optional<ActiveImage>();
  }
  auto nodes = qmp.execute("query-named-block-nodes");
  if (!nodes) {
    return nodes.error();
  }
  for (const auto& node : *nodes) {
    if (node.value("node-name", std::string()) == target.node_name) {
      ActiveImage image{node.value("file", std::string()), 0};
      if (node.contains("image")) {
        image.virtual_size = node["image"].value("virtual-size", std::uint64_t{0});
      }
      return std::optional<ActiveImage>(image);
    }
  }
  return std::optional<ActiveImage>();
}

}  // namespace

Status QmpBackend::run_transaction(const std::string& checkpoint_id, const std::filesystem::path& checkpoint_dir) {
  auto qmp = QmpClient::connect(options_.socket, options_.timeout);
  if (!qmp) {
    return qmp.error();
  }
  std::error_code ec;
  std::filesystem::create_directories(checkpoint_dir / "disks", ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot create " + (checkpoint_dir / "disks").string() + ": " + ec.message()};
  }
  QmpTransactionRecord record;
  record.checkpoint_id = checkpoint_id;
  json actions = json::array();
  for (const auto& [name, target] : options_.disks) {
    QmpDiskRecord disk;
    disk.disk = name;
    disk.target = target.label();
    disk.overlay = (checkpoint_dir / "disks" / (name + ".qcow2")).string();
    if (std::filesystem::exists(disk.overlay, ec)) {
      return Error{ErrorKind::conflict, "disk '" + name + "': overlay " + disk.overlay + " already exists"};
    }
    auto active = active_image(*qmp, target);
    if (!active) {
      return Error{active.error().kind, "disk '" + name + "': " + active.error().message};
    }
    // An unknown target is not rejected here on purpose: the transaction
    // then fails as a whole, which is the guarantee callers rely on.
    if (*active) {
      disk.base = (*active)->file;
      disk.virtual_size = (*active)->virtual_size;
    }
    json data{{"snapshot-file", disk.overlay}, {"format", "qcow2"}, {"mode", "absolute-paths"}};
    if (!target.device.empty()) {
      data["device"] = target.device;
    } else {
      data["node-name"] = target.node_name;
    }
    actions.push_back({{"type", "blockdev-snapshot-sync"}, {"data", data}});
    record.disks.push_back(std::move(disk));
  }
  ++transactions_sent_;
  auto done = qmp->execute("transaction", {{"actions", actions}});
  if (!done) {
    // QEMU may have created overlay files before an action failed; they
    // are ours (fresh paths in the checkpoint dir) and unused after the abort.
    for (const auto& disk : record.disks) {
      std::filesystem::remove(disk.overlay, ec);
    }
    std::string culprit;
    for (const auto& disk : record.disks) {
      if (done.error().message.find("'" + disk.target + "'") != std::string::npos) {
        culprit = "disk '" + disk.disk + "' (QMP '" + disk.target + "'): ";
        break;
      }
    }
    std::string names;
    for (const auto& disk : record.disks) {
      names += (names.empty() ? "" : ", ") + disk.disk;
    }
    return Error{ErrorKind::backend, culprit + "the snapshot transaction over disks " + names +
                                         " failed, no disk was snapshotted: " + done.error().message};
  }
  last_ = std::move(record);
  return ok_status();
}

Expected<DiskSnapshot> QmpBackend::snapshot(const DiskSpec& disk, const std::string& checkpoint_id,
                                            const std::filesystem::path& checkpoint_dir) {
  const auto start = std::chrono::steady_clock::now();
  if (options_.disks.count(disk.name) == 0) {
    return Error{ErrorKind::invalid_input,
                 "disk '" + disk.name + "' is not among the qmp backend's disks; add it to backend.disks"};
  }
  if (!last_ || last_->checkpoint_id != checkpoint_id) {
    if (auto status = run_transaction(checkpoint_id, checkpoint_dir); !status) {
      return status.error();
    }
  }
  for (const auto& record : last_->disks) {
    if (record.disk == disk.name) {
      DiskSnapshot snap;
      snap.name = disk.name;
      snap.image = disk.image;
      snap.snapshot = record.overlay;
      snap.method = "qmp";
      snap.bytes = record.virtual_size;
      snap.ms = ms_since(start);
      return snap;
    }
  }
  return Error{ErrorKind::backend, "disk '" + disk.name + "': missing from the snapshot transaction"};
}

Expected<std::string> QmpBackend::backing_of(const std::string& overlay) const {
  // --force-share: a running QEMU holds the image lock; the header is
  // still safe to read.
  const std::vector<std::string> argv{options_.qemu_img, "info", "--force-share", "--output=json", overlay};
  auto result = run_command(argv, options_.timeout);
  if (result.exit_code != 0) {
    return Error{ErrorKind::backend, "`" + render_argv(argv) + "` failed: " + result.output};
  }
  auto info = json::parse(result.output, nullptr, false);
  if (info.is_discarded() || !info.is_object()) {
    return Error{ErrorKind::backend, "`" + render_argv(argv) + "` printed no JSON"};
  }
  const auto backing = info.value("full-backing-filename", info.value("backing-filename", std::string()));
  return backing;
}

Status QmpBackend::verify(const DiskSnapshot& snapshot) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(snapshot.snapshot, ec)) {
    return Error{ErrorKind::not_found, "disk '" + snapshot.name + "': overlay " + snapshot.snapshot + " is missing"};
  }
  auto base = backing_of(snapshot.snapshot);
  if (!base) {
    return Error{base.error().kind, "disk '" + snapshot.name + "': " + base.error().message};
  }
  if (base->empty()) {
    return Error{ErrorKind::invalid_input,
                 "disk '" + snapshot.name + "': overlay " + snapshot.snapshot + " has no backing file (no base)"};
  }
  // The whole chain must open, or the convert in restore would fail half way.
  const std::vector<std::string> argv{options_.qemu_img, "info", "--force-share", "--backing-chain", *base};
  if (auto result = run_command(argv, options_.timeout); result.exit_code != 0) {
    return Error{ErrorKind::not_found, "disk '" + snapshot.name + "': base " + *base +
                                           " cannot be opened with its backing chain: " + result.output};
  }
  return ok_status();
}

Status QmpBackend::restore(const DiskSnapshot& snapshot, const DiskSpec& disk, const std::string& /*checkpoint_id*/) {
  auto base = backing_of(snapshot.snapshot);
  if (!base) {
    return Error{base.error().kind, "disk '" + disk.name + "': " + base.error().message};
  }
  if (base->empty()) {
    return Error{ErrorKind::invalid_input, "disk '" + disk.name + "': overlay " + snapshot.snapshot + " has no base"};
  }
  const std::filesystem::path image(disk.image);
  const auto tmp = (image.parent_path() / ("." + image.filename().string() + ".restoring")).string();
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  // Flattening (convert reads through the whole backing chain) gives a
  // standalone image: it depends on no file that a later delete or a
  // running VM could change.
  const std::vector<std::string> argv{options_.qemu_img, "convert", "-O", "qcow2", *base, tmp};
  if (auto result = run_command(argv, options_.timeout); result.exit_code != 0 || result.timed_out) {
    std::filesystem::remove(tmp, ec);
    return Error{ErrorKind::backend, "disk '" + disk.name + "': `" + render_argv(argv) + "` failed: " + result.output};
  }
  if (std::rename(tmp.c_str(), disk.image.c_str()) != 0) {
    std::filesystem::remove(tmp, ec);
    return Error{ErrorKind::system, "disk '" + disk.name + "': cannot replace " + disk.image};
  }
  return ok_status();
}

Status QmpBackend::remove(const DiskSnapshot& snapshot, const std::string& /*checkpoint_id*/) {
  return merge_out(snapshot, false);
}

Status QmpBackend::check_remove(const DiskSnapshot& snapshot) { return merge_out(snapshot, true); }

Status QmpBackend::merge_out(const DiskSnapshot& snapshot, bool check_only) {
  // <store>/<id>/disks/<disk>.qcow2: the store is three levels up.
  const std::filesystem::path overlay(snapshot.snapshot);
  LayerMergeOptions merge;
  merge.qemu_img = options_.qemu_img;
  merge.qmp_socket = options_.socket;
  merge.store_root = overlay.parent_path().parent_path().parent_path();
  merge.qmp_timeout = options_.timeout;
  merge.progress = progress_;
  merge.check_only = check_only;
  return merge_out_layer(snapshot.name, overlay, merge);
}

}  // namespace quiesce::host
