#!/usr/bin/env bash
# packaging/build-packages.sh [--deb-only] BUILD_DIR OUT_DIR [VERSION]
# The .debs (quiesce, quiesce-dev) and the .rpms (quiesce, quiesce-devel) of
# the CMake tree BUILD_DIR, as already built, into OUT_DIR, then lintian on
# the .debs. Both package the tree with `cmake --install` (debian/rules'
# QUIESCE_PREBUILT, the spec's quiesce_prebuilt): compiling it again with the
# distributions' flags would cost minutes of CI for the same code. A
# from-scratch build is `dpkg-buildpackage -b` in the repo (docs/packaging.md).
# VERSION (e.g. 0.1.0+test2) overrides debian/changelog's, for upgrade tests.
# --deb-only: the quiesce .debs alone, no .rpm, no lintian (the vm payload).
# Used by packaging/dev.sh package, the e2e packaging test and the vm payload.
set -euo pipefail
deb_only=0
if [ "${1:-}" = --deb-only ]; then
  deb_only=1
  shift
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=$(cd "$1" && pwd)
out=$2
version=${3:-}

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
base_version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
version=${version:-$base_version}

# dpkg-buildpackage writes beside the tree it builds: a copy of debian/
# alone, in the work dir, so nothing lands beside the repo.
src=$work/quiesce-$version
mkdir -p "$src"
cp -a "$repo/debian" "$src/"
if [ "$version" != "$base_version" ]; then
  sed -i "1s/(.*)/($version)/" "$src/debian/changelog"
fi
start=$(date +%s.%N)
# -d: the build dependencies were needed by BUILD_DIR's configure, already done.
if ! (cd "$src" && QUIESCE_PREBUILT=$build_dir DEB_BUILD_OPTIONS=noddebs \
        dpkg-buildpackage -b -us -uc -d >"$out/deb-build.log" 2>&1); then
  tail -40 "$out/deb-build.log" >&2
  echo "build-packages.sh: dpkg-buildpackage failed (log: $out/deb-build.log)" >&2
  exit 1
fi
mv "$work"/*.deb "$out/"
deb_done=$(date +%s.%N)
if [ "$deb_only" = 1 ]; then
  awk -v s="$start" -v d="$deb_done" 'BEGIN { printf "build-packages.sh: deb %.1f s\n", d - s }'
  exit 0
fi

if ! rpmbuild -bb --nodeps --define "_topdir $work/rpm" --define "_rpmdir $work/rpm/RPMS" \
        --define "quiesce_prebuilt $build_dir" "$repo/packaging/rpm/quiesce.spec" \
        >"$out/rpm-build.log" 2>&1; then
  tail -40 "$out/rpm-build.log" >&2
  echo "build-packages.sh: rpmbuild failed (log: $out/rpm-build.log)" >&2
  exit 1
fi
find "$work/rpm/RPMS" -name '*.rpm' -exec mv {} "$out/" \;
rpm_done=$(date +%s.%N)

# Errors and warnings fail; what is overridden, and why, is in
# debian/*.lintian-overrides.
lintian_status=0
lintian --fail-on error,warning "$out"/*.deb >"$out/lintian.log" 2>&1 || lintian_status=$?
grep -v 'running with root privileges' "$out/lintian.log" || true
if [ "$lintian_status" != 0 ]; then
  echo "build-packages.sh: lintian found errors or warnings (above)" >&2
  exit 1
fi
end=$(date +%s.%N)
awk -v s="$start" -v d="$deb_done" -v r="$rpm_done" -v e="$end" \
  'BEGIN { printf "build-packages.sh: deb %.1f s, rpm %.1f s, lintian %.1f s\n", d - s, r - d, e - r }'
ls -1 "$out"/*.deb "$out"/*.rpm
