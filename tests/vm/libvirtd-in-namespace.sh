#!/bin/sh
# tests/vm/libvirtd-in-namespace.sh ROOT CACHE: runs a private libvirtd (the
# qemu driver, in the foreground) for the vm tests (tests/vm/libvirt_daemon.hpp).
#
# Run it under `unshare --mount --propagation private`: a privileged libvirtd
# has its paths compiled in (/etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt, /var/log/libvirt) and no option to move them, so this
# script bind-mounts directories under ROOT over them in its own mount
# namespace. Nothing of a system libvirtd is read or written, and a test's
# domains, sockets and logs are under ROOT. Only the empty mount points are
# created on the host when missing (they are the package's own directories).
# The client socket is ROOT/sock/libvirt-sock (unix_sock_dir), reachable
# from outside the namespace: qemu:///system?socket=ROOT/sock/libvirt-sock.
#
# CACHE is mounted over /var/cache/libvirt and kept between runs: the qemu
# driver probes QEMU's capabilities once (several seconds under load) and
# revalidates the cache itself (QEMU binary, libvirt version, host).
set -eu
root=$1
cache=$2
if [ "$(id -u)" -ne 0 ]; then
  echo "libvirtd-in-namespace.sh: needs root" >&2
  exit 1
fi
mkdir -p "$root/etc" "$root/run" "$root/lib" "$root/log" "$root/sock" "$cache"

cat >"$root/etc/libvirtd.conf" <<EOF
# Only the unix socket, in the test's own directory; no auth (root only, 0700).
unix_sock_dir = "$root/sock"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
# Warnings and errors everywhere; the qemu driver's info (domain start and
# stop, agent commands) so a failure can be followed from the log.
log_filters = "2:qemu.qemu_agent 2:qemu.qemu_driver 2:qemu.qemu_process"
log_outputs = "2:file:$root/libvirtd.log"
EOF

cat >"$root/etc/qemu.conf" <<EOF
# QEMU runs as root with no confinement: there is no libvirt-qemu user with
# rights on the test's files and no AppArmor/SELinux profile here.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
# Without this, libvirt moves QEMU out of the caller's cgroup (PID 1 is not
# systemd here, and CI accounts the test's resources by its cgroup).
cgroup_controllers = [ ]
# QEMU's stdout/stderr go to ROOT/log/qemu/NAME.log directly: no virtlogd.
stdio_handler = "file"
# No per-QEMU mount namespace: there is no udev to populate its private /dev.
namespaces = [ ]
EOF

# libvirt resolves its compiled-in QEMU user (libvirt-qemu) when the qemu
# driver starts, even when qemu.conf says root; Debian's libvirt-daemon
# leaves creating it to libvirt-daemon-system. The namespace sees copies of
# passwd/group that have it, so the host's user database is left alone.
cp /etc/passwd "$root/passwd"
cp /etc/group "$root/group"
grep -q '^libvirt-qemu:' "$root/passwd" ||
  echo 'libvirt-qemu:x:64055:64055:libvirt QEMU (test namespace only):/var/lib/libvirt:/usr/sbin/nologin' >>"$root/passwd"
grep -q '^libvirt-qemu:' "$root/group" || echo 'libvirt-qemu:x:64055:' >>"$root/group"

for dir in /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mkdir -p "$dir"
done
mount --bind "$root/etc" /etc/libvirt
mount --bind "$root/run" /run/libvirt
mount --bind "$root/lib" /var/lib/libvirt
mount --bind "$cache" /var/cache/libvirt
mount --bind "$root/log" /var/log/libvirt
mount --bind "$root/passwd" /etc/passwd
mount --bind "$root/group" /etc/group

exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
