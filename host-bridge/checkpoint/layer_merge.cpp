#include "host-bridge/checkpoint/layer_merge.hpp"

#include <map>
#include <optional>
#include <set>
#include <vector>

#include "host-bridge/checkpoint/block_jobs.hpp"
#include "host-bridge/checkpoint/process.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"

namespace quiesce::host {

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// One spelling per file, so a backing path written differently still matches.
std::string normal(const std::string& path) {
  if (path.empty()) {
    return path;
  }
  std::error_code ec;
  auto canonical = std::filesystem::weakly_canonical(path, ec);
  return ec ? std::filesystem::path(path).lexically_normal().string() : canonical.string();
}

Expected<json> image_info(const std::string& qemu_img, const std::string& image) {
  const std::vector<std::string> argv{qemu_img, "info", "--force-share", "--output=json", image};
  auto result = run_command(argv, 2min);
  if (result.exit_code != 0) {
    return Error{ErrorKind::backend, "`" + render_argv(argv) + "` failed: " + result.output};
  }
  auto info = json::parse(result.output, nullptr, false);
  if (info.is_discarded() || !info.is_object()) {
    return Error{ErrorKind::backend, "`" + render_argv(argv) + "` printed no JSON"};
  }
  return info;
}

// One block device's chain as QEMU runs it: files top (written) first, and
// the node name of each.
struct RunningChain {
  std::string device;
  std::vector<std::string> files;  // normalised
  std::vector<std::string> nodes;
};

struct QemuView {
  std::vector<RunningChain> chains;
};

Expected<QemuView> query_chains(QmpClient& qmp) {
  auto nodes = qmp.execute("query-named-block-nodes");
  if (!nodes) {
    return nodes.error();
  }
  // The format node of each file (a qcow2 file also has a "file" protocol node).
  std::map<std::string, std::string> node_of;
  for (const auto& n : *nodes) {
    const auto file = normal(n.value("file", std::string()));
    const auto drv = n.value("drv", std::string());
    if (drv != "file" && drv != "host_device" && !file.empty()) {
      node_of[file] = n.value("node-name", std::string());
    }
  }
  auto block = qmp.execute("query-block");
  if (!block) {
    return block.error();
  }
  QemuView view;
  for (const auto& dev : *block) {
    if (!dev.contains("inserted")) {
      continue;
    }
    RunningChain chain;
    chain.device = dev.value("device", std::string());
    const json* image = dev["inserted"].contains("image") ? &dev["inserted"]["image"] : nullptr;
    while (image != nullptr) {
      const auto file = normal(image->value("filename", std::string()));
      chain.files.push_back(file);
      chain.nodes.push_back(node_of.count(file) != 0 ? node_of[file] : std::string());
      image = image->contains("backing-image") ? &(*image)["backing-image"] : nullptr;
    }
    view.chains.push_back(std::move(chain));
  }
  return view;
}

}  // namespace

Expected<std::string> qcow2_backing_file(const std::string& qemu_img, const std::string& image) {
  auto info = image_info(qemu_img, image);
  if (!info) {
    return info.error();
  }
  return info->value("full-backing-filename", info->value("backing-filename", std::string()));
}

Status merge_out_layer(const std::string& disk, const std::filesystem::path& overlay_path,
                       const LayerMergeOptions& options) {
  std::error_code ec;
  if (!std::filesystem::exists(overlay_path, ec)) {
    return ok_status();
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string step = "merge " + disk;
  auto report = [&](const std::string& detail, bool done = false, bool failed = false) {
    if (options.progress) {
      options.progress({step, detail, done ? std::optional<double>(ms_since(start)) : std::nullopt, failed});
    }
  };
  const std::string overlay = normal(overlay_path.string());

  // QEMU, when it runs: its chains, and no job of its own in the way.
  auto connected = QmpClient::connect_if_running(options.qmp_socket,
                                                 std::min<std::chrono::milliseconds>(options.qmp_timeout, 5s));
  if (!connected) {
    return Error{connected.error().kind, "disk '" + disk + "': " + connected.error().message};
  }
  std::optional<QmpClient> qmp = std::move(*connected);
  QemuView view;
  if (qmp) {
    auto jobs = list_block_jobs(*qmp);
    if (!jobs) {
      return Error{jobs.error().kind, "disk '" + disk + "': " + jobs.error().message};
    }
    for (const auto& job : *jobs) {
      if (job.status != "concluded" && job.status != "null") {
        return Error{ErrorKind::conflict, "disk '" + disk + "': a block job runs on this VM (" + describe(job) +
                                              "): nothing deleted, try again once it has finished"};
      }
    }
    auto chains = query_chains(*qmp);
    if (!chains) {
      return Error{chains.error().kind, "disk '" + disk + "': " + chains.error().message};
    }
    view = std::move(*chains);
  }

  // Every layer that could be built on the overlay or on its base.
  std::set<std::string> files;
  const auto scan = [&](const std::filesystem::path& dir) {
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".qcow2") {
        files.insert(normal(entry.path().string()));
      }
    }
  };
  for (const auto& entry : std::filesystem::directory_iterator(options.store_root, ec)) {
    scan(entry.path() / "disks");
  }
  scan(options.store_root.parent_path() / "disks");
  for (const auto& chain : view.chains) {
    files.insert(chain.files.begin(), chain.files.end());
  }
  auto overlay_info = image_info(options.qemu_img, overlay);
  if (!overlay_info) {
    return Error{overlay_info.error().kind, "disk '" + disk + "': " + overlay_info.error().message};
  }
  const std::string base =
      normal(overlay_info->value("full-backing-filename", overlay_info->value("backing-filename", std::string())));
  std::vector<std::string> children;       // built on the overlay
  std::vector<std::string> base_children;  // built on its base (the overlay among them)
  for (const auto& file : files) {
    if (file == overlay) {
      base_children.push_back(file);
      continue;
    }
    auto backing = qcow2_backing_file(options.qemu_img, file);
    if (!backing) {
      continue;  // not an image we can read: not one of the tree's
    }
    const auto b = normal(*backing);
    if (b == overlay) {
      children.push_back(file);
    } else if (!base.empty() && b == base) {
      base_children.push_back(file);
    }
  }
  std::string base_format = "qcow2";
  if (!base.empty()) {
    if (auto info = image_info(options.qemu_img, base)) {
      base_format = info->value("format", base_format);
    }
  }
  const bool base_only_child = !base.empty() && base_children.size() == 1;

  // Where QEMU has the overlay open, if it does.
  const RunningChain* chain = nullptr;
  std::size_t at = 0;
  std::set<std::string> open_files;
  for (const auto& c : view.chains) {
    for (std::size_t i = 0; i < c.files.size(); ++i) {
      open_files.insert(c.files[i]);
      if (c.files[i] == overlay) {
        chain = &c;
        at = i;
      }
    }
  }

  auto run = [&](const std::vector<std::string>& argv) -> Status {
    auto result = run_command(argv, options.merge_deadline);
    if (result.exit_code != 0 || result.timed_out) {
      return Error{ErrorKind::backend, "disk '" + disk + "': `" + render_argv(argv) + "` failed: " + result.output};
    }
    return ok_status();
  };
  // Children QEMU does not run: each gets the overlay's data copied in
  // (rebase in safe mode compares the old and new backing chains).
  auto rebase_children_safely = [&](const std::vector<std::string>& which) -> Status {
    for (const auto& child : which) {
      report("qemu-img rebase " + child + " onto " + (base.empty() ? "no base" : base));
      std::vector<std::string> argv{options.qemu_img, "rebase", "-q", "-f", "qcow2"};
      if (base.empty()) {
        argv.insert(argv.end(), {"-b", ""});
      } else {
        argv.insert(argv.end(), {"-F", base_format, "-b", base});
      }
      argv.push_back(child);
      if (auto done = run(argv); !done) {
        return done;
      }
    }
    return ok_status();
  };
  // A checkpoint's overlay holds no state of its own: the checkpoint's state
  // is its base. Copying the deleted layer's data up into such an overlay
  // and re-pointing it lower would change that checkpoint, so stream and
  // rebase only go into layers that are no checkpoint's (the VM's top).
  const std::string store_prefix = normal(options.store_root.string()) + "/";
  auto refuse_checkpoint_layers = [&](const std::vector<std::string>& targets) -> Status {
    for (const auto& target : targets) {
      if (target.rfind(store_prefix, 0) == 0) {
        return Error{ErrorKind::conflict,
                     "disk '" + disk + "': " + target + " (a checkpoint's) is built on " + overlay + ", whose base " +
                         base + " has other layers on it: merging would change that checkpoint; nothing deleted"};
      }
    }
    return ok_status();
  };
  std::vector<std::string> offline_children;
  for (const auto& child : children) {
    if (open_files.count(child) == 0) {
      offline_children.push_back(child);
    }
  }

  if (chain == nullptr) {
    const bool commit = base_only_child && open_files.count(base) == 0;
    if (!children.empty() && !commit) {
      if (auto refused = refuse_checkpoint_layers(children); !refused) {
        return refused;
      }
    }
    if (options.check_only) {
      return ok_status();
    }
    if (children.empty()) {
      report("nothing is built on " + overlay + ": removed");
    } else if (commit) {
      report("qemu-img commit " + overlay + " into " + base);
      if (auto done = run({options.qemu_img, "commit", "-q", "-d", "-f", "qcow2", overlay}); !done) {
        return done;
      }
      // The base now reads as the overlay did: re-pointing is metadata only.
      for (const auto& child : children) {
        if (auto done = run({options.qemu_img, "rebase", "-q", "-u", "-f", "qcow2", "-F", base_format, "-b", base,
                             child});
            !done) {
          return done;
        }
      }
    } else if (auto done = rebase_children_safely(children); !done) {
      return done;
    }
  } else {
    if (base.empty() || at + 1 >= chain->files.size()) {
      return Error{ErrorKind::conflict, "disk '" + disk + "': QEMU runs overlay " + overlay +
                                            " with no base to merge it into: nothing deleted"};
    }
    if (at == 0 && !offline_children.empty()) {
      return Error{ErrorKind::conflict, "disk '" + disk + "': the VM writes to overlay " + overlay + " and " +
                                            offline_children.front() +
                                            " is built on it: power the VM off and delete again (nothing deleted)"};
    }
    if (at == 0 && !base_only_child) {
      return Error{ErrorKind::conflict, "disk '" + disk + "': the VM writes to overlay " + overlay + " and its base " +
                                            base + " has other layers built on it: power the VM off and delete "
                                            "again (nothing deleted)"};
    }
    if (!base_only_child) {
      std::vector<std::string> targets = offline_children;
      targets.push_back(chain->files[at - 1]);
      if (auto refused = refuse_checkpoint_layers(targets); !refused) {
        return refused;
      }
    }
    const std::string top_node = chain->nodes[at];
    const std::string base_node = chain->nodes[at + 1];
    const std::string root_node = chain->nodes.front();
    if (top_node.empty() || base_node.empty() || root_node.empty()) {
      return Error{ErrorKind::backend, "disk '" + disk + "': QEMU names no block node for " + overlay + " or " + base};
    }
    if (options.check_only) {
      return ok_status();
    }
    if (!base_only_child) {
      if (auto done = rebase_children_safely(offline_children); !done) {
        return done;
      }
    }
    std::string command;
    json arguments;
    if (base_only_child) {
      command = "block-commit";
      arguments = {{"device", root_node}, {"top-node", top_node}, {"base-node", base_node}};
    } else {
      command = "block-stream";
      arguments = {{"device", chain->nodes[at - 1]}, {"base-node", base_node}};
    }
    report(command + (at == 0 ? " (active)" : "") + " of " + overlay + (command == "block-commit" ? " into " + base : " into " + chain->files[at - 1]));
    int last_tenth = -1;
    auto job_progress = [&](const BlockJobInfo& job) {
      const int tenth = job.total > 0 ? static_cast<int>(10 * job.current / job.total) : 0;
      if (tenth != last_tenth) {
        last_tenth = tenth;
        report(describe(job));
      }
    };
    const std::string job_id = "quiesce-merge-" + disk;
    if (auto done = run_block_job(*qmp, command, arguments, job_id, options.merge_deadline, job_progress); !done) {
      return Error{done.error().kind, "disk '" + disk + "': " + done.error().message};
    }
    // QEMU must have let go of the overlay before it is removed.
    auto after = query_chains(*qmp);
    if (!after) {
      return Error{after.error().kind, "disk '" + disk + "': " + after.error().message};
    }
    for (const auto& c : after->chains) {
      for (const auto& f : c.files) {
        if (f == overlay) {
          return Error{ErrorKind::backend, "disk '" + disk + "': QEMU still runs " + overlay + " after " + command};
        }
      }
    }
    // Layers QEMU does not run that were built on the overlay: the base
    // now reads as the overlay did, so re-pointing them is metadata only.
    if (base_only_child) {
      for (const auto& child : offline_children) {
        if (auto done = run({options.qemu_img, "rebase", "-q", "-u", "-f", "qcow2", "-F", base_format, "-b", base,
                             child});
            !done) {
          return done;
        }
      }
    }
  }
  std::filesystem::remove(overlay_path, ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot remove " + overlay + ": " + ec.message()};
  }
  report("merged", true);
  return ok_status();
}

}  // namespace quiesce::host
