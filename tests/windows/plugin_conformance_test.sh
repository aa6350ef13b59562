#!/bin/sh
# windows: plugin conformance (docs/windows.md "What is tested under wine"):
# quiesce-writer-check.exe under wine runs the C example plugin, built as a
# DLL, through every check of the conformance kit, then is given a DLL with
# no plugin entry points and a file that is no DLL at all, and must refuse
# each with exit status 2 and a message naming the path and the reason.
#   plugin_conformance_test.sh WRITER_CHECK_EXE PLUGIN_DLL NOT_A_PLUGIN_DLL WORK_DIR
# Paths are Linux paths; wine's Z: drive is /, so Windows sees Z:/<path>.
set -u
check_exe=$1
plugin_dll=$2
not_a_plugin_dll=$3
work_dir=$4

fail() {
  echo "FAIL: $*"
  exit 1
}

# Runs quiesce-writer-check with the plugin at $1 (a Linux path) and its
# options $2; the output lands in $work_dir/output, the exit status in $status.
run_check() {
  wine "$check_exe" --type plugin --options "{\"path\":\"Z:$1\",\"options\":$2}" \
    >"$work_dir/output" 2>&1
  status=$?
  cat "$work_dir/output"
}

rm -rf "$work_dir"
mkdir -p "$work_dir" || fail "cannot create $work_dir"

echo "== the example plugin (touch-file.dll): every check passes"
run_check "$plugin_dll" "{\"path\":\"Z:$work_dir/marker\"}"
[ "$status" -eq 0 ] || fail "quiesce-writer-check exited $status, expected 0"
grep -Eq '^[0-9]+ checks: [0-9]+ passed, 0 failed' "$work_dir/output" ||
  fail "no '... passed, 0 failed' summary"
grep -q 'FAIL' "$work_dir/output" && fail "a check failed"
# The plugin really ran: its last freeze left a marker, rewritten since.
grep -Eq '^(thawed|aborted) ' "$work_dir/marker" ||
  fail "the marker file $work_dir/marker does not say thawed or aborted"

echo "== the example plugin with a relative marker path: refused by the plugin"
run_check "$plugin_dll" '{"path":"marker"}'
[ "$status" -eq 2 ] || fail "exited $status, expected 2 (bad writer options)"
grep -q 'must be an absolute path' "$work_dir/output" || fail "no 'must be an absolute path'"

echo "== a DLL without the plugin entry points"
run_check "$not_a_plugin_dll" '{}'
[ "$status" -eq 2 ] || fail "exited $status, expected 2"
grep -q 'bad writer options: options.path' "$work_dir/output" || fail "the error does not name options.path"
grep -q 'quiesce_plugin_abi_version' "$work_dir/output" ||
  fail "the error does not name the missing entry point"

echo "== a file that is not a DLL"
printf 'not a DLL\n' >"$work_dir/not-a-dll.dll"
run_check "$work_dir/not-a-dll.dll" '{}'
[ "$status" -eq 2 ] || fail "exited $status, expected 2"
grep -q 'bad writer options: options.path' "$work_dir/output" || fail "the error does not name options.path"
grep -q 'cannot load' "$work_dir/output" || fail "the error does not say 'cannot load'"

rm -rf "$work_dir"
echo "PASS"
