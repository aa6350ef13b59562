#!/usr/bin/env bash
# The per-run part of an initramfs guest (tests/vm/build-initramfs-guest.sh):
# a cpio archive the kernel unpacks over the cached image, holding the agent
# build (stripped) with the libraries the image lacks, its config, and
# /etc/quiesce-guest/start, which /init runs after the control runner.
#
#   make-initramfs-payload.sh --image DIR --initrd OUT [--payload OUT.cpio]
#       [--build-dir DIR] [--config agent.json] [--agent quiesce|qemu-ga|none]
#
# --initrd      the image's initrd.img with the payload appended: what QEMU's
#               -initrd (or a libvirt domain's <initrd>) takes
# --payload     keep the payload archive alone as well
# --build-dir   a build tree with bin/quiesce-agent, bin/quiesce-freeze-holder,
#               bin/quiescectl (and bin/quiesce-host if built); without it the
#               payload has no Quiesce binaries (a qemu-ga-only run)
# --config      the agent's config, installed as /etc/quiesce/agent.json
# --agent       which agent /init starts (qt-agent start ...); default quiesce
#               with --build-dir, else qemu-ga
#
# Uncompressed (newc): making it costs a copy, unpacking it a memcpy, and the
# binaries are what changes from run to run.
set -euo pipefail
image= initrd= payload= build_dir= config= agent=
while [ $# -gt 0 ]; do
  case "$1" in
    --image) image=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --payload) payload=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --agent) agent=$2; shift 2 ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
done
if [ -z "$image" ] || [ -z "$initrd" ] || [ ! -f "$image/initrd.img" ] || [ ! -f "$image/files" ]; then
  echo "make-initramfs-payload.sh: --image must name a built image (tests/vm/build-initramfs-guest.sh) and --initrd an output" >&2
  exit 2
fi
if [ -z "$agent" ]; then
  agent=$([ -n "$build_dir" ] && echo quiesce || echo qemu-ga)
fi
case "$agent" in
  quiesce)
    [ -n "$build_dir" ] || { echo "make-initramfs-payload.sh: --agent quiesce needs --build-dir" >&2; exit 2; } ;;
  qemu-ga|none) ;;
  *) echo "make-initramfs-payload.sh: --agent is quiesce, qemu-ga or none, not '$agent'" >&2; exit 2 ;;
esac
[ -z "$config" ] || [ -f "$config" ] || { echo "make-initramfs-payload.sh: no config $config" >&2; exit 2; }

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
declare -A in_image=()
while IFS= read -r f; do
  in_image[/$f]=1
done <"$image/files"

add_library_deps() {
  local lib
  for lib in $(ldd "$1" | awk '/=> \// {print $3} /^\t\// {print $1}'); do
    if [ -z "${in_image[$lib]:-}" ] && [ ! -e "$tree$lib" ]; then
      mkdir -p "$tree$(dirname "$lib")"
      cp -L "$lib" "$tree$lib"
    fi
  done
}
if [ -n "$build_dir" ]; then
  mkdir -p "$tree/usr/sbin" "$tree/usr/bin"
  for b in quiesce-agent:usr/sbin quiesce-freeze-holder:usr/sbin quiescectl:usr/bin quiesce-host:usr/bin; do
    name=${b%%:*}
    dir=${b#*:}
    if [ ! -x "$build_dir/bin/$name" ]; then
      [ "$name" = quiesce-host ] && continue
      echo "make-initramfs-payload.sh: $build_dir/bin/$name is not built" >&2
      exit 1
    fi
    strip --strip-debug -o "$tree/$dir/$name" "$build_dir/bin/$name"
    add_library_deps "$tree/$dir/$name"
  done
fi
if [ -n "$config" ]; then
  mkdir -p "$tree/etc/quiesce"
  cp "$config" "$tree/etc/quiesce/agent.json"
fi
mkdir -p "$tree/etc/quiesce-guest"
{
  echo "#!/bin/sh"
  echo "# Made by tests/vm/make-initramfs-payload.sh: what this run's /init starts."
  [ "$agent" = none ] || echo "qt-agent start $agent"
} >"$tree/etc/quiesce-guest/start"
chmod 0755 "$tree/etc/quiesce-guest/start"
{
  echo "built $(date -u +%FT%TZ)"
  echo "agent $agent"
  [ -z "$build_dir" ] || sha256sum "$tree"/usr/sbin/* "$tree"/usr/bin/* | sed "s|$tree/||"
} >"$tree/etc/quiesce-guest/manifest"

cpio_out=${payload:-$tree.cpio}
# Directories the image has already are in the archive too: cpio entries for
# an existing directory are merged, and parents must come before children.
(cd "$tree" && find . -mindepth 1 | /bin/busybox cpio -o -H newc 2>/dev/null) >"$cpio_out"
# The kernel takes concatenated archives, but a compressed one must end on a
# 4-byte boundary (xz pads its streams so; a base image of another length
# made "invalid magic at start of compressed archive" and no payload). Zero
# bytes between archives are skipped.
base_size=$(stat -c %s "$image/initrd.img")
{
  cat "$image/initrd.img"
  head -c $(((4 - base_size % 4) % 4)) /dev/zero
  cat "$cpio_out"
} >"$initrd.part"
mv "$initrd.part" "$initrd"
[ -n "$payload" ] || rm -f "$cpio_out"
