#!/usr/bin/env bash
# The benchmark of a real VM's checkpoints (packaging/dev.sh bench vm; not a
# test): for a qemu VM of the initramfs guest (packaging/vm-guest.sh) with
# 256 MiB and 1 GiB of RAM, idle and with half its RAM dirtied (random
# bytes in a tmpfs file, so no page is zero and each must be saved):
#   - the VM's pause for a standard checkpoint with memory (stop to cont:
#     the manifest's memory.pause_ms) and the state file's size,
#   - the hold the guest saw in a production checkpoint (the thaw verdict's
#     hold_ms: freeze to thaw inside the guest) and the host's hold.
# RUNS runs of each (default 5); medians printed, every run written as CSV
# to BUILD_DIR/bench/vm.csv. About 6-10 min under TCG on 2 cores.
# Usage: packaging/bench-vm.sh BUILD_DIR [RUNS]
set -euo pipefail

build_dir=$(cd "${1:?usage: bench-vm.sh BUILD_DIR [RUNS]}" && pwd)
runs=${2:-5}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
host=$build_dir/bin/quiesce-host
# shellcheck source=packaging/vm-guest.sh
. "$repo/packaging/vm-guest.sh"
[ "$(id -u)" -eq 0 ] || { echo "bench-vm.sh: needs root (the guest image's cache)" >&2; exit 1; }
[ -x "$host" ] && [ -x "$build_dir/bin/quiesce-agent" ] || { echo "bench-vm.sh: build first" >&2; exit 1; }

out=$build_dir/bench
mkdir -p "$out"
csv=$out/vm.csv
echo "ram_mib,dirty_mib,run,kind,pause_ms,state_bytes,guest_hold_ms,host_hold_ms,total_ms" >"$csv"
work=$(mktemp -d /tmp/quiesce-bench-vm.XXXXXX)
vm=
cleanup() {
  set +e
  [ -z "$vm" ] || "$host" --vm "$vm" vm down >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

agent='{"listen": {"unix": {"path": "/run/quiesce/agent.sock", "mode": "0660"}},
  "state_dir": "/mnt/data/quiesce-state", "log": {"target": "stderr", "level": "warn"},
  "writers": [{"type": "fsfreeze", "name": "fs", "options": {"mounts": ["/mnt/data"]}}],
  "qga": {"virtio_serial_path": "/dev/virtio-ports/org.qemu.guest_agent.0"}}'

for ram in 256 1024; do
  vm=$work/vm-$ram
  echo "== ${ram} MiB guest: boot"
  vm_guest_make "$vm" "$ram" "$agent" >/dev/null
  "$host" --vm "$vm" vm up >/dev/null
  # /run in the guest is a tmpfs of half the RAM; a file filling most of
  # it dirties that much memory. Any byte but zero will do (QEMU skips only
  # zero pages; /dev/urandom under TCG took minutes).
  for dirty in 0 $((ram / 2 - 32)); do
    if [ "$dirty" -gt 0 ]; then
      echo "== ${ram} MiB guest: dirtying ${dirty} MiB"
      QUIESCE_GUEST_TIMEOUT_S=600 guest "$vm" "head -c $((dirty * 1048576)) /dev/zero | tr '\\0' x >/run/dirty && echo ok" >/dev/null
    fi
    for run in $(seq "$runs"); do
      m=$("$host" --vm "$vm" --json checkpoint create --type standard --label bench 2>/dev/null)
      python3 - "$ram" "$dirty" "$run" "$m" >>"$csv" <<'PY'
import json, sys
ram, dirty, run, m = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(f"{ram},{dirty},{run},standard,{m['memory']['pause_ms']:.1f},{m['memory']['bytes']},,,{m['timings_ms']['total']:.1f}")
PY
      # The state files are not needed here and would fill the disk.
      rm -f "$vm"/checkpoints/*/memory.state
      m=$("$host" --vm "$vm" --json checkpoint create --type production --label bench 2>/dev/null)
      python3 - "$ram" "$dirty" "$run" "$m" >>"$csv" <<'PY'
import json, sys
ram, dirty, run, m = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(f"{ram},{dirty},{run},production,,,{m['verdict']['hold_ms']:.1f},{m['timings_ms']['host_hold']:.1f},{m['timings_ms']['total']:.1f}")
PY
    done
  done
  "$host" --vm "$vm" vm down >/dev/null
  vm=
done

python3 - "$csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def med(rs, key):
    values = [float(r[key]) for r in rs if r[key]]
    return statistics.median(values) if values else float("nan")
print(f"\n{'RAM':>6} {'dirty':>7} | {'pause (standard)':>17} {'state file':>11} | {'guest hold (production)':>24} {'host hold':>10}")
for ram in sorted({r["ram_mib"] for r in rows}, key=int):
    for dirty in sorted({r["dirty_mib"] for r in rows if r["ram_mib"] == ram}, key=int):
        std = [r for r in rows if r["ram_mib"] == ram and r["dirty_mib"] == dirty and r["kind"] == "standard"]
        prod = [r for r in rows if r["ram_mib"] == ram and r["dirty_mib"] == dirty and r["kind"] == "production"]
        print(f"{ram:>4} MiB {dirty:>4} MiB | {med(std, 'pause_ms'):>14.0f} ms {med(std, 'state_bytes') / 1048576:>7.0f} MiB |"
              f" {med(prod, 'guest_hold_ms'):>21.0f} ms {med(prod, 'host_hold_ms'):>7.0f} ms")
print(f"\nmedians of {len(rows) // 2 // max(1, len({(r['ram_mib'], r['dirty_mib']) for r in rows}))} runs each; every run in {sys.argv[1]}")
PY
