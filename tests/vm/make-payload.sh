#!/usr/bin/env bash
# tests/vm/make-payload.sh BUILD_DIR OUT_IMAGE: the second disk of a vm test
# run, an ext4 image labelled quiesce-payload holding the agent build
# (stripped), the repo's packaging/systemd/quiesce-agent.service, the test
# config and drop-in, and the guest runner (tests/vm/guest/payload/). The
# guest's quiesce-test-payload.service runs its install.sh at boot.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build_dir=$1
out=$2
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/bin"
for b in quiesce-agent quiesce-freeze-holder quiescectl; do
  strip --strip-debug -o "$tree/bin/$b" "$build_dir/bin/$b"
done
cp "$repo/packaging/systemd/quiesce-agent.service" "$tree/"
cp -a "$here/guest/payload/." "$tree/"
{
  echo "built $(date -u +%FT%TZ)"
  echo "commit $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
  sha256sum "$tree"/bin/* | sed "s|$tree/||"
} >"$tree/manifest"
rm -f "$out"
truncate -s 64M "$out"
mkfs.ext4 -q -F -L quiesce-payload -d "$tree" "$out"
