#!/usr/bin/env bash
# The main job until the host bridge lands: starts the real agent with a demo
# config on a private socket and drives one whole session with quiescectl,
# then the same session by hand with curl. As root it also freezes two
# loop-mounted ext4 filesystems made for the demo (never anything else).
# Usage: packaging/demo.sh BUILD_DIR
set -euo pipefail

build_dir=${1:?usage: demo.sh BUILD_DIR}
bin=$build_dir/bin
work=$(mktemp -d /tmp/quiesce-demo.XXXXXX)
agent_pid=
mounts=()

cleanup() {
  set +e
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  for m in "${mounts[@]}"; do
    fsfreeze -u "$m" 2>/dev/null
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

writers='[
  {"type": "delay", "name": "app", "options": {"delays_ms": {"prepare": 5, "freeze": 20}}},
  {"type": "delay", "name": "db", "level": "database", "options": {"delays_ms": {"prepare": 30, "freeze": 10}}}'
if [ "$(id -u)" -eq 0 ]; then
  step "making two loop-mounted ext4 filesystems for the fsfreeze writer"
  for name in data1 data2; do
    truncate -s 64M "$work/$name.img"
    mkfs.ext4 -q -F "$work/$name.img"
    mkdir -p "$work/mnt/$name"
    mount -o loop "$work/$name.img" "$work/mnt/$name"
    mounts+=("$work/mnt/$name")
    dd if=/dev/urandom of="$work/mnt/$name/fresh-data" bs=1M count=8 status=none
  done
  writers+=",
  {\"type\": \"fsfreeze\", \"name\": \"fs\", \"options\": {\"mounts\": [\"$work/mnt/data1\", \"$work/mnt/data2\"]}}"
else
  step "not root: running with the delay writers only (root adds fsfreeze on two loop mounts)"
fi
writers+='
]'

cat >"$work/agent.json" <<JSON
{
  "listen": {"unix": {"path": "$work/agent.sock"}, "vsock": false},
  "state_dir": "$work/state",
  "run_dir": "$work/run",
  "log": {"target": "file", "file": "$work/agent.log"},
  "writers": $writers
}
JSON
step "config ($work/agent.json)"
cat "$work/agent.json"

step "starting quiesce-agent"
"$bin/quiesce-agent" --config "$work/agent.json" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$work/agent.sock" ] && break; sleep 0.05; done
[ -S "$work/agent.sock" ] || { echo "the agent did not start; its log:"; cat "$work/agent.log"; exit 1; }

ctl() { "$bin/quiescectl" --socket "$work/agent.sock" "$@"; }
step "quiescectl status"; ctl status
step "quiescectl writers"; ctl writers
step "quiescectl run (create -> freeze -> thaw -> complete)"; ctl run

step "the same with curl over the Unix socket"
api() { curl -sS --unix-socket "$work/agent.sock" -X "$1" "http://localhost$2" ${3:+-d "$3"}; echo; }
id=$(curl -sS --unix-socket "$work/agent.sock" -X POST http://localhost/v1/sessions \
      -d '{"checkpoint_id": "demo"}' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
echo "session $id"
api POST "/v1/sessions/$id/freeze" | head -c 300; echo " ..."
api POST "/v1/sessions/$id/thaw" | grep -o '"verdict":{[^}]*}'
api POST "/v1/sessions/$id/complete" '{"snapshot_id": "demo-snap"}' | grep -o '"state":"[a-z]*"' | head -1

step "agent log"
cat "$work/agent.log"
step "done"
