#!/usr/bin/env bash
# The main job: an application-consistent checkpoint of a simulated VM, and
# the proof that applying it brings back exactly what was acknowledged
# before the freeze.
#
#   1. a simulated VM: an ext4 "data" disk (loop-mounted), the real
#      quiesce-agent with the sqlite and fsfreeze writers, and a guest
#      service: a workload committing rows to a SQLite database (WAL) on the
#      data disk, logging every acknowledged commit to a file on the host
#   2. a production checkpoint while the workload runs
#   3. more writes, then apply the checkpoint (power off, restore, power on)
#   4. the database is checked against the acknowledgement log: every row
#      acknowledged before the freeze is there, nothing that was not
#      acknowledged is, nothing acknowledged after the thaw is, and SQLite's
#      integrity check passes; the agent reports the restore on /v1/health.
# Needs root (loop devices, mount, FIFREEZE) and sqlite3.
# Usage: packaging/demo.sh BUILD_DIR
set -euo pipefail

build_dir=${1:?usage: demo.sh BUILD_DIR}
bin=$(cd "$build_dir/bin" && pwd)
host=$bin/quiesce-host

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: the main job needs root: it attaches loop devices, mounts ext4 images and" >&2
  echo "freezes them (FIFREEZE). Run it as root: sudo packaging/dev.sh demo" >&2
  exit 1
fi
for tool in sqlite3 losetup mkfs.ext4 python3; do
  command -v "$tool" >/dev/null || { echo "demo.sh: needs $tool (packaging/dev.sh deps installs it)" >&2; exit 1; }
done
[ -x "$host" ] && [ -x "$bin/quiesce-agent" ] || { echo "demo.sh: build first ($host missing)" >&2; exit 1; }

work=$(mktemp -d /tmp/quiesce-demo.XXXXXX)
vm=$work/vm
acks=$work/acks.log            # host side: one line per acknowledged commit
stop_file=$work/workload.stop
export QUIESCE_VM=$vm

cleanup() {
  set +e
  touch "$stop_file"
  "$host" sim down >/dev/null 2>&1
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
t_start=$(now_ms)
step_t0=0
step() { step_t0=$(now_ms); printf '\n== %s\n' "$*"; }
took() { printf '   (%s ms)\n' "$(( $(now_ms) - step_t0 ))"; }

mkdir -p "$vm"
has_sqlite_writer=0
[ -d "$(dirname "$0")/../writers/sqlite" ] && has_sqlite_writer=1

# The guest's database service: commits one row at a time and records each
# commit SQLite acknowledged (with the host's clock) in the ack log. It
# stops for good once the stop file exists, so it does not run again after
# the restore while the data is checked.
cat >"$vm/workload.sh" <<'SH'
#!/bin/sh
db=$1; acks=$2; stop=$3
i=$(( $(cat "$acks" 2>/dev/null | wc -l) + 1 ))
while [ ! -e "$stop" ]; do
  if sqlite3 -cmd ".timeout 30000" "$db" "INSERT INTO acked(seq) VALUES($i);" >/dev/null 2>&1; then
    echo "$i $(date +%s%3N)" >>"$acks"
    i=$((i + 1))
  fi
done
SH
chmod +x "$vm/workload.sh"

write_vm_json() {
  local writers=$1 services=$2
  cat >"$vm/vm.json" <<JSON
{
  "name": "demo",
  "disks": [{"name": "data", "size_mb": 128}],
  "state_disk": "data",
  "agent": {"writers": $writers, "session": {"freeze_window_ms": 10000}},
  "services": $services
}
JSON
}

step "install the guest: a 128 MiB ext4 data disk with a SQLite database (WAL)"
write_vm_json '[{"type": "fsfreeze", "name": "fs", "options": {"mounts": ["{mount:data}"]}}]' '[]'
"$host" sim up >/dev/null
sqlite3 "$vm/guest/data/app.db" "PRAGMA journal_mode=WAL; CREATE TABLE acked(seq INTEGER PRIMARY KEY);" >/dev/null
"$host" sim down >/dev/null
took

writers='[{"type": "fsfreeze", "name": "fs", "options": {"mounts": ["{mount:data}"]}}]'
if [ "$has_sqlite_writer" = 1 ]; then
  writers='[{"type": "sqlite", "name": "db", "options": {"databases": ["{mount:data}/app.db"]}},
            {"type": "fsfreeze", "name": "fs", "options": {"mounts": ["{mount:data}"]}}]'
fi
write_vm_json "$writers" "[{\"name\": \"workload\", \"argv\": [\"$vm/workload.sh\", \"{mount:data}/app.db\", \"$acks\", \"$stop_file\"]}]"
step "vm.json"
cat "$vm/vm.json"

step "sim up: attach and mount the disk, start quiesce-agent, start the workload"
"$host" sim up
took
"$bin/quiescectl" --socket "$vm/run/agent.sock" writers | sed 's/^/   /'

sleep 1.5
step "the workload is committing: $(wc -l <"$acks") rows acknowledged so far"

# Each progress line of the checkpoint gets the host clock, so the freeze
# and thaw can be placed in the ack log's timeline.
step "checkpoint create --type production (while the workload writes)"
"$host" checkpoint create --label "demo: before more writes" --json >"$work/cp.json" 2>"$work/cp.progress" &
cp_pid=$!
: >"$work/cp.timeline"
tail -n +1 -s 0.05 -f "$work/cp.progress" --pid=$cp_pid 2>/dev/null | while IFS= read -r line; do
  printf '%s %s\n' "$(now_ms)" "$line" >>"$work/cp.timeline"
  printf '   %s\n' "$line"
done
wait $cp_pid || { echo "checkpoint failed: $(cat "$work/cp.json")"; exit 1; }
took
cp_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/cp.json")
freeze_start=$(awk '$2==".." && $3=="freeze" {print $1; exit}' "$work/cp.timeline")
thaw_done=$(awk '$2 ~ /^\[thaw\]/ {print $1; exit}' "$work/cp.timeline")
python3 - "$work/cp.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"   checkpoint {m['id']}: {m['type']}, {m['consistency']}-consistent, verdict {json.dumps(m['verdict'])}")
order = ["identify", "prepare", "freeze", "snapshot", "thaw", "complete", "total"]
print("   timings (ms): " + "  ".join(f"{k} {m['timings_ms'][k]:.1f}" for k in order if k in m["timings_ms"]))
for w in m["writers"]:
    print(f"   writer {w['name']} ({w['type']}): {w['state']}, hold {json.dumps(w.get('hold'))}")
PY

sleep 1
step "more writes after the checkpoint: $(wc -l <"$acks") rows acknowledged in all"
touch "$stop_file"
sleep 0.3
acked_total=$(wc -l <"$acks")

step "checkpoint apply $cp_id --save-current (power off, save, restore, power on)"
"$host" checkpoint apply "$cp_id" --save-current
took

step "check the restored data against the acknowledgement log"
rows=$(sqlite3 "$vm/guest/data/app.db" "SELECT seq FROM acked ORDER BY seq;")
integrity=$(sqlite3 "$vm/guest/data/app.db" "PRAGMA integrity_check;")
echo "$rows" >"$work/rows.txt"
python3 - "$acks" "$work/rows.txt" "$freeze_start" "$thaw_done" "$integrity" <<'PY'
import sys
acks_path, rows_path, freeze_start, thaw_done, integrity = sys.argv[1:6]
freeze_start, thaw_done = int(freeze_start), int(thaw_done)
acks = {}
for line in open(acks_path):
    seq, at = line.split()
    acks[int(seq)] = int(at)
rows = [int(x) for x in open(rows_path).read().split()]
before = {s for s, t in acks.items() if t < freeze_start}
after_thaw = {s for s, t in acks.items() if t > thaw_done}
restored = set(rows)
missing = sorted(before - restored)
phantom = sorted(restored - set(acks))
late = sorted(restored & after_thaw)
print(f"   acknowledged: {len(acks)} rows in all; {len(before)} before the freeze request, "
      f"{len(after_thaw)} after the thaw")
print(f"   restored:     {len(rows)} rows (seq 1..{max(rows) if rows else 0})")
print(f"   acknowledged before the freeze but missing: {len(missing)} {missing[:10]}")
print(f"   present but never acknowledged:            {len(phantom)} {phantom[:10]}")
print(f"   acknowledged after the thaw but present:   {len(late)} {late[:10]}")
print(f"   SQLite integrity_check: {integrity}")
ok = not missing and not phantom and not late and integrity == "ok" and rows == list(range(1, len(rows) + 1))
print("   RESULT: " + ("the data is exactly what was acknowledged before the freeze" if ok else "MISMATCH"))
sys.exit(0 if ok else 1)
PY

step "the agent saw the restore (GET /v1/health last_restore)"
curl -sS --unix-socket "$vm/run/agent.sock" http://localhost/v1/health |
  python3 -c 'import json,sys; h=json.load(sys.stdin); print("   " + json.dumps(h["last_restore"]))'

step "checkpoint tree"
"$host" checkpoint tree | sed 's/^/   /'

step "sim down"
"$host" sim down
printf '\n== done in %s ms\n' "$(( $(now_ms) - t_start ))"
