#!/usr/bin/env bash
# Builds (or reuses) the Debian 12 guest image the vm tests boot: a debootstrap
# minbase system with systemd, journald persistent on "/", and the Debian
# kernel + a small initramfs to boot with QEMU's -kernel/-initrd.
#
#   tests/vm/build-debian-image.sh            print the image directory (build it if missing)
#   tests/vm/build-debian-image.sh --key      print the cache key only
#   tests/vm/build-debian-image.sh --rebuild  build again even if cached
#
# The image does not contain the agent: the tests bring their build in on a
# second disk (tests/vm/make-payload.sh) that the guest's
# quiesce-test-payload.service installs at boot. So an agent change never
# rebuilds the image; only a change of this script, the guest files it copies
# (tests/vm/guest/base/), the package list, the suite or the mirror does.
#
# Cache: $QUIESCE_VM_CACHE (default /var/cache/quiesce-vm)/<key>/ holding
# base.qcow2, vmlinuz, initrd.img, build.log, manifest. Built in a temp dir
# next to it and renamed into place, so a half-built image is never used.
# Needs root (debootstrap, chroot). Progress goes to stderr; stdout is the path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${QUIESCE_VM_CACHE:-/var/cache/quiesce-vm}
suite=${QUIESCE_VM_SUITE:-bookworm}
mirror=${QUIESCE_VM_MIRROR:-http://deb.debian.org/debian}
image_size=${QUIESCE_VM_IMAGE_SIZE:-2G}

# What the guest needs: systemd as PID 1, the agent's runtime libraries
# (ldd of quiesce-agent, quiesce-freeze-holder, quiescectl), the tools the
# tests run in the guest, and curl to hold a session open over the agent's
# Unix socket (quiescectl has no command that stays frozen).
packages=(
  systemd systemd-sysv udev dbus kmod
  libstdc++6 libgcc-s1 libspdlog1.10 libfmt9 libsqlite3-0 libsystemd0 libcap2
  libgcrypt20 libgpg-error0 liblz4-1 liblzma5 libzstd1
  util-linux e2fsprogs procps coreutils curl ca-certificates
)
kernel_package=linux-image-amd64
# Modules the initramfs needs to mount the root disk (MODULES=list keeps it
# small, so TCG boots it fast), and the one the control channel needs.
initramfs_modules=(virtio_pci virtio_blk virtio_console ext4 crc32c_generic)

key() {
  {
    cat "$0"
    find "$here/guest/base" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|$here/||"
    printf '%s\n' "$suite" "$mirror" "$image_size" "${packages[@]}" "$kernel_package" "${initramfs_modules[@]}"
  } | sha256sum | cut -c1-16
}

case "${1:-}" in
  --key) key; exit 0 ;;
  --rebuild) rebuild=1 ;;
  "") rebuild=0 ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac

k=$(key)
dest=$cache_root/$k
if [ "$rebuild" = 0 ] && [ -f "$dest/manifest" ]; then
  echo "$dest"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "build-debian-image.sh: building the image needs root (debootstrap)" >&2
  exit 1
fi
for tool in debootstrap mkfs.ext4 qemu-img; do
  command -v "$tool" >/dev/null || { echo "build-debian-image.sh: $tool is missing (packaging/dev.sh deps)" >&2; exit 1; }
done

mkdir -p "$cache_root"
# One builder at a time per cache; a second one waits, then finds the image.
exec 9>"$cache_root/.lock"
flock 9
if [ "$rebuild" = 0 ] && [ -f "$dest/manifest" ]; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d "$cache_root/.build-$k.XXXXXX")
root=$work/root
mounted=()
cleanup() {
  local m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m=${mounted[i]}
    umount -l "$m" 2>/dev/null || true
  done
  # Never remove a tree with a bind mount of the host's /dev or /proc left in it.
  if grep -q " $work/" /proc/mounts; then
    echo "build-debian-image.sh: $work still has mounts; left in place" >&2
    return
  fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
log=$work/build.log
started=$(date +%s)
echo "build-debian-image.sh: building $suite image $k in $work (log: $log)" >&2

step() { echo "  [$(($(date +%s) - started)) s] $*" >&2; }

step "debootstrap --variant=minbase $suite"
if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    "$suite" "$root" "$mirror" >>"$log" 2>&1; then
  tail -30 "$log" >&2
  exit 1
fi

chroot_mount() {
  mount --bind "/$1" "$root/$1"
  mounted+=("$root/$1")
}
chroot_mount proc
chroot_mount sys
chroot_mount dev

step "the kernel with a small initramfs"
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo "MODULES=list" >"$root/etc/initramfs-tools/conf.d/quiesce-vm.conf"
echo "COMPRESS=gzip" >>"$root/etc/initramfs-tools/conf.d/quiesce-vm.conf"
printf '%s\n' "${initramfs_modules[@]}" >"$root/etc/initramfs-tools/modules"
if ! chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$kernel_package" >>"$log" 2>&1; then
  tail -30 "$log" >&2
  exit 1
fi
chroot "$root" apt-get clean

step "configure the guest"
echo "quiesce-vm" >"$root/etc/hostname"
echo "/dev/vda / ext4 rw,relatime,errors=remount-ro 0 0" >"$root/etc/fstab"
# journald persistent on "/": what issue #19 is about (a frozen "/" blocks it).
mkdir -p "$root/var/log/journal" "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=persistent\n' >"$root/etc/systemd/journald.conf.d/persistent.conf"
chroot "$root" systemd-tmpfiles --create --prefix /var/log/journal >>"$log" 2>&1 || true
# The guest files (the payload installer unit, ...) and their enablement.
cp -a "$here/guest/base/." "$root/"
chroot "$root" systemctl enable quiesce-test-payload.service >>"$log" 2>&1
# Nothing the tests do not need: timers and gettys only cost boot time.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer getty@tty1.service serial-getty@ttyS0.service systemd-timesyncd.service; do
  chroot "$root" systemctl mask "$unit" >>"$log" 2>&1 || true
done
chroot "$root" passwd -d root >>"$log" 2>&1
# A machine-id per image (the journal's directory name); the overlay of each
# run starts from it.
chroot "$root" systemd-machine-id-setup >>"$log" 2>&1

for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
  umount "${mounted[i]}"
done
mounted=()

step "kernel and initramfs out of the image"
mkdir -p "$work/out"
cp "$(readlink -f "$root/vmlinuz")" "$work/out/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$work/out/initrd.img"

step "ext4 image ($image_size) from the tree"
truncate -s "$image_size" "$work/base.raw"
mkfs.ext4 -q -F -L quiesce-root -d "$root" "$work/base.raw" >>"$log" 2>&1
qemu-img convert -f raw -O qcow2 "$work/base.raw" "$work/out/base.qcow2"
rm -f "$work/base.raw"

{
  echo "key $k"
  echo "suite $suite"
  echo "mirror $mirror"
  echo "built $(date -u +%FT%TZ) in $(($(date +%s) - started)) s"
  echo "kernel $(basename "$(readlink -f "$root/vmlinuz")")"
  echo "packages ${packages[*]} $kernel_package"
} >"$work/out/manifest"
cp "$log" "$work/out/build.log"
rm -rf --one-file-system "$root"

rm -rf "$dest"
mv "$work/out" "$dest"
step "done: $dest"
echo "$dest"
