#!/usr/bin/env bash
# tests/vm/make-payload.sh BUILD_DIR OUT_IMAGE: the second disk of a vm test
# run, an ext4 image labelled quiesce-payload holding the agent's .deb built
# from BUILD_DIR (packaging/build-packages.sh) and the same package with a
# newer version (the upgrade case) and one newer still (the upgrade over a
# broken config), the test config and drop-in, the guest runner
# (tests/vm/guest/payload/), and quiesce-test-dbus-writer (a writer an
# application registers over D-Bus, built on the SDK helper). The guest's
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
# The newer packages: the same files with a higher version, repacked rather
# than built again (dpkg sees a real upgrade: old prerm, new postinst with
# the old version, conffile handling).
unpacked=$tree/unpacked
dpkg-deb -R "$deb" "$unpacked"
for newer in test2 test3; do
  sed -i "s/^Version: .*/Version: ${version}+${newer}/" "$unpacked/DEBIAN/control"
  dpkg-deb -Zgzip --root-owner-group -b "$unpacked" "$tree/debs/quiesce_${version}+${newer}_amd64.deb" >/dev/null
done
rm -rf "$unpacked"
strip -o "$tree/quiesce-test-dbus-writer" "$build_dir/bin/quiesce-test-dbus-writer"
cp -a "$here/guest/payload/." "$tree/"
{
  echo "built $(date -u +%FT%TZ)"
  echo "commit $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
  sha256sum "$tree"/debs/* | sed "s|$tree/||"
} >"$tree/manifest"
rm -f "$out"
truncate -s 64M "$out"
mkfs.ext4 -q -F -L quiesce-payload -d "$tree" "$out"
