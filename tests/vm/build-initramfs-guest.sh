#!/usr/bin/env bash
# Builds (or reuses) the initramfs guest the qga vm tests boot: Debian's
# kernel from its package, and an initramfs with busybox, the modules the
# guest needs, bash (the control runner), sqlite3, Debian's qemu-ga and the
# libraries they load. No systemd, no disk root: /init (tests/vm/initramfs/
# init) runs from the initramfs itself, so a boot is a few seconds under TCG.
#
#   tests/vm/build-initramfs-guest.sh            print the image directory (build it if missing)
#   tests/vm/build-initramfs-guest.sh --key      print the cache key only
#   tests/vm/build-initramfs-guest.sh --rebuild  build again even if cached
#
# The image holds no agent: each run appends a second cpio archive with the
# agent build, its config and what to start (tests/vm/make-initramfs-payload.sh);
# the kernel unpacks concatenated archives one over the other.
#
# Cache: $QUIESCE_VM_CACHE (default /var/cache/quiesce-vm)/initramfs-<key>/
# holding vmlinuz, initrd.img (gzip cpio), cmdline (the kernel command line
# the image expects), files (every path in the archive, so a payload leaves
# out libraries the image already has), build.log, manifest. The key hashes
# this script, the files it copies, the kernel package's version and the
# versions of the packages whose binaries it takes from this host. Built in
# a temp dir beside the entry and renamed into place, under a lock.
# The kernel .deb is kept in <cache>/debs/. Needs root (apt-get download
# writes to the cache). Progress on stderr; stdout is the path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${QUIESCE_VM_CACHE:-/var/cache/quiesce-vm}
kernel_meta=linux-image-amd64

# Host packages whose binaries (and, through ldd, libraries) go in:
# busybox-static for the shell and tools, bash for the control runner (it
# needs $EPOCHREALTIME), coreutils' timeout (the runner's `timeout -k`),
# sqlite3 for the libvirt test's workload, qemu-guest-agent for the
# side-by-side comparison, util-linux's fsfreeze for the tests' rescue,
# socat for a qga client on AF_VSOCK inside the guest (VSOCK-CONNECT).
host_packages=(busybox-static bash coreutils sqlite3 qemu-guest-agent util-linux socat)
host_binaries=(/bin/bash /usr/bin/timeout /usr/bin/sqlite3 /usr/sbin/qemu-ga /usr/sbin/fsfreeze /usr/bin/socat)

# Modules loaded at boot, in this order after their dependencies: the virtio
# devices (PCI transport, the data disk, the serial ports), ext4 (with
# metadata_csum it needs crc32c, which ext4 names only as a soft dependency),
# vsock with its loopback transport (CID 1 in the guest: the host here has no
# vhost-vsock), the block layers a writer may meet (loop, device mapper), and
# the ACPI power button with its event device, for acpid (a clean power off).
modules=(virtio_pci virtio_blk virtio_console crc32c_generic ext4 vsock vmw_vsock_virtio_transport_common
         vsock_loopback loop dm_mod button evdev)

# The kernel command line the image's /init expects; the fixture and the
# libvirt domain both take it from <image>/cmdline. Drivers for emulated
# hardware the tests never use only cost boot time under TCG.
cmdline="console=ttyS0 panic=-1 mitigations=off quiet loglevel=4 rdinit=/init \
modprobe.blacklist=floppy,pcspkr,ata_piix,ata_generic,serio_raw"

kernel_package() {
  apt-cache depends "$kernel_meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'
}

key() {
  local kpkg
  kpkg=$(kernel_package)
  {
    cat "$0"
    (cd "$here" && sha256sum initramfs/* guest/payload/quiesce-test-runner)
    echo "$kpkg $(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')"
    dpkg-query -W "${host_packages[@]}"
    printf '%s\n' "${modules[@]}" "$cmdline"
  } | sha256sum | cut -c1-16
}

case "${1:-}" in
  --key) key; exit 0 ;;
  --rebuild) rebuild=1 ;;
  "") rebuild=0 ;;
  *) sed -n '2,25p' "$0" >&2; exit 2 ;;
esac

for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' ||
    { echo "build-initramfs-guest.sh: package $p is missing (packaging/dev.sh deps)" >&2; exit 1; }
done
kpkg=$(kernel_package)
if [ -z "$kpkg" ]; then
  echo "build-initramfs-guest.sh: apt-cache knows no $kernel_meta (apt-get update?)" >&2
  exit 1
fi

k=$(key)
dest=$cache_root/initramfs-$k
if [ "$rebuild" = 0 ] && [ -f "$dest/manifest" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache_root/debs"
# One builder at a time per cache; a second one waits, then finds the image.
exec 9>"$cache_root/.lock-initramfs"
flock 9
if [ "$rebuild" = 0 ] && [ -f "$dest/manifest" ]; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d "$cache_root/.build-initramfs-$k.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
log=$work/build.log
started=$(date +%s)
step() { echo "  [$(($(date +%s) - started)) s] $*" >&2; }
echo "build-initramfs-guest.sh: building initramfs guest $k in $work (log: $log)" >&2

kversion=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
deb=$(ls "$cache_root/debs/${kpkg}_${kversion//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
  step "apt-get download $kpkg ($kversion)"
  # apt's sandbox user cannot write to a root-owned cache; download as root.
  (cd "$cache_root/debs" && apt-get download -o APT::Sandbox::User=root "$kpkg" >>"$log" 2>&1) || {
    tail -20 "$log" >&2
    exit 1
  }
  deb=$(ls "$cache_root/debs/${kpkg}_"*.deb | head -1)
fi
step "unpack $(basename "$deb")"
dpkg-deb -x "$deb" "$work/kernel"
kdir=$(ls -d "$work"/kernel/lib/modules/*/ | head -1)
krelease=$(basename "$kdir")

root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,run,tmp,mnt/data,root,var/run}
mkdir -p "$root/lib/modules/$krelease"

step "modules for $krelease"
# No depmod here: a module's dependencies are its .modinfo `depends=`.
declare -A module_path=()
while IFS= read -r -d '' f; do
  n=${f##*/}
  n=${n%.ko}
  module_path[${n//-/_}]=$f
done < <(find "$kdir" -name '*.ko' -print0)
declare -A loaded=()
order=()
add_module() {
  local name=${1//-/_} dep deps
  [ -n "${loaded[$name]:-}" ] && return 0
  local path=${module_path[$name]:-}
  if [ -z "$path" ]; then
    # Built into this kernel: nothing to load.
    if grep -q "/${name}.ko\$\|/${1}.ko\$" "$kdir/modules.builtin"; then
      loaded[$name]=builtin
      return 0
    fi
    echo "build-initramfs-guest.sh: no module $1 in $krelease" >&2
    exit 1
  fi
  loaded[$name]=1
  deps=$(tr '\0' '\n' <"$path" | sed -n 's/^depends=//p' | head -1)
  for dep in ${deps//,/ }; do
    add_module "$dep"
  done
  cp "$path" "$root/lib/modules/$krelease/"
  order+=("$(basename "$path")")
}
for m in "${modules[@]}"; do
  add_module "$m"
done
printf '%s\n' "${order[@]}" >"$root/lib/modules/$krelease/load-order"
echo "modules ${order[*]}" >>"$log"

step "busybox, bash, sqlite3, qemu-ga and their libraries"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
copy_with_libraries() {
  local binary=$1 lib
  mkdir -p "$root$(dirname "$binary")"
  cp -L "$binary" "$root$binary"
  for lib in $(ldd "$binary" | awk '/=> \// {print $3} /^\t\// {print $1}'); do
    if [ ! -e "$root$lib" ]; then
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    fi
  done
}
for b in "${host_binaries[@]}"; do
  copy_with_libraries "$b"
done
# Busybox's applets would shadow these in /bin; the real ones come first in PATH.
ln -sf /bin/bash "$root/usr/bin/bash"

step "init, runner, guest tools"
cp "$here/initramfs/init" "$root/init"
for tool in "$here"/initramfs/qt-*; do
  cp "$tool" "$root/usr/bin/"
done
cp "$here/guest/payload/quiesce-test-runner" "$root/usr/bin/"
chmod 0755 "$root/init" "$root"/usr/bin/*
# busybox acpid runs <confdir>/PWRF/00000080 when the power button is pressed.
mkdir -p "$root/etc/acpi/PWRF"
ln -s /usr/bin/qt-power-off "$root/etc/acpi/PWRF/00000080"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "quiesce-guest" >"$root/etc/hostname"
# qemu-ga and the agent read these at start-up; no resolver is needed.
: >"$root/etc/fstab"
ln -s /proc/mounts "$root/etc/mtab"

step "initrd.img"
mkdir -p "$work/out"
(cd "$root" && find . -mindepth 1 | sed 's|^\./||' | sort >"$work/out/files" &&
  find . -mindepth 1 | /bin/busybox cpio -o -H newc 2>>"$log" | gzip -6 >"$work/out/initrd.img")
cp "$work/kernel/boot/vmlinuz-$krelease" "$work/out/vmlinuz"
echo "$cmdline" >"$work/out/cmdline"
{
  echo "key $k"
  echo "built $(date -u +%FT%TZ) in $(($(date +%s) - started)) s"
  echo "kernel $kpkg $kversion ($krelease)"
  echo "modules ${order[*]}"
  dpkg-query -W "${host_packages[@]}" | sed 's/^/package /'
  echo "initrd $(du -k "$work/out/initrd.img" | cut -f1) KiB"
} >"$work/out/manifest"
cp "$log" "$work/out/build.log"
rm -rf "$dest"
mv "$work/out" "$dest"
step "done: $dest"
echo "$dest"
