#!/bin/bash
# Benchmark of pxesrv-storage on the reflink/tgt path (not a test): attach N clients to one
# golden image, then restart the target daemon and restore all N exports.
# Reports total and per-client time and the disk space used.
#
# usage: sudo bench/storage-bench.sh [N] [GOLDEN_MIB]      (defaults: 200 clients, 1024 MiB)
# Needs root, tgtd/tgtadm, mkfs.xfs, a built pxesrv-storage (cargo build --release --bin
# pxesrv-storage, or set BIN=path). Everything lives in a private temp dir, a private tgtd
# control port and portal on 127.0.0.1, and is removed on exit.
set -euo pipefail
N=${1:-200}
GOLDEN_MIB=${2:-1024}
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$here/target/release/pxesrv-storage}
[ -x "$BIN" ] || BIN=$here/target/debug/pxesrv-storage
[ -x "$BIN" ] || { echo "build pxesrv-storage first (cargo build --release --bin pxesrv-storage)"; exit 2; }
W=$(mktemp -d /tmp/pxesrv-storage-bench.XXXXXX)
CTL=$(( 30000 + $$ % 2000 ))
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TGTD_PID=
stop_tgtd() {
  [ -n "$TGTD_PID" ] || return 0
  tgtadm -C $CTL --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
  for tid in $(tgtadm -C $CTL --lld iscsi --op show --mode target 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    tgtadm -C $CTL --lld iscsi --op delete --mode target --tid "$tid" --force >/dev/null 2>&1 || true
  done
  tgtadm -C $CTL --op delete --mode system >/dev/null 2>&1 || true
  for _ in $(seq 30); do kill -0 "$TGTD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$TGTD_PID" 2>/dev/null || true; wait "$TGTD_PID" 2>/dev/null || true
  rm -f /var/run/tgtd/socket.$CTL /var/run/tgtd/socket.$CTL.lock
  TGTD_PID=
}
start_tgtd() {
  tgtd -f -C $CTL --iscsi portal=127.0.0.1:$PORT >>"$W/tgtd.log" 2>&1 & TGTD_PID=$!
  for _ in $(seq 100); do tgtadm -C $CTL --lld iscsi --op show --mode target >/dev/null 2>&1 && return; sleep 0.05; done
  echo "tgtd did not start"; exit 1
}
cleanup() { stop_tgtd; umount "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/mnt" "$W/root"
truncate -s $(( GOLDEN_MIB * 2 + 2048 ))M "$W/fs.img"
mkfs.xfs -q -m reflink=1 "$W/fs.img"
mount -o loop "$W/fs.img" "$W/mnt"
# A golden image with real (random) data, so sharing is visible in the numbers.
dd if=/dev/urandom of="$W/mnt/golden.img" bs=4M count=$(( GOLDEN_MIB / 4 )) status=none
sync
cat >"$W/storage.toml" <<TOML
root = "$W/root"
state_dir = "$W/state"
portal = "192.0.2.1:$PORT"
iqn_prefix = "iqn.2024-01.bench.pxesrv"
[disk]
backend = "reflink"
dir = "$W/mnt"
[target]
backend = "tgt"
control_port = $CTL
TOML
export PXESRV_STORAGE_CONFIG=$W/storage.toml
start_tgtd
"$BIN" image add golden --file "$W/mnt/golden.img" >/dev/null
used0=$(df -B1 --output=used "$W/mnt" | tail -1)
macs=()
for i in $(seq 1 "$N"); do macs+=("$(printf '52:54:00:be:%02x:%02x' $(( i / 256 )) $(( i % 256 )))"); done

t0=$(date +%s.%N)
for m in "${macs[@]}"; do "$BIN" client attach "$m" --image golden >/dev/null; done
t1=$(date +%s.%N)
used1=$(df -B1 --output=used "$W/mnt" | tail -1)
targets=$(tgtadm -C $CTL --lld iscsi --op show --mode target | grep -c '^Target ')
entries=$(ls "$W/root/static" | wc -l)

stop_tgtd; start_tgtd   # the "server reboot": an empty target daemon
t2=$(date +%s.%N)
"$BIN" restore | tail -1
t3=$(date +%s.%N)
restored=$(tgtadm -C $CTL --lld iscsi --op show --mode target | grep -c '^Target ')
t4=$(date +%s.%N)
"$BIN" restore | tail -1
t5=$(date +%s.%N)
t6=$(date +%s.%N)
"$BIN" client list >"$W/list.txt"
t7=$(date +%s.%N)
head -3 "$W/list.txt"

awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" -v f="$t5" \
    -v g0="$t6" -v g1="$t7" -v u0="$used0" -v u1="$used1" -v g="$GOLDEN_MIB" -v tg="$targets" -v en="$entries" -v rs="$restored" 'BEGIN {
  printf "golden image: %d MiB of random data on loop-mounted xfs (reflink=1)\n", g
  printf "attach %d clients: %.2f s total, %.1f ms per client (%d targets, %d boot entries)\n", n, b-a, (b-a)*1000/n, tg, en
  printf "restore %d exports into an empty tgtd: %.2f s total, %.1f ms per client (%d targets)\n", n, d-c, (d-c)*1000/n, rs
  printf "restore again (nothing to do): %.2f s\n", f-e
  printf "client list (%d clients, with space used): %.2f s\n", n, g1-g0
  printf "space: %.1f MiB used before attach, %.1f MiB after (+%.1f MiB for %d clients, %.1f KiB each)\n", u0/1048576, u1/1048576, (u1-u0)/1048576, n, (u1-u0)/1024/n
}'
