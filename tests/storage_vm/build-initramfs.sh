#!/bin/bash
# Builds the LVM + LIO guest for tests/storage_lvm_lio.rs: a Debian kernel (downloaded with
# apt-get download, unpacked, not installed), a busybox initramfs with the kernel modules for
# device-mapper snapshots and the LIO iSCSI target, the host's lvm with its libraries, and
# the pxesrv-storage binary under test with its libraries.
# usage: build-initramfs.sh CACHE_DIR PXESRV_STORAGE_BIN OUT_INITRAMFS
set -euo pipefail
CACHE=$1; BIN=$2; OUT=$3
HERE=$(cd "$(dirname "$0")" && pwd)
KROOT=$CACHE/kroot
if ! ls "$KROOT"/boot/vmlinuz-* >/dev/null 2>&1; then
  mkdir -p "$CACHE/debs"
  PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends/{print $2; exit}')
  (cd "$CACHE/debs" && apt-get download "$PKG" >/dev/null)
  dpkg-deb -x "$CACHE"/debs/linux-image-*.deb "$KROOT"
fi
KVER=$(ls "$KROOT/lib/modules" | head -1)
[ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || busybox depmod -b "$KROOT" "$KVER"
R=$(mktemp -d "$CACHE/root.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,sbin,usr/sbin,usr/bin,etc/lvm,proc,sys,dev,run/lvm,tmp,lib/modules/$KVER,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$R/bin/busybox"
MODS=$(python3 "$HERE/modclosure.py" "$KROOT/lib/modules/$KVER" \
    virtio_pci virtio_net virtio_blk crc32c_generic dm_mod dm_snapshot configfs target_core_mod target_core_iblock target_core_file iscsi_target_mod)
for m in $MODS; do
  mkdir -p "$R/lib/modules/$KVER/$(dirname "$m")"; cp "$KROOT/lib/modules/$KVER/$m" "$R/lib/modules/$KVER/$m"; echo "$KVER/$m" >> "$R/modules.e2e"
done
copy_with_libs() {
  cp "$1" "$R$2"
  for l in $(ldd "$1" | grep -o '/lib[^ ]*'); do mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; done
}
copy_with_libs /usr/sbin/lvm /usr/sbin/lvm
copy_with_libs /usr/sbin/dmsetup /usr/sbin/dmsetup
for t in lvs vgs lvcreate lvremove lvchange pvcreate vgcreate; do ln -s lvm "$R/usr/sbin/$t"; done
copy_with_libs "$BIN" /usr/bin/pxesrv-storage
printf 'global { use_lvmetad = 0 }\nactivation { udev_sync = 0\n udev_rules = 0\n monitoring = 0 }\ndevices { obtain_device_list_from_udev = 0 }\n' > "$R/etc/lvm/lvm.conf"
cp "$HERE/init" "$R/init"; chmod +x "$R/init"
cp "$CACHE"/*.bin "$R/" 2>/dev/null || true
(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT"
ls "$KROOT"/boot/vmlinuz-*
