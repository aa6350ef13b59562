#!/usr/bin/env bash
# The main job on a real VM (packaging/dev.sh demo vm): QEMU run by
# quiesce-host, the agent of this build inside the guest, a SQLite workload
# inside the guest, and the proof that both kinds of checkpoint bring back
# exactly what they should.
#
#   1. a qemu VM of the initramfs guest (packaging/vm-guest.sh, TCG): the
#      agent with the sqlite and fsfreeze writers; a workload in the guest
#      commits one row at a time to /mnt/data/app.db (WAL) and logs each
#      commit SQLite acknowledged, with the guest's clock, in RAM (/run)
#   2. a production checkpoint while it writes; more writes; apply (power
#      off, the disk restored, boot): every row acknowledged before the
#      freeze is there, none that was never acknowledged, none acknowledged
#      after the thaw; integrity_check; the agent ran post-restore
#   3. the workload again, a standard checkpoint with memory while it
#      writes; more writes; apply (no boot: the state is loaded): the same
#      workload process goes on from its row of the checkpoint (its counter
#      continues), the rows acknowledged before the pause are there, the
#      database holds exactly what the restored log acknowledged, and the
#      guest's uptime went on from the checkpoint's
# Needs root (the guest image's cache, tmpfs-free but QEMU as root) and a
# build with quiesce-host and quiesce-agent. About 2-3 min under TCG.
# Usage: packaging/demo-vm.sh BUILD_DIR    (KEEP=1 keeps the work directory)
set -euo pipefail

build_dir=$(cd "${1:?usage: demo-vm.sh BUILD_DIR}" && pwd)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
host=$build_dir/bin/quiesce-host
# shellcheck source=packaging/vm-guest.sh
. "$repo/packaging/vm-guest.sh"

if [ "$(id -u)" -ne 0 ]; then
  echo "demo-vm.sh: needs root (the guest image is built into /var/cache/quiesce-vm)" >&2
  exit 1
fi
for tool in sqlite3 qemu-system-x86_64 qemu-img mkfs.ext4 python3; do
  command -v "$tool" >/dev/null || { echo "demo-vm.sh: needs $tool (packaging/dev.sh deps installs it)" >&2; exit 1; }
done
[ -x "$host" ] && [ -x "$build_dir/bin/quiesce-agent" ] || { echo "demo-vm.sh: build first ($host missing)" >&2; exit 1; }

work=$(mktemp -d /tmp/quiesce-demo-vm.XXXXXX)
vm=$work/vm
export QUIESCE_VM=$vm
cleanup() {
  set +e
  "$host" vm down >/dev/null 2>&1
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
t_start=$(now_ms)
step_t0=0
step() { step_t0=$(now_ms); printf '\n== %s\n' "$*"; }
took() { printf '   (%s ms)\n' "$(( $(now_ms) - step_t0 ))"; }

# The guest's database service: the next row after the last one in the
# database, one commit at a time, each acknowledged commit logged with the
# guest's clock; stops for good once /run/workload.stop exists.
workload=$(cat <<'SH'
#!/bin/bash
db=/mnt/data/app.db acks=/run/acks.log
i=$(( $(sqlite3 "$db" "SELECT COALESCE(MAX(seq), 0) FROM acked;") + 1 ))
while [ ! -e /run/workload.stop ]; do
  if sqlite3 -cmd ".timeout 30000" "$db" "INSERT INTO acked(seq) VALUES($i);" >/dev/null 2>&1; then
    echo "$i $EPOCHREALTIME" >>"$acks"
    i=$((i + 1))
  fi
done
SH
)
start_workload() {
  guest "$vm" "echo $(printf '%s\n' "$workload" | base64 -w0) | base64 -d >/run/workload.sh && chmod +x /run/workload.sh && rm -f /run/workload.stop /run/acks.log && (setsid /run/workload.sh </dev/null >/dev/null 2>&1 & echo \$! >/run/workload.pid)" >/dev/null
}
stop_workload() {
  guest "$vm" "touch /run/workload.stop; while kill -0 \$(cat /run/workload.pid) 2>/dev/null; do sleep 0.1; done" >/dev/null
}
# The guest's clock minus the host's (ms), from a round trip on the
# control channel; the error is at most half the round trip, printed too.
clock_offset() {
  local out
  out=$(python3 "$repo/packaging/guest-run.py" "$vm/run/control.sock" --clock-offset)
  [ -n "$out" ] || { echo "demo-vm.sh: the guest's clock could not be read" >&2; exit 1; }
  echo "$out"
}
# Runs a checkpoint command with each progress line stamped by the host's clock.
timed_checkpoint() {
  local out=$1
  shift
  # Made before the command starts: a tail that found no file yet would
  # end at once (and pipefail with it).
  : >"$out.progress"
  "$host" --json "$@" >"$out.json" 2>>"$out.progress" &
  local pid=$!
  : >"$out.timeline"
  tail -n +1 -s 0.05 -f "$out.progress" --pid=$pid 2>/dev/null | while IFS= read -r line; do
    printf '%s %s\n' "$(now_ms)" "$line" >>"$out.timeline"
    printf '   %s\n' "$line"
  done
  wait $pid || { echo "checkpoint failed: $(cat "$out.json")"; exit 1; }
}
# json_field FILE '["a"]["b"]': one value of a JSON file (numbers rounded).
json_field() {
  python3 -c 'import json,sys; v = eval("json.load(open(sys.argv[1]))" + sys.argv[2]); print(round(v) if isinstance(v, float) else v)' "$@"
}

step "the VM: 256 MiB, the initramfs guest, a 128 MiB data disk holding app.db (WAL)"
mkdir -p "$work/seed"
sqlite3 "$work/seed/app.db" "PRAGMA journal_mode=WAL; CREATE TABLE acked(seq INTEGER PRIMARY KEY);" >/dev/null
vm_guest_make "$vm" 256 '{"listen": {"unix": {"path": "/run/quiesce/agent.sock", "mode": "0660"}},
  "state_dir": "/mnt/data/quiesce-state",
  "session": {"freeze_window_ms": 20000, "max_freeze_window_ms": 60000},
  "log": {"target": "stderr", "level": "info"},
  "writers": [{"type": "sqlite", "name": "db", "options": {"databases": ["/mnt/data/app.db"]}},
              {"type": "fsfreeze", "name": "fs", "options": {"mounts": ["/mnt/data"]}}],
  "qga": {"virtio_serial_path": "/dev/virtio-ports/org.qemu.guest_agent.0", "freeze_window_ms": 20000}}' "$work/seed"
took

step "vm up (QEMU under ${QUIESCE_VM_ACCEL:-tcg}, the agent answers over virtio-serial)"
"$host" vm up
took

step "the workload starts committing inside the guest"
start_workload
sleep 3
echo "   $(guest "$vm" 'grep -c "" /run/acks.log') rows acknowledged so far"

step "checkpoint create --type production (while the workload writes)"
timed_checkpoint "$work/prod" checkpoint create --type production --label "demo vm: production"
took
clock=$(clock_offset)
read -r offset1 error1 <<<"$clock"
prod_id=$(json_field "$work/prod.json" '["id"]')
echo "   $prod_id: $(json_field "$work/prod.json" '["consistency"]')-consistent, hold $(json_field "$work/prod.json" '["verdict"]["hold_ms"]') ms in the guest"
sleep 2
stop_workload
guest "$vm" 'cat /run/acks.log' >"$work/prod.acks"
echo "   $(grep -c '' <"$work/prod.acks") rows acknowledged in all"

step "checkpoint apply $prod_id (power off, the disk restored, boot)"
"$host" checkpoint apply "$prod_id"
took
guest "$vm" 'sqlite3 /mnt/data/app.db "SELECT seq FROM acked ORDER BY seq;"' >"$work/prod.rows"
integrity=$(guest "$vm" 'sqlite3 /mnt/data/app.db "PRAGMA integrity_check;"')

step "check the restored rows against the acknowledgement log"
python3 - "$work/prod.acks" "$work/prod.rows" "$work/prod.timeline" "$offset1" "$error1" "$integrity" <<'PY'
import sys
acks_path, rows_path, timeline_path, offset, error, integrity = sys.argv[1:7]
offset, error = float(offset), float(error)
# The host's progress lines, on the guest's clock (ms), widened by the
# offset's error so a row is never put on the wrong side of a boundary.
freeze = thaw = None
for line in open(timeline_path):
    at, text = line.split(" ", 1)
    if freeze is None and text.startswith("  .. freeze"):
        freeze = int(at) + offset - error
    if thaw is None and text.startswith("[thaw]"):
        thaw = int(at) + offset + error
acks = {int(s): float(t) * 1000 for s, t in (l.split() for l in open(acks_path))}
rows = [int(x) for x in open(rows_path).read().split()]
before = {s for s, t in acks.items() if t < freeze}
after = {s for s, t in acks.items() if t > thaw}
restored = set(rows)
missing, extra, late = sorted(before - restored), sorted(restored - set(acks)), sorted(restored & after)
print(f"   acknowledged: {len(acks)} rows; {len(before)} before the freeze request, {len(after)} after the thaw "
      f"(clocks matched within {error:.0f} ms)")
print(f"   restored:     {len(rows)} rows")
print(f"   acknowledged before the freeze but missing: {len(missing)} {missing[:10]}")
print(f"   present but never acknowledged (extra):     {len(extra)} {extra[:10]}")
print(f"   acknowledged after the thaw but present:    {len(late)} {late[:10]}")
print(f"   SQLite integrity_check: {integrity.strip()}")
ok = not missing and not extra and not late and integrity.strip() == "ok" and rows == list(range(1, len(rows) + 1))
print("   RESULT: " + ("0 missing / 0 extra rows: exactly what was acknowledged before the freeze" if ok else "MISMATCH"))
sys.exit(0 if ok else 1)
PY
"$host" --json vm status | python3 -c 'import json,sys; h=json.load(sys.stdin)["health"]; print("   the agent saw the restore: " + json.dumps(h["last_restore"]))'

step "the workload again; checkpoint create --type standard (with memory, while it writes)"
start_workload
sleep 3
guest "$vm" 'cut -d" " -f1 /proc/uptime' >"$work/uptime.before"
timed_checkpoint "$work/mem" checkpoint create --type standard --label "demo vm: with memory"
took
clock=$(clock_offset)
read -r offset2 error2 <<<"$clock"
mem_id=$(json_field "$work/mem.json" '["id"]')
echo "   $mem_id: $(json_field "$work/mem.json" '["consistency"]') disks + memory ($(( $(json_field "$work/mem.json" '["memory"]["bytes"]') / 1048576 )) MiB state), the VM paused $(json_field "$work/mem.json" '["memory"]["pause_ms"]') ms"
sleep 3
guest "$vm" 'cat /run/acks.log' >"$work/mem.acks.before-apply"
echo "   $(grep -c '' <"$work/mem.acks.before-apply") rows acknowledged since the workload started again"

step "checkpoint apply $mem_id (the disk restored, the state loaded: no boot)"
"$host" checkpoint apply "$mem_id"
took
uptime_after=$(guest "$vm" 'cut -d" " -f1 /proc/uptime')
sleep 2
stop_workload
guest "$vm" 'cat /run/acks.log' >"$work/mem.acks.after-apply"
guest "$vm" 'sqlite3 /mnt/data/app.db "SELECT seq FROM acked ORDER BY seq;"' >"$work/mem.rows"
integrity=$(guest "$vm" 'sqlite3 /mnt/data/app.db "PRAGMA integrity_check;"')

step "check the rows and the workload's counter across the memory checkpoint"
python3 - "$work/prod.rows" "$work/mem.acks.before-apply" "$work/mem.acks.after-apply" "$work/mem.rows" \
  "$work/mem.timeline" "$offset2" "$error2" "$integrity" "$(cat "$work/uptime.before")" "$uptime_after" <<'PY'
import sys
(base_path, pre_path, post_path, rows_path, timeline_path, offset, error, integrity,
 uptime_before, uptime_after) = sys.argv[1:11]
offset, error = float(offset), float(error)
pause = None
for line in open(timeline_path):
    at, text = line.split(" ", 1)
    if pause is None and text.startswith("  .. pause"):
        pause = int(at) + offset - error
base = [int(x) for x in open(base_path).read().split()]
pre = [l.split() for l in open(pre_path)]
post = [l.split() for l in open(post_path)]
rows = [int(x) for x in open(rows_path).read().split()]
# The log in RAM came back as it was at the checkpoint: a common prefix.
k = 0
while k < min(len(pre), len(post)) and pre[k] == post[k]:
    k += 1
at_checkpoint = int(pre[k - 1][0]) if k else (max(base) if base else 0)
undone = [int(s) for s, _ in pre[k:]]
went_on = [int(s) for s, _ in post[k:]]
before_pause = {int(s) for s, t in pre if float(t) * 1000 < pause}
acked = set(base) | {int(s) for s, _ in post}
restored = set(rows)
missing, extra = sorted(before_pause - restored), sorted(restored - acked)
continuous = bool(went_on) and went_on[0] == at_checkpoint + 1 and went_on == list(range(at_checkpoint + 1, at_checkpoint + 1 + len(went_on)))
print(f"   counter: row {at_checkpoint} at the checkpoint; rows {undone[0] if undone else '-'}..{undone[-1] if undone else '-'} "
      f"acknowledged after it were undone by the apply; the same process went on with rows "
      f"{went_on[0] if went_on else '-'}..{went_on[-1] if went_on else '-'}: " + ("continuous" if continuous else "NOT continuous"))
print(f"   guest uptime: {uptime_before.strip()} s before the checkpoint, {uptime_after.strip()} s after the apply (no reboot)")
print(f"   acknowledged before the pause but missing: {len(missing)} {missing[:10]}")
print(f"   present but never acknowledged (extra):    {len(extra)} {extra[:10]}")
print(f"   SQLite integrity_check: {integrity.strip()}")
ok = (continuous and not missing and not extra and integrity.strip() == "ok" and rows == sorted(acked)
      and float(uptime_after) >= float(uptime_before))
print("   RESULT: " + ("0 missing / 0 extra rows, a continuous counter" if ok else "MISMATCH"))
sys.exit(0 if ok else 1)
PY

step "checkpoint tree"
"$host" checkpoint tree | sed 's/^/   /'

step "vm down"
"$host" vm down
printf '\n== done in %s ms\n' "$(( $(now_ms) - t_start ))"
