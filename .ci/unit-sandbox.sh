#!/usr/bin/env bash
# unit-sandbox.sh RW_PATH... -- COMMAND...
#
# Runs COMMAND in a private mount namespace shaped like the file-system side of
# pxesrv.service's sandbox, for machines where systemd is not PID 1 (CI runs in
# a container). Run it as root; COMMAND drops privileges itself (setpriv).
#
#   ProtectSystem=strict, ReadWritePaths=, LogsDirectory=
#                           every mount read-only except RW_PATH... (and /dev,
#                           /proc, /sys handled below)
#   PrivateTmp=yes          empty /tmp and /var/tmp
#   ProtectHome=yes         empty, inaccessible /home, /root, /run/user
#   PrivateDevices=yes      a /dev with only null zero full random urandom tty
#   ProtectKernelTunables=, ProtectControlGroups=
#                           /sys and /sys/fs/cgroup read-only (with the rest),
#                           /proc/sys gone (see next)
#   ProtectProc=invisible, ProcSubset=pid
#                           a fresh /proc of processes only, others' hidden
#
# Not emulated here: PrivateUsers=, RestrictNamespaces= and the other kernel
# options; .ci/packages.sh checks the seccomp, address-family and W^X options
# with strace, and capabilities and no-new-privileges with setpriv.
set -euo pipefail

rw=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    rw+=("$1")
    shift
done
[ "${1:-}" = -- ] || { echo "usage: $0 RW_PATH... -- COMMAND..." >&2; exit 2; }
shift

# shellcheck disable=SC2016 # the script runs in the new namespace
exec unshare --mount --propagation private bash -euo pipefail -c '
n_rw=$1
shift
rw=("${@:1:$n_rw}")
shift "$n_rw"

for p in "${rw[@]}"; do mount -n --bind "$p" "$p"; done
is_rw() { local p; for p in "${rw[@]}"; do [ "$1" = "$p" ] && return 0; done; return 1; }
# Deepest mounts last does not matter for read-only remounts: each is its own.
findmnt -rno TARGET | while read -r m; do
    m=$(printf "%b" "$m")
    case $m in /proc | /proc/* | /dev | /dev/*) continue ;; esac
    is_rw "$m" && continue
    if ! mount -n -o remount,bind,ro "$m" 2>/dev/null; then
        mount -n --bind "$m" "$m"
        mount -n -o remount,bind,ro "$m"
    fi
done

for d in /tmp /var/tmp; do mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$d"; done
for d in /home /root /run/user; do [ -d "$d" ] && mount -n -t tmpfs -o mode=000 tmpfs "$d"; done

dev=$(mktemp -d /tmp/dev.XXXXXX)
mount -n -t tmpfs -o mode=0755,nosuid,noexec tmpfs "$dev"
for n in null zero full random urandom tty; do
    touch "$dev/$n"
    mount -n --bind "/dev/$n" "$dev/$n"
done
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"
ln -s /proc/self/fd/1 "$dev/stdout"
ln -s /proc/self/fd/2 "$dev/stderr"
mkdir "$dev/shm" && mount -n -t tmpfs -o mode=1777,nosuid,nodev,noexec tmpfs "$dev/shm"
mount -n --move "$dev" /dev
rmdir "$dev" 2>/dev/null || true

mount -n -t proc -o nosuid,nodev,noexec,hidepid=invisible,subset=pid proc /proc

exec "$@"
' unit-sandbox "${#rw[@]}" "${rw[@]}" "$@"
