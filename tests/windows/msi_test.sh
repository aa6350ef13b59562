#!/usr/bin/env bash
# The MSI (packaging/windows): its tables as msiinfo reads them, then an
# install with wine's msiexec. Wine has no VSS coordinator (CLSID
# VSSCoordinator is not registered), so the provider's registration fails,
# and with it the install, which must roll back: the program files are
# gone again and the provider's COM class is not left registered. Only the
# config stays, as its component is Permanent (docs/windows.md).
#   msi_test.sh MSI   (WINEPREFIX set by CTest; wine and msitools on PATH)
set -euo pipefail
msi=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

prefix=${WINEPREFIX:?WINEPREFIX must name the wine prefix}
program_dir="$prefix/drive_c/Program Files/Quiesce"
data_dir="$prefix/drive_c/ProgramData/Quiesce"
log=$(mktemp)
cleanup() {
  # What a failed run may leave in the shared prefix: the kept config and
  # anything a half-done install put down.
  rm -rf "$data_dir" "$program_dir" "$log"
}
trap cleanup EXIT

# --- the tables -------------------------------------------------------------
# msiinfo ends its lines with CR LF.
export_table() { msiinfo export "$msi" "$1" | tr -d '\r'; }
tables=$(msiinfo tables "$msi" | tr -d '\r')
for table in File Component CreateFolder ServiceInstall ServiceControl CustomAction \
             InstallExecuteSequence LockPermissions; do
  grep -qx "$table" <<<"$tables" || fail "no $table table"
done
pass "tables"

files=$(export_table File)
for name in quiesce-agent.exe quiesce-vss-provider.dll agent.json; do
  grep -q $'\t'"$name"$'\t' <<<"$files" || fail "no file $name in the File table"
done
pass "files"

# quiesce-agent: own process (16), automatic (2), LocalSystem, the config's path.
service=$(export_table ServiceInstall | grep $'^AgentService\t') || fail "no ServiceInstall row"
field() { cut -f"$1" <<<"$service"; }  # empty columns kept (read would merge tabs)
name=$(field 2) type=$(field 4) start=$(field 5) account=$(field 9) arguments=$(field 11)
component=$(field 12)
[ "$name" = quiesce-agent ] || fail "service name $name"
[ "$type" = 16 ] && [ "$start" = 2 ] || fail "service type $type start $start"
[ "$account" = LocalSystem ] || fail "service account $account"
[[ "$arguments" == *'[CommonAppDataFolder]Quiesce\agent.json'* ]] || fail "service arguments $arguments"
[ "$component" = AgentProgram ] || fail "service component $component"
# Start at install (1), stop at install and removal (2 + 32), delete at removal (128).
control=$(export_table ServiceControl | grep $'^AgentServiceControl\t') || fail "no ServiceControl row"
[ "$(cut -f3 <<<"$control")" = 163 ] || fail "service control events: $control"
pass "service entry"

# The config: 64-bit + Permanent + NeverOverwrite = 400.
config=$(export_table Component | grep $'^DefaultConfig\t') || fail "no DefaultConfig component"
[ "$(cut -f4 <<<"$config")" = 400 ] || fail "config component attributes: $config"
pass "config is permanent and never overwritten"

actions=$(export_table CustomAction)
grep -q $'^RegisterProvider\t3089\tProviderDll\tQuiesceMsiRegister' <<<"$actions" || fail "no RegisterProvider action"
grep -q $'^UnregisterProvider\t3153\tProviderDll\tQuiesceMsiUnregister' <<<"$actions" || fail "no UnregisterProvider action"
sequence=$(export_table InstallExecuteSequence)
install_files=$(grep $'^InstallFiles\t' <<<"$sequence" | cut -f3)
register=$(grep $'^RegisterProvider\t' <<<"$sequence" | cut -f3)
[ -n "$register" ] && [ "$register" -gt "$install_files" ] || fail "RegisterProvider not after InstallFiles"
pass "provider registration"

grep -q $'^HOOKSDIR\tCreateFolder\t\tUsers\t-1610612736' <<<"$(export_table LockPermissions)" \
  || fail "hooks.d is not read-only for Users"
pass "hooks.d access list"

# --- wine's msiexec ---------------------------------------------------------
status=0
wine msiexec /i "$(winepath -w "$msi")" /qn /l*v "$(winepath -w "$log")" || status=$?
echo "wine msiexec /i: exit $status"
if [ "$status" -eq 0 ]; then
  fail "the install succeeded under wine: VSS is there now? Check the provider, then make this test expect a full install"
fi
grep -q "RegisterProvider" "$log" || fail "the install log does not reach RegisterProvider"
[ ! -e "$program_dir/quiesce-agent.exe" ] || fail "rollback left $program_dir/quiesce-agent.exe"
[ ! -e "$program_dir/quiesce-vss-provider.dll" ] || fail "rollback left the provider DLL"
if wine reg query 'HKLM\Software\Classes\CLSID\{ed09ee25-2535-46be-9b67-65cb9dbfdaac}' >/dev/null 2>&1; then
  fail "the provider's COM class stayed registered after the failed registration"
fi
pass "under wine the provider cannot register (no VSS): the install failed and rolled back"
