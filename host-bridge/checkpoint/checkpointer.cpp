#include "host-bridge/checkpoint/checkpointer.hpp"

#include <map>

#include "host-bridge/checkpoint/process.hpp"

namespace quiesce::host {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string describe(const client::Result& result) {
  if (result.error) {
    return result.error->code + " (" + std::to_string(result.status) + "): " + result.error->message;
  }
  return "HTTP " + std::to_string(result.status);
}

// One agent call that turns "no answer" into an error value, so the
// checkpointer's failure paths are plain code rather than catch blocks.
template <typename Call>
Expected<client::Result> call_agent(const std::string& what, Call&& call) {
  try {
    auto result = call();
    if (!result.ok()) {
      return Error{ErrorKind::agent, what + " refused: " + describe(result)};
    }
    return result;
  } catch (const client::TransportError& e) {
    return Error{ErrorKind::agent, what + ": agent unreachable: " + e.what()};
  } catch (const std::exception& e) {
    return Error{ErrorKind::agent, what + ": " + e.what()};
  }
}

}  // namespace

void Checkpointer::report(const std::string& step, const std::string& detail, std::optional<double> ms,
                          bool failed) const {
  if (progress_) {
    progress_(ProgressEvent{step, detail, ms, failed});
  }
}

Manifest Checkpointer::new_manifest(CheckpointType type, const std::string& label) const {
  Manifest m;
  m.id = store_.new_id();
  m.created_at = iso_time_now();
  m.label = label;
  m.type = type;
  m.backend = backend_.name();
  if (auto current = store_.current(); current) {
    m.parent = *current;
  }
  return m;
}

Status Checkpointer::snapshot_disks(Manifest& manifest) {
  for (const auto& disk : vm_.disks()) {
    report("snapshot " + disk.name, disk.image);
    auto snap = backend_.snapshot(disk, manifest.id, store_.dir_of(manifest.id));
    if (!snap) {
      report("snapshot " + disk.name, snap.error().message, std::nullopt, true);
      free_snapshots(manifest);
      return snap.error();
    }
    report("snapshot " + disk.name,
           snap->method + ", " + std::to_string(snap->allocated_bytes / 1024) + " KiB allocated of " +
               std::to_string(snap->bytes / (1024 * 1024)) + " MiB",
           snap->ms);
    manifest.timings_ms["snapshot_" + disk.name] = snap->ms;
    manifest.disks.push_back(std::move(*snap));
  }
  return ok_status();
}

void Checkpointer::free_snapshots(Manifest& manifest) {
  for (const auto& disk : manifest.disks) {
    if (auto status = backend_.remove(disk, manifest.id); !status) {
      manifest.warnings.push_back("freeing the snapshot of disk '" + disk.name +
                                  "' failed: " + status.error().message);
    }
  }
  manifest.disks.clear();
}

Expected<Manifest> Checkpointer::create(const CreateOptions& options) {
  // Check the disks before touching the guest: a missing image is the
  // host's problem and must not cost the guest a freeze.
  const auto disks = vm_.disks();
  if (disks.empty()) {
    return Error{ErrorKind::invalid_input, "the VM has no disks to checkpoint"};
  }
  for (const auto& disk : disks) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(disk.image, ec)) {
      return Error{ErrorKind::not_found, "disk '" + disk.name + "': image " + disk.image + " does not exist"};
    }
  }
  if (options.type == CheckpointType::standard) {
    return create_standard(options, std::nullopt);
  }
  bool can_fall_back = false;
  auto production = create_production(options, can_fall_back);
  if (production || !options.fallback_standard || !can_fall_back) {
    return production;
  }
  report("fallback", "quiesce failed, taking a standard checkpoint: " + production.error().message);
  return create_standard(options, production.error().message);
}

Expected<Manifest> Checkpointer::create_standard(const CreateOptions& options,
                                                 std::optional<std::string> fallback_reason) {
  const auto start = Clock::now();
  Manifest m = new_manifest(CheckpointType::standard, options.label);
  m.fallback_reason = std::move(fallback_reason);
  const bool running = vm_.running();
  m.vm_state = running ? "running" : "off";
  VmStateCapture* capture = running ? vm_.state_capture() : nullptr;
  if (auto status = store_.create_dir(m.id); !status) {
    return status.error();
  }
  report("checkpoint " + m.id, std::string("standard, VM ") + (running ? "running" : "off") +
                                   (capture ? ", with memory" : ""));
  std::optional<std::string> state_file;
  auto fail = [&](const Error& error) -> Expected<Manifest> {
    m.ok = false;
    m.error = error;
    m.timings_ms["total"] = ms_since(start);
    std::error_code ec;
    if (state_file) {
      // First, so a full file system has room for the manifest.
      std::filesystem::remove(store_.dir_of(m.id) / *state_file, ec);
    }
    (void)store_.save(m);
    return Error{error.kind, "checkpoint " + m.id + " failed: " + error.message};
  };
  std::optional<Clock::time_point> paused_at;
  if (capture) {
    report("pause", "stop the vCPUs");
    if (auto status = capture->pause(); !status) {
      report("pause", status.error().message, std::nullopt, true);
      return fail(status.error());
    }
    paused_at = Clock::now();
  }
  // The VM is paused from here to resume(): every failure resumes it.
  auto resume = [&]() {
    if (!paused_at) {
      return;
    }
    const double pause_ms = ms_since(*paused_at);
    paused_at.reset();
    auto status = capture->resume();
    m.timings_ms["vm_paused"] = pause_ms;
    report("resume", status ? "the VM runs again" : status.error().message, pause_ms, !status);
    if (!status) {
      m.warnings.push_back("resuming the VM failed: " + status.error().message);
    }
  };
  if (auto status = snapshot_disks(m); !status) {
    resume();
    return fail(status.error());
  }
  if (capture) {
    const auto save_start = Clock::now();
    report("save memory", "device and RAM state to the checkpoint");
    auto saved = capture->save(store_.dir_of(m.id));
    if (!saved) {
      report("save memory", saved.error().message, std::nullopt, true);
      // The disks must not stay on overlays of a failed checkpoint.
      const auto undo_start = Clock::now();
      report("undo the disks' snapshot");
      if (auto undone = capture->undo_disk_snapshots(m.disks); !undone) {
        m.warnings.push_back("undoing the disks' snapshot failed: " + undone.error().message);
        report("undo the disks' snapshot", undone.error().message, std::nullopt, true);
      } else {
        report("undo the disks' snapshot", "each disk back on the image it ran from", ms_since(undo_start));
      }
      free_snapshots(m);
      resume();
      return fail(saved.error());
    }
    state_file = saved->value("file", std::string());
    m.timings_ms["save_memory"] = ms_since(save_start);
    report("save memory",
           std::to_string(saved->value("bytes", std::uint64_t{0}) / (1024 * 1024)) + " MiB",
           m.timings_ms["save_memory"].get<double>());
    m.memory = std::move(*saved);
    resume();
    if (m.timings_ms.contains("vm_paused")) {
      m.memory["pause_ms"] = m.timings_ms["vm_paused"];
    }
    const auto seal_start = Clock::now();
    if (auto sealed = capture->seal(m.memory, store_.dir_of(m.id)); !sealed) {
      free_snapshots(m);
      m.memory = nullptr;
      return fail(sealed.error());
    }
    m.timings_ms["seal_memory"] = ms_since(seal_start);
  }
  // Without the guest's help a running VM's disks are as after a power cut
  // (its memory, when captured, is what continues from them); a VM that is
  // off was shut down cleanly.
  m.consistency = running ? Consistency::crash : Consistency::application;
  m.ok = true;
  m.timings_ms["total"] = ms_since(start);
  if (auto status = store_.save(m); !status) {
    free_snapshots(m);
    (void)store_.erase(m.id);
    return status.error();
  }
  if (auto status = store_.set_current(m.id); !status) {
    return status.error();
  }
  report("checkpoint " + m.id,
         std::string("standard, ") + to_string(*m.consistency) + "-consistent" +
             (m.memory.is_null() ? "" : ", with memory"),
         m.timings_ms["total"].get<double>());
  return m;
}

Expected<Manifest> Checkpointer::create_production(const CreateOptions& options, bool& can_fall_back) {
  can_fall_back = true;
  const auto start = Clock::now();
  if (!vm_.running()) {
    return Error{ErrorKind::conflict, "the VM is off: a production checkpoint needs the running agent "
                                      "(take a standard checkpoint, or use --fallback-standard)"};
  }
  client::AgentClient agent(vm_.agent_client_options());
  Manifest m = new_manifest(CheckpointType::production, options.label);

  // identify: which agent answers (a qga endpoint may reach a stock
  // qemu-guest-agent, which quiesces filesystems only), and the writers'
  // identity metadata, for the manifest.
  auto step_start = Clock::now();
  report("identify");
  auto health = call_agent("identify (GET /v1/health)", [&] { return agent.health(); });
  if (!health) {
    report("identify", health.error().message, std::nullopt, true);
    return health.error();  // nothing touched: nothing recorded
  }
  const std::string agent_kind = health->body.value("kind", std::string("quiesce"));
  const bool filesystems_only = agent_kind == "qemu-guest-agent";
  m.agent = {{"kind", agent_kind}, {"version", health->body.value("version", std::string())}};
  if (filesystems_only) {
    m.warnings.push_back(health->body.value("note", std::string("a stock qemu-guest-agent answered")));
    report("identify", "a stock qemu-guest-agent answered: only filesystems are quiesced");
  }
  auto writers = call_agent("identify (GET /v1/writers)", [&] { return agent.writers(); });
  if (!writers) {
    report("identify", writers.error().message, std::nullopt, true);
    return writers.error();  // nothing touched: nothing recorded
  }
  std::map<std::string, json> identity;
  for (const auto& w : writers->body.value("writers", json::array())) {
    identity[w.value("name", std::string())] = w;
  }
  m.timings_ms["identify"] = ms_since(step_start);
  report("identify", std::to_string(identity.size()) + " writers", m.timings_ms["identify"].get<double>());

  // prepare: the session carries the checkpoint id into the restore marker.
  step_start = Clock::now();
  report("prepare");
  json session_options = {{"checkpoint_id", m.id}};
  if (options.freeze_window_ms) {
    session_options["freeze_window_ms"] = *options.freeze_window_ms;
  }
  auto session = call_agent("prepare (POST /v1/sessions)", [&] { return agent.create_session(session_options); });
  if (!session) {
    report("prepare", session.error().message, std::nullopt, true);
    return session.error();  // no session was created: nothing recorded
  }
  const std::string session_id = session->body.value("id", std::string());
  m.session_id = session_id;
  m.timings_ms["prepare"] = ms_since(step_start);
  report("prepare", "session " + session_id, m.timings_ms["prepare"].get<double>());

  // From here the guest has been touched: any failure aborts the session
  // and records the checkpoint as failed.
  auto fail = [&](const Error& error, bool quiesce_failed) -> Expected<Manifest> {
    can_fall_back = quiesce_failed;
    report("abort", "DELETE session " + session_id);
    const auto abort_start = Clock::now();
    auto aborted = call_agent("abort (DELETE /v1/sessions/" + session_id + ")", [&] { return agent.abort(session_id); });
    if (!aborted) {
      // An agent that is gone cannot hold anything: its freeze holder thaws
      // when it dies, and its watchdog when the window passes.
      m.warnings.push_back(aborted.error().message);
    }
    m.timings_ms["abort"] = ms_since(abort_start);
    report("abort", aborted ? "session aborted" : aborted.error().message, m.timings_ms["abort"].get<double>(),
           !aborted);
    free_snapshots(m);
    m.ok = false;
    m.error = error;
    m.timings_ms["total"] = ms_since(start);
    std::error_code ec;
    if (std::filesystem::exists(store_.dir_of(m.id), ec) || store_.create_dir(m.id)) {
      std::filesystem::remove_all(store_.dir_of(m.id) / "disks", ec);
      (void)store_.save(m);
    }
    return Error{error.kind, "checkpoint " + m.id + " failed: " + error.message};
  };

  if (auto status = store_.create_dir(m.id); !status) {
    return fail(status.error(), false);
  }

  step_start = Clock::now();
  report("freeze");
  auto frozen = call_agent("freeze", [&] { return agent.freeze(session_id); });
  if (!frozen) {
    report("freeze", frozen.error().message, std::nullopt, true);
    return fail(frozen.error(), true);
  }
  m.timings_ms["freeze"] = ms_since(step_start);
  report("freeze", "every writer frozen", m.timings_ms["freeze"].get<double>());

  // Only now, with every writer frozen, are the disks consistent.
  const auto hold_start = Clock::now();
  if (auto status = snapshot_disks(m); !status) {
    return fail(status.error(), false);
  }
  m.timings_ms["snapshot"] = ms_since(hold_start);

  step_start = Clock::now();
  report("thaw");
  auto thawed = call_agent("thaw", [&] { return agent.thaw(session_id); });
  if (!thawed) {
    // Without a verdict nobody can say the hold lasted through the snapshot.
    report("thaw", thawed.error().message, std::nullopt, true);
    return fail(thawed.error(), false);
  }
  m.timings_ms["thaw"] = ms_since(step_start);
  m.timings_ms["host_hold"] = ms_since(hold_start);
  m.verdict = thawed->body.value("verdict", json(nullptr));
  const bool continuous = m.verdict.is_object() && m.verdict.value("continuous", false);
  m.consistency = !continuous        ? Consistency::crash
                  : filesystems_only ? Consistency::filesystem
                                     : Consistency::application;
  if (!continuous) {
    m.warnings.push_back("the hold was not continuous through the snapshot (" + m.verdict.dump() +
                         "): recorded as crash-consistent");
  }
  report("thaw",
         std::string("hold ") + (continuous ? "continuous" : "BROKEN") + ", " +
             std::to_string(static_cast<long long>(m.verdict.is_object() ? m.verdict.value("hold_ms", 0.0) : 0.0)) +
             " ms",
         m.timings_ms["thaw"].get<double>());

  step_start = Clock::now();
  report("complete");
  auto completed = call_agent("complete", [&] { return agent.complete(session_id, m.id); });
  json session_body = thawed->body;
  if (completed) {
    session_body = completed->body;
    m.artifacts = completed->body.value("artifacts", json::object());
    m.timings_ms["complete"] = ms_since(step_start);
    report("complete", std::to_string(m.artifacts.size()) + " writers with artifacts",
           m.timings_ms["complete"].get<double>());
  } else {
    // The disks are captured and the verdict known: post-snapshot failing
    // (e.g. a backup_label not returned) is worth a warning, not the checkpoint.
    m.warnings.push_back(completed.error().message);
    report("complete", completed.error().message, std::nullopt, true);
  }
  for (const auto& w : session_body.value("writers", json::array())) {
    json entry = {{"name", w.value("name", std::string())},
                  {"type", w.value("type", std::string())},
                  {"level", w.value("level", std::string())},
                  {"state", w.value("state", std::string())},
                  {"hold", w.value("hold", json(nullptr))},
                  {"timings_ms", w.value("timings_ms", json::object())}};
    // The session's own identify (agents since the storage graph report it)
    // says what this checkpoint froze and in which order; older agents only
    // answer GET /v1/writers.
    if (w.contains("identity") && w["identity"].is_object()) {
      entry["identity"] = w["identity"];
    } else if (auto it = identity.find(entry["name"].get<std::string>()); it != identity.end()) {
      entry["identity"] = it->second.value("identity", json(nullptr));
    }
    m.writers.push_back(std::move(entry));
  }
  m.ok = true;
  m.timings_ms["total"] = ms_since(start);
  if (auto status = store_.save(m); !status) {
    free_snapshots(m);
    (void)store_.erase(m.id);
    can_fall_back = false;
    return status.error();
  }
  if (auto status = store_.set_current(m.id); !status) {
    return status.error();
  }
  return m;
}

Expected<ApplyOutcome> Checkpointer::apply(const std::string& id, bool save_current) {
  const auto start = Clock::now();
  ApplyOutcome outcome;
  auto manifest = store_.load(id);
  if (!manifest) {
    return manifest.error();
  }
  if (!manifest->ok) {
    return Error{ErrorKind::conflict, "checkpoint " + id + " failed when it was taken (" +
                                          (manifest->error ? manifest->error->message : std::string("no detail")) +
                                          "); it cannot be applied"};
  }
  // Everything is checked before the VM is touched.
  std::map<std::string, DiskSpec> vm_disks;
  for (const auto& d : vm_.disks()) {
    vm_disks[d.name] = d;
  }
  for (const auto& snap : manifest->disks) {
    if (vm_disks.count(snap.name) == 0) {
      return Error{ErrorKind::invalid_input,
                   "checkpoint " + id + " has disk '" + snap.name + "', which the VM does not have"};
    }
    if (auto status = backend_.verify(snap); !status) {
      return Error{status.error().kind, "checkpoint " + id + ": " + status.error().message + "; nothing changed"};
    }
  }
  if (manifest->disks.size() != vm_disks.size()) {
    return Error{ErrorKind::invalid_input, "checkpoint " + id + " has " + std::to_string(manifest->disks.size()) +
                                               " disks, the VM has " + std::to_string(vm_disks.size())};
  }
  // A checkpoint with memory comes back running where it was: its state
  // file must be whole and loadable before the VM is touched.
  VmStateCapture* capture = nullptr;
  if (!manifest->memory.is_null()) {
    capture = vm_.state_capture();
    if (capture == nullptr) {
      return Error{ErrorKind::invalid_input, "checkpoint " + id +
                                                 " carries memory state, which this VM cannot load; nothing changed"};
    }
    const auto verify_start = Clock::now();
    report("verify memory state", manifest->memory.value("file", std::string()));
    if (auto status = capture->verify(manifest->memory, store_.dir_of(id)); !status) {
      report("verify memory state", status.error().message, std::nullopt, true);
      return Error{status.error().kind, "checkpoint " + id + ": " + status.error().message + "; nothing changed"};
    }
    outcome.timings_ms["verify_memory"] = ms_since(verify_start);
    report("verify memory state", "size and sha256 as recorded", outcome.timings_ms["verify_memory"].get<double>());
  }
  outcome.applied = *manifest;

  auto step_start = Clock::now();
  CreateOptions save;
  save.type = CheckpointType::standard;
  save.label = "saved before applying " + id;
  // Hyper-V's "Create checkpoint and apply" keeps a running VM's state: a
  // hypervisor that can save memory takes it before the power-off (the
  // VM is still running if that fails); otherwise the disks after it.
  if (save_current && vm_.running() && vm_.state_capture() != nullptr) {
    auto saved = create_standard(save, std::nullopt);
    if (!saved) {
      return Error{saved.error().kind, "saving the current state failed, nothing applied: " + saved.error().message};
    }
    outcome.saved = *saved;
    outcome.timings_ms["save_current"] = ms_since(step_start);
    step_start = Clock::now();
  }
  if (vm_.running()) {
    report("power off");
    if (auto status = vm_.power_off(); !status) {
      return status.error();
    }
    outcome.timings_ms["power_off"] = ms_since(step_start);
    report("power off", "", outcome.timings_ms["power_off"].get<double>());
  }
  if (save_current && !outcome.saved) {
    step_start = Clock::now();
    auto saved = create_standard(save, std::nullopt);
    if (!saved) {
      (void)vm_.power_on();
      return Error{saved.error().kind, "saving the current state failed, nothing applied: " + saved.error().message};
    }
    outcome.saved = *saved;
    outcome.timings_ms["save_current"] = ms_since(step_start);
  }
  // A VM whose disks are layered images (qemu) may move to a fresh top
  // layer when it stops; the restore goes into the files it will boot from.
  for (const auto& d : vm_.disks()) {
    vm_disks[d.name] = d;
  }
  for (const auto& snap : manifest->disks) {
    step_start = Clock::now();
    report("restore " + snap.name, snap.snapshot);
    if (auto status = backend_.restore(snap, vm_disks[snap.name], id); !status) {
      report("restore " + snap.name, status.error().message, std::nullopt, true);
      return Error{status.error().kind, "restoring checkpoint " + id + " failed, the VM is left off: " +
                                            status.error().message};
    }
    outcome.timings_ms["restore_" + snap.name] = ms_since(step_start);
    report("restore " + snap.name, "", outcome.timings_ms["restore_" + snap.name].get<double>());
  }
  if (auto status = store_.set_current(id); !status) {
    return status.error();
  }
  step_start = Clock::now();
  if (capture) {
    report("start from the memory state");
    if (auto status = capture->start_from(manifest->memory, store_.dir_of(id)); !status) {
      return Error{status.error().kind, "checkpoint " + id + ": the disks are restored, but starting from its memory "
                                            "state failed (the VM is left off): " + status.error().message};
    }
    outcome.timings_ms["start_from_memory"] = ms_since(step_start);
    report("start from the memory state", "running where it was",
           outcome.timings_ms["start_from_memory"].get<double>());
  } else {
    report("power on");
    if (auto status = vm_.power_on(); !status) {
      return Error{status.error().kind, "checkpoint " + id + " restored, but powering on failed: " +
                                            status.error().message};
    }
    outcome.timings_ms["power_on"] = ms_since(step_start);
    report("power on", "", outcome.timings_ms["power_on"].get<double>());
  }
  outcome.timings_ms["total"] = ms_since(start);
  return outcome;
}

Expected<RemoveOutcome> Checkpointer::remove(const std::string& id, bool force) {
  auto manifest = store_.load(id);
  if (!manifest) {
    return manifest.error();
  }
  auto listing = store_.list();
  if (!listing.problems.empty()) {
    return Error{ErrorKind::invalid_input, "cannot tell which checkpoints descend from " + id + ": " +
                                               listing.problems.front().message + "; nothing deleted"};
  }
  RemoveOutcome outcome;
  outcome.new_parent = manifest->parent;
  std::vector<Manifest> children;
  for (const auto& m : listing.manifests) {
    if (m.parent && *m.parent == id) {
      children.push_back(m);
    }
  }
  if (!children.empty() && !force) {
    std::string names;
    for (const auto& c : children) {
      names += (names.empty() ? "" : ", ") + c.id;
    }
    return Error{ErrorKind::conflict, "checkpoint " + id + " is the parent of " + names +
                                          "; --force deletes it and re-parents them onto " +
                                          (manifest->parent ? *manifest->parent : std::string("nothing (they become roots)"))};
  }
  // Every disk is asked first: a refusal must leave all of them as they were.
  for (const auto& disk : manifest->disks) {
    if (auto status = backend_.check_remove(disk); !status) {
      return status.error();
    }
  }
  for (const auto& disk : manifest->disks) {
    if (auto status = backend_.remove(disk, id); !status) {
      return status.error();
    }
  }
  for (auto& child : children) {
    child.parent = manifest->parent;
    if (auto status = store_.save(child); !status) {
      return status.error();
    }
    outcome.reparented.push_back(child.id);
  }
  if (auto current = store_.current(); current && *current && **current == id) {
    (void)store_.set_current(manifest->parent);
  }
  if (auto status = store_.erase(id); !status) {
    return status.error();
  }
  return outcome;
}

}  // namespace quiesce::host
