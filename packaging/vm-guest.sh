# Sourced by packaging/demo-vm.sh and packaging/bench-vm.sh: a qemu VM of
# the initramfs guest (tests/vm/build-initramfs-guest.sh: Debian's kernel,
# busybox, bash, sqlite3; the agent of this build on a payload) described by
# a vm.json that quiesce-host runs, with the guest's control channel
# (org.quiesce.test.0, served by quiesce-test-runner) at run/control.sock.
#
#   vm_guest_make VM_DIR MEMORY_MIB AGENT_JSON [SEED_DIR]
#       the VM directory: kernel, initrd + payload, a 128 MiB ext4 data disk
#       (qcow2, label quiesce-data, mounted at /mnt/data in the guest) made
#       from SEED_DIR's files when given, vm.json
#   guest VM_DIR COMMAND...   run a command in the guest (packaging/guest-run.py)
# Needs: $repo (the source tree), $build_dir (bin/quiesce-agent, ...), root.
# QUIESCE_VM_ACCEL (default tcg: /dev/kvm may open on a host where it runs
# no guest) picks the accelerator.

vm_guest_make() {
  local vm=$1 memory=$2 agent_json=$3 seed=${4:-}
  local image
  image=$("$repo/tests/vm/build-initramfs-guest.sh")
  mkdir -p "$vm/disks"
  printf '%s\n' "$agent_json" >"$vm/agent.json"
  "$repo/tests/vm/make-initramfs-payload.sh" --image "$image" --initrd "$vm/initrd.img" \
    --build-dir "$build_dir" --config "$vm/agent.json"
  truncate -s 128M "$vm/disks/data.raw"
  mkfs.ext4 -q -F -L quiesce-data ${seed:+-d "$seed"} "$vm/disks/data.raw"
  qemu-img convert -q -f raw -O qcow2 "$vm/disks/data.raw" "$vm/disks/data.qcow2"
  rm -f "$vm/disks/data.raw"
  python3 - "$vm/vm.json" "$image" "$memory" "${QUIESCE_VM_ACCEL:-tcg}" <<'PY'
import json, sys
path, image, memory, accel = sys.argv[1:5]
json.dump({"kind": "qemu", "name": "demo-vm", "memory_mib": int(memory), "accel": accel,
           "kernel": image + "/vmlinuz", "initrd": "initrd.img",
           "cmdline": open(image + "/cmdline").read().strip(),
           "disks": [{"name": "data", "image": "disks/data.qcow2"}],
           "agent": {"channel": "virtio-serial"},
           "channels": [{"name": "org.quiesce.test.0", "socket": "run/control.sock"}],
           # The guest's acpid powers it off at the ACPI button in well under a
           # second (tests/vm/initramfs/qt-power-off); 5 s, then a hard stop.
           "shutdown_timeout_s": 5, "boot_timeout_s": 300}, open(path, "w"), indent=2)
PY
}

guest() {
  local vm=$1 rc=0
  shift
  python3 "$repo/packaging/guest-run.py" "$vm/run/control.sock" "$*" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "guest: \`$*\` failed in the guest (exit $rc)" >&2
  fi
  return "$rc"
}
