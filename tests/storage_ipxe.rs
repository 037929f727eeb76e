//! The full chain on the tgt/reflink path: the real `pxesrv` serves the boot tree over HTTP
//! (with `pxesrv-storage hook` as its boot hook), iPXE clients in QEMU (TCG) fetch
//! `/redirect?mac=...`, get the `sanboot` script pxesrv-storage wrote, log in to tgtd with
//! their initiator name and boot their own copy-on-write disk: a marker sector that prints
//! its name on the serial port and exits QEMU with status 33.
//!
//! Needs root, tgtd, tgtadm, qemu-io, qemu-system-x86_64 with ipxe-qemu, mkfs.xfs.

mod storage_support;

use std::path::{Path, PathBuf};

use storage_support::*;

const MIB: u64 = 1 << 20;
const A: &str = "52-54-00-12-00-0a";
const B: &str = "52-54-00-12-00-0b";
const C: &str = "52-54-00-12-00-0c";

fn assert_boots(dir: &Path, http_port: u16, mac: &str, tag: &str, marker: &str) {
    let (status, serial) = storage_support::ipxe_boot(dir, http_port, mac, tag);
    let text: String = serial.replace('\r', "");
    assert_eq!(
        status,
        Some(33),
        "{tag}: the marker sector did not run; serial:\n{text}"
    );
    assert!(
        text.contains(marker),
        "{tag}: expected {marker}; serial:\n{text}"
    );
    for other in ["GOLDEN", "CLIENT-A", "CLIENT-C"] {
        if other != marker {
            assert!(
                !text.contains(&format!("\n{other}\n")),
                "{tag}: booted {other}:\n{text}"
            );
        }
    }
}

fn write_marker_via_iscsi(dir: &Path, port: u16, mac: &str, marker: &str) {
    let sector: PathBuf = dir.join(format!("{marker}.bin"));
    std::fs::write(&sector, marker_sector(marker)).unwrap();
    iscsi_write_file(port, &tgt_iqn(mac), &ini(mac), &sector);
    assert!(has_marker(
        &iscsi_read(port, &tgt_iqn(mac), &ini(mac), 0, 64),
        marker
    ));
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: pxesrv, tgtd and iPXE in QEMU as root; run with sudo PXESRV_E2E=1 cargo test --test storage_ipxe"
)]
fn ipxe_clients_boot_their_own_cow_disks() {
    let test = "ipxe_clients_boot_their_own_cow_disks";
    if !require(
        test,
        &[
            "tgtd",
            "tgtadm",
            "qemu-io",
            "qemu-system-x86_64",
            "mkfs.xfs",
            "mount",
            "cp",
        ],
    ) {
        return;
    }
    if !Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom").exists()
        && !Path::new("/usr/share/qemu/efi-virtio.rom").exists()
    {
        if e2e_required() {
            panic!("{test}: PXESRV_E2E=1 but the iPXE ROM for QEMU (ipxe-qemu) is missing");
        }
        skip(test, "ipxe-qemu is not installed");
        return;
    }
    let fs = LoopFs::new(FsKind::Xfs, 512 * MIB);
    let tgtd = Tgtd::start(fs.tmp.path());
    let port = tgtd.port;
    // QEMU's user network shows the host's 127.0.0.1 to the guest as 10.0.2.2.
    let s = Setup::new(&fs.mnt, tgtd.control, "10.0.2.2", port);
    let work = s.dir.path().to_owned();
    write_marker_disk(&fs.mnt.join("golden.img"), "GOLDEN", 64 * MIB);
    let g = fs.mnt.join("golden.img");
    s.ok(&["image", "add", "golden", "--file", g.to_str().unwrap()]);
    s.ok(&["client", "attach", A, "--image", "golden"]);
    s.ok(&["client", "attach", B, "--image", "golden"]);
    s.ok(&[
        "client",
        "attach",
        C,
        "--image",
        "golden",
        "--mode",
        "reset-on-boot",
    ]);
    let script = std::fs::read_to_string(s.root.join("static").join(A)).unwrap();
    assert!(
        script.contains(&format!("sanboot iscsi:10.0.2.2::{port}:1:{}", tgt_iqn(A))),
        "{script}"
    );

    // A's own disk gets its own marker, written by a real initiator as A.
    write_marker_via_iscsi(&work, port, A, "CLIENT-A");
    write_marker_via_iscsi(&work, port, C, "CLIENT-C");

    let hook = format!(
        "{} --config {} hook",
        env!("CARGO_BIN_EXE_pxesrv-storage"),
        s.config.display()
    );
    let (_srv, http_port) =
        start_pxesrv(&s.root, &["--boot-hook", &hook], &work.join("pxesrv.log"));

    assert_boots(&work, http_port, A, "a-1", "CLIENT-A");
    assert_boots(&work, http_port, B, "b-1", "GOLDEN");
    // Reset drops A's writes: the golden image boots again.
    s.ok(&["client", "reset", A]);
    assert_boots(&work, http_port, A, "a-2", "GOLDEN");
    // reset-on-boot: the boot hook resets C before it logs in, every time.
    assert_boots(&work, http_port, C, "c-1", "GOLDEN");
    write_marker_via_iscsi(&work, port, C, "CLIENT-C");
    assert_boots(&work, http_port, C, "c-2", "GOLDEN");
    // The golden image itself never changed.
    assert!(has_marker(&std::fs::read(&g).unwrap()[..64], "GOLDEN"));
    let log = std::fs::read_to_string(work.join("pxesrv.log")).unwrap();
    assert!(!log.contains("hook-failed"), "{log}");
}
