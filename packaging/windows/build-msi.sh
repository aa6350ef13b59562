#!/usr/bin/env bash
# Builds the Windows agent's MSI (docs/windows.md) with msitools:
#   [STRIP=x86_64-w64-mingw32-strip] packaging/windows/build-msi.sh OUT.msi VERSION AGENT_EXE PROVIDER_DLL CONFIG_JSON
# wixl compiles quiesce-agent.wxs; then msibuild adds, in SQL, what wixl
# 0.101 cannot write:
#  - the default config's component: Permanent (a removal keeps it) and
#    NeverOverwrite (an upgrade keeps the admin's edits);
#  - the VSS provider's registration: deferred custom actions, as
#    LocalSystem, calling QuiesceMsiRegister in the installed
#    quiesce-vss-provider.dll after InstallFiles, and QuiesceMsiUnregister
#    before RemoveFiles at removal;
#  - the access lists of C:\ProgramData\Quiesce and its hooks.d
#    (LockPermissions): SYSTEM and the Administrators full control, Users
#    read and execute. ProgramData's own list lets Users create files in
#    new folders, which the hooks writer's trust check (rightly) refuses.
set -euo pipefail

if [ $# -ne 5 ]; then
  echo "usage: $0 OUT.msi VERSION AGENT_EXE PROVIDER_DLL CONFIG_JSON" >&2
  exit 2
fi
out=$1 version=$2 agent=$3 provider=$4 config=$5
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for file in "$agent" "$provider" "$config"; do
  [ -f "$file" ] || { echo "$0: $file: no such file" >&2; exit 1; }
done

# wixl resolves File/@Source against the current directory: stage the
# three files under the names the package gives them.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$agent" "$stage/quiesce-agent.exe"
cp "$provider" "$stage/quiesce-vss-provider.dll"
cp "$config" "$stage/agent.json"
# The build keeps debug information (RelWithDebInfo); the package does not
# need it: STRIP names the cross strip (CMake passes CMAKE_STRIP).
if [ -n "${STRIP:-}" ]; then
  "$STRIP" --strip-debug "$stage/quiesce-agent.exe" "$stage/quiesce-vss-provider.dll"
fi
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
rm -f "$out_abs"
(cd "$stage" && wixl -a x64 -D Version="$version" -o "$out_abs" "$here/quiesce-agent.wxs")

# Component attributes: 256 (64-bit) + 16 (Permanent) + 128 (NeverOverwrite).
# Custom action type 17 (a DLL function in an installed file) + 1024
# (deferred) + 2048 (no impersonation); +64 (ignore the result) for the
# removal, so a provider VSS already forgot cannot block an uninstall.
msibuild "$out_abs" \
  -q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'DefaultConfig'" \
  -q "INSERT INTO \`CustomAction\` (\`Action\`, \`Type\`, \`Source\`, \`Target\`) VALUES ('RegisterProvider', 3089, 'ProviderDll', 'QuiesceMsiRegister')" \
  -q "INSERT INTO \`CustomAction\` (\`Action\`, \`Type\`, \`Source\`, \`Target\`) VALUES ('UnregisterProvider', 3153, 'ProviderDll', 'QuiesceMsiUnregister')" \
  -q "INSERT INTO \`InstallExecuteSequence\` (\`Action\`, \`Condition\`, \`Sequence\`) VALUES ('UnregisterProvider', 'REMOVE=\"ALL\"', 3450)" \
  -q "INSERT INTO \`InstallExecuteSequence\` (\`Action\`, \`Condition\`, \`Sequence\`) VALUES ('RegisterProvider', 'NOT REMOVE=\"ALL\"', 4050)" \
  -q "INSERT INTO \`CreateFolder\` (\`Directory_\`, \`Component_\`) VALUES ('DATADIR', 'DefaultConfig')" \
  -q "CREATE TABLE \`LockPermissions\` (\`LockObject\` CHAR(72) NOT NULL, \`Table\` CHAR(32) NOT NULL, \`Domain\` CHAR(255), \`User\` CHAR(255) NOT NULL, \`Permission\` LONG PRIMARY KEY \`LockObject\`, \`Table\`, \`Domain\`, \`User\`)"
# GENERIC_ALL = 268435456; GENERIC_READ | GENERIC_EXECUTE = 0xA0000000, as
# the signed LONG the table holds.
for folder in DATADIR HOOKSDIR; do
  msibuild "$out_abs" \
    -q "INSERT INTO \`LockPermissions\` (\`LockObject\`, \`Table\`, \`User\`, \`Permission\`) VALUES ('$folder', 'CreateFolder', 'SYSTEM', 268435456)" \
    -q "INSERT INTO \`LockPermissions\` (\`LockObject\`, \`Table\`, \`User\`, \`Permission\`) VALUES ('$folder', 'CreateFolder', 'Administrators', 268435456)" \
    -q "INSERT INTO \`LockPermissions\` (\`LockObject\`, \`Table\`, \`User\`, \`Permission\`) VALUES ('$folder', 'CreateFolder', 'Users', -1610612736)"
done
echo "built $out"
