#!/usr/bin/env bash
# One entry point for developers and CI (see README.md):
#   packaging/dev.sh demo   install what is missing, build, run the main job
#   packaging/dev.sh demo vm  as root: the main job on a real VM: QEMU (TCG) run by quiesce-host, a
#                           SQLite workload in the guest, a production and a memory checkpoint
#                           applied (packaging/demo-vm.sh, ~2-3 min)
#   packaging/dev.sh test   install what is missing, build, run every test (the vm label last:
#                           Debian 12 and initramfs guests under QEMU, ~10 min, +2-6 min the first time
#                           to build its cached image; docs/testing-in-a-guest.md)
#   packaging/dev.sh vm     as root: only the vm label
#   packaging/dev.sh asan   build the unit tests with ASan+UBSan and run them
#   packaging/dev.sh idle-builds [windows]  build the ASan and libFuzzer trees (and the
#                           Windows tree) at idle CPU and I/O priority (.ci/run runs it beside
#                           the test command)
#   packaging/dev.sh fuzz [SECONDS]  build the libFuzzer harnesses (clang, ASan+UBSan) in
#                           build-fuzz and run each for SECONDS (default 300; CI runs 15)
#   packaging/dev.sh bench [ARGS]  as root: hold window vs raw FIFREEZE and qemu-ga,
#                           scaling, footprint (docs/performance.md; ARGS go to quiesce_bench; `bench databases`:
#                           the four database servers under write load)
#   packaging/dev.sh bench vm [RUNS]  as root: a real VM's checkpoints: the pause of a standard
#                           checkpoint with memory against RAM size and dirty memory, the state
#                           file, the guest's hold in a production one (packaging/bench-vm.sh)
#   packaging/dev.sh package  build, then the .deb packages and the .rpm into BUILD_DIR/packages
#                           from that build tree (docs/packaging.md), lintian on the .debs
#   packaging/dev.sh windows  cross-build the Windows agent with mingw-w64 in WIN_BUILD_DIR
#                           (default build-win) and run the windows label under wine
#                           (docs/windows.md); `windows-test`: only the label, on that tree
#   packaging/dev.sh deps | windows-deps | build
# Environment: BUILD_DIR (default build), QUIESCE_WERROR=ON to fail on warnings,
# JOBS (default: number of cores).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$repo/build}
jobs=${JOBS:-$(nproc)}

# Debian 12 packages the build and the tests need.
packages=(
  build-essential cmake pkg-config ccache git
  libboost-dev nlohmann-json3-dev libspdlog-dev doctest-dev libsystemd-dev
  curl util-linux e2fsprogs xfsprogs btrfs-progs python3
  # the database writers and their tests (real servers)
  libsqlite3-dev sqlite3 postgresql libpq-dev redis-server libhiredis-dev mariadb-server libmariadb-dev
  # the benchmark's peer and its chart
  qemu-guest-agent gnuplot-nox
  # the qmp snapshot backend's test, and the vm tests' guest (tests/vm/build-debian-image.sh)
  qemu-system-x86 qemu-utils debootstrap
  # the initramfs guest (tests/vm/build-initramfs-guest.sh): its shell and tools, and what it
  # copies in besides qemu-guest-agent and sqlite3 above
  busybox-static bash coreutils socat
  # the libvirt vm test: a private libvirtd with the qemu driver, and virsh
  # (tests/vm/libvirtd-in-namespace.sh)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  # the D-Bus tests: a private dbus-daemon per test, gdbus as the unprivileged caller, the
  # Python example of docs/dbus.md
  dbus-daemon libglib2.0-bin python3-dbus python3-gi
  # the packages (docs/packaging.md) and their checks: man -l renders the pages
  debhelper lintian rpm man-db
  # the libFuzzer harnesses (tests/fuzz): clang and its fuzzer runtime
  clang-14 libclang-rt-14-dev
)

# Only `dev.sh windows` installs these (the Windows agent, docs/windows.md):
# the mingw-w64 cross compiler (posix threads variant: std::thread), wine to
# run its tests, wixl (msitools) for the MSI. Wine alone is minutes of
# install; .ci/run installs them up front (`windows-deps`: apt must not run
# beside the test command, whose VM image build uses apt-get download).
windows_packages=(
  g++-mingw-w64-x86-64-posix wine wine64 wixl msitools ninja-build
)

say() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "dev.sh: installing packages needs root (run as root, or install sudo)" >&2
    exit 1
  fi
}

deps() {
  local missing=()
  for p in "${packages[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

build() {
  say "building in $build_dir"
  cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
  local started=$SECONDS
  cmake --build "$build_dir" -j "$jobs"
  say "build took $((SECONDS - started)) s"
}

# The vm label's guest images do not depend on the agent build (the tests
# bring the agent in on a payload), so as root both are built, or found in
# their cache, in the background while the tree compiles: a cold cache costs
# several minutes of debootstrap and downloads that would otherwise run
# after the build. Their output: $build_dir/vm-images.log.
vm_images_pid=
start_vm_images() {
  [ "$(id -u)" -eq 0 ] || return 0
  mkdir -p "$build_dir"
  say "building the vm guest images in the background (log: $build_dir/vm-images.log)"
  ( "$repo/tests/vm/build-debian-image.sh" && "$repo/tests/vm/build-initramfs-guest.sh" ) \
    >"$build_dir/vm-images.log" 2>&1 &
  vm_images_pid=$!
}

# Waits for start_vm_images before any test runs: the timing checks of the
# root and e2e labels must not share the cores with debootstrap.
wait_vm_images() {
  [ -n "$vm_images_pid" ] || return 0
  if ! wait "$vm_images_pid"; then
    tail -n 40 "$build_dir/vm-images.log" >&2
    echo "dev.sh: building the vm guest images failed (log: $build_dir/vm-images.log)" >&2
    exit 1
  fi
  say "vm guest images ready: $(tail -n 2 "$build_dir/vm-images.log" | tr '\n' ' ')"
}

run_tests() {
  say "running all tests (labels: unit, root, db, e2e, then vm)"
  if [ "$(id -u)" -ne 0 ]; then
    echo "not root: the tests labelled 'root' and 'vm' will be skipped"
  fi
  # The guest runs alone afterwards: under TCG it takes both cores, and the
  # timing checks of the other labels would feel it.
  ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 300 -LE '^vm$' ||
    { failed_checks "$build_dir"; return 1; }
  ctest --test-dir "$build_dir" --output-on-failure -L '^vm$' || { failed_checks "$build_dir"; return 1; }
}

# A long test log is often seen only in part (CI keeps its head and tail):
# after a failing ctest, each failed doctest check is printed once more, last,
# under the name of its test case.
failed_checks() {
  local log="$1/Testing/Temporary/LastTest.log"
  [ -f "$log" ] || return 0
  say "failed checks (all output: $log)"
  awk '/TEST CASE:/ { test_case = $0 }
       /: (ERROR|FATAL ERROR): / { print "--"; print test_case; left = 6 }
       left > 0 { print; left-- }' "$log" | head -n 120
}

# The vm label: builds only what it runs; one guest boot, cases in sequence.
vm() {
  say "building the vm tests in $build_dir"
  cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
  cmake --build "$build_dir" -j "$jobs" --target quiesce_vm_tests quiesce-agent quiescectl quiesce-freeze-holder \
    quiesce-host quiesce-writer-check
  say "running the vm label (image: tests/vm/build-debian-image.sh, cached in ${QUIESCE_VM_CACHE:-/var/cache/quiesce-vm})"
  ctest --test-dir "$build_dir" --output-on-failure -L '^vm$' --verbose || { failed_checks "$build_dir"; return 1; }
}

asan_dir=${ASAN_BUILD_DIR:-$repo/build-asan}
asan_build() {
  say "building the unit tests with ASan+UBSan in $asan_dir"
  cmake -S "$repo" -B "$asan_dir" -DCMAKE_BUILD_TYPE=Debug -DQUIESCE_SANITIZE=address,undefined \
    -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
  cmake --build "$asan_dir" -j "$jobs" --target quiesce_unit_tests
}

asan() {
  local dir=$asan_dir
  asan_build
  say "unit tests with ASan+UBSan in $dir"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$dir" -L unit --output-on-failure -j "$jobs" --timeout 300
}

# Builds only the harnesses (each compiles the few sources it fuzzes) with
# clang, then runs each for $1 seconds on a copy of its seed corpus in
# tests/fuzz/corpus/<name>. A crash stops with its input in
# $dir/crashes/<name>/: fix it and add the input to the seed corpus.
fuzz_dir=${FUZZ_BUILD_DIR:-$repo/build-fuzz}
fuzz_build() {
  say "building the libFuzzer harnesses in $fuzz_dir"
  CC=clang-14 CXX=clang++-14 cmake -S "$repo" -B "$fuzz_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUIESCE_FUZZ=ON -DQUIESCE_BUILD_TESTS=OFF -DQUIESCE_SANITIZE=fuzzer-no-link,address,undefined \
    -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
  cmake --build "$fuzz_dir" -j "$jobs" --target quiesce_fuzzers
}

fuzz() {
  local seconds=${1:-300}
  local dir=$fuzz_dir
  fuzz_build
  say "libFuzzer harnesses in $dir, ${seconds}s each"
  local name
  for name in qga_framing config untrusted_json api_routes http_server; do
    local work="$dir/corpus/$name" crashes="$dir/crashes/$name"
    mkdir -p "$work" "$crashes"
    cp -n "$repo/tests/fuzz/corpus/$name/"* "$work/"
    say "fuzz_$name for ${seconds}s"
    local rc=0
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "$dir/bin/fuzz_$name" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$crashes/" "$work" >"$dir/fuzz_$name.log" 2>&1 || rc=$?
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec)' "$dir/fuzz_$name.log" || true
    if [ "$rc" -ne 0 ]; then
      tail -n 60 "$dir/fuzz_$name.log" >&2
      echo "dev.sh fuzz: fuzz_$name failed (exit $rc); the input is in $crashes" >&2
      exit 1
    fi
  done
}

# Builds only what the bench runs, then runs it; results in $build_dir/bench.
bench() {
  if [ "${1:-}" = vm ]; then
    shift
    say "building quiesce-host and the agent in $build_dir"
    cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
    cmake --build "$build_dir" -j "$jobs" --target quiesce-host quiesce-agent quiesce-freeze-holder quiescectl
    exec "$repo/packaging/bench-vm.sh" "$build_dir" "$@"
  fi
  say "building the bench in $build_dir"
  cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
  cmake --build "$build_dir" -j "$jobs" --target quiesce_bench quiesce-agent quiesce-freeze-holder
  if [ "$(id -u)" -ne 0 ]; then
    echo "dev.sh bench: needs root (loop devices, mount, FIFREEZE)" >&2
    exit 1
  fi
  say "running quiesce_bench $*"
  "$build_dir/bin/quiesce_bench" --out "$build_dir/bench" "$@"
}

# The .debs and the .rpms of the tree in $build_dir, into $build_dir/packages.
package() {
  say "packaging $build_dir into $build_dir/packages"
  rm -rf "$build_dir/packages"
  "$repo/packaging/build-packages.sh" "$build_dir" "$build_dir/packages"
}

demo() {
  if [ "${1:-}" = vm ]; then
    exec "$repo/packaging/demo-vm.sh" "$build_dir"
  fi
  exec "$repo/packaging/demo.sh" "$build_dir"
}

# The trees only .ci/run uses after the test command (ASan, libFuzzer), built
# at idle priority (SCHED_IDLE, idle I/O class) while that command runs:
# they take only the cycles its build and tests leave, above all the gaps of
# the vm label's guests, and the tests' timing never competes with them.
# The later `asan` and `fuzz` steps then find their trees built. Output:
# $build_dir/idle-builds.log.
idle_builds() {
  mkdir -p "$build_dir"
  say "building the ASan and libFuzzer trees${1:+ and the $1 tree} at idle priority (log: $build_dir/idle-builds.log)"
  local status=0
  ( asan_build && fuzz_build && if [ "${1:-}" = windows ]; then windows_build; fi ) \
    >"$build_dir/idle-builds.log" 2>&1 || status=$?
  [ "$status" -eq 0 ] || tail -n 40 "$build_dir/idle-builds.log" >&2
  return "$status"
}

# The Windows agent (docs/windows.md): cross-built in its own tree, never
# mixed with the Linux one, and its windows label run under wine. The wine
# prefix lives in that tree and is created once (wineboot, ~15 s). Each part
# prints its wall time.
win_dir=${WIN_BUILD_DIR:-$repo/build-win}
windows_build() {
  local started=$SECONDS
  say "cross-building the Windows agent in $win_dir"
  cmake -S "$repo" -B "$win_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_TOOLCHAIN_FILE="$repo/cmake/mingw-w64-x86_64.cmake" \
    -DQUIESCE_WERROR="${QUIESCE_WERROR:-OFF}" >/dev/null
  cmake --build "$win_dir" -j "$jobs"
  say "windows build took $((SECONDS - started)) s"
}
windows_test() {
  local started=$SECONDS
  export WINEPREFIX="$win_dir/wine-prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
  if [ ! -f "$WINEPREFIX/system.reg" ]; then
    say "creating the wine prefix $WINEPREFIX"
    wineboot --init >/dev/null 2>&1
    wineserver --wait
  fi
  say "running the windows label under wine"
  local status=0
  (cd "$win_dir" && ctest -L windows --output-on-failure) || status=$?
  say "windows label took $((SECONDS - started)) s"
  return "$status"
}

case "${1:-}" in
  deps) deps ;;
  build) deps; build ;;
  test) deps; start_vm_images; build; wait_vm_images; run_tests ;;
  vm) deps; vm ;;
  # `idle-builds windows`: the Windows tree too (its packages installed first).
  idle-builds) shift
    if [ "${1:-}" = windows ]; then deps "${windows_packages[@]}"; else deps; fi
    exec chrt --idle 0 ionice -c 3 "$0" idle-builds-now "$@" ;;
  idle-builds-now) shift; idle_builds "$@" ;;
  asan) deps; asan ;;
  fuzz) shift; deps; fuzz "$@" ;;
  demo) shift; deps; build; demo "$@" ;;
  bench) shift; deps; bench "$@" ;;
  package) deps; build; package ;;
  windows) deps "${windows_packages[@]}"; windows_build; windows_test ;;
  windows-test) deps "${windows_packages[@]}"; windows_test ;;
  windows-deps) deps "${windows_packages[@]}" ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 2 ;;
esac
