#!/usr/bin/env bash
# tests/vm/make-payload.sh BUILD_DIR OUT_IMAGE: the second disk of a vm test
# run, an ext4 image labelled quiesce-payload holding the agent's .deb built
# from BUILD_DIR (packaging/build-packages.sh) and the same package with a
# newer version (the upgrade case), the test config and drop-in, and the
# guest runner (tests/vm/guest/payload/). The guest's
# quiesce-test-payload.service runs its install.sh at boot.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build_dir=$1
out=$2
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/debs"
"$repo/packaging/build-packages.sh" --deb-only "$build_dir" "$tree/debs" >&2
rm -f "$tree"/debs/quiesce-dev_*.deb "$tree"/debs/*.log
deb=$(ls "$tree"/debs/quiesce_*.deb)
version=$(dpkg-deb -f "$deb" Version)
# The newer package: the same files with a higher version, repacked rather
# than built again (dpkg sees a real upgrade: old prerm, new postinst with
# the old version, conffile handling).
unpacked=$tree/unpacked
dpkg-deb -R "$deb" "$unpacked"
sed -i "s/^Version: .*/Version: ${version}+test2/" "$unpacked/DEBIAN/control"
dpkg-deb -Zgzip --root-owner-group -b "$unpacked" "$tree/debs/quiesce_${version}+test2_amd64.deb" >/dev/null
rm -rf "$unpacked"
cp -a "$here/guest/payload/." "$tree/"
{
  echo "built $(date -u +%FT%TZ)"
  echo "commit $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
  sha256sum "$tree"/debs/* | sed "s|$tree/||"
} >"$tree/manifest"
rm -f "$out"
truncate -s 64M "$out"
mkfs.ext4 -q -F -L quiesce-payload -d "$tree" "$out"
