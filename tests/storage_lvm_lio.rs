//! The LVM and LIO backends for real, inside a QEMU TCG guest (this host kernel has neither
//! device-mapper nor configfs): a Debian kernel and a busybox initramfs carrying lvm and the
//! pxesrv-storage binary under test. The guest's init (tests/storage_vm/init) registers a
//! golden LV, attaches clients (classic snapshots, LIO targets written through configfs),
//! checks dry run, kill-and-rerun, rollback, reset, detach and restore, then keeps serving.
//! From the host, a real initiator (qemu-io) logs in through a port forward, and an iPXE
//! client VM sanboots client A's snapshot with the boot script the guest wrote, served by
//! the real pxesrv.
//!
//! Needs: qemu-system-x86_64, ipxe-qemu, qemu-io, apt-get + dpkg-deb (the kernel is
//! downloaded once into the cargo target dir), busybox, python3, lvm2 on the host.

mod storage_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use storage_support::*;

const A: &str = "52-54-00-12-00-0a";
const B: &str = "52-54-00-12-00-0b";
const D: &str = "52-54-00-12-00-0d";

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn say(msg: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{msg}\n").as_bytes());
}

#[test]
fn lvm_snapshots_exported_by_lio_in_a_guest() {
    let test = "lvm_snapshots_exported_by_lio_in_a_guest";
    if !require(
        test,
        &[
            "qemu-system-x86_64",
            "qemu-io",
            "apt-get",
            "dpkg-deb",
            "busybox",
            "python3",
            "lvm",
            "dmsetup",
        ],
    ) {
        return;
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("storage-vm");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("golden.bin"), marker_sector("GOLDEN")).unwrap();
    std::fs::write(cache.join("clienta.bin"), marker_sector("CLIENT-A-LVM")).unwrap();
    let work = tempfile::Builder::new()
        .prefix("pxesrv-storage-vm-")
        .tempdir()
        .unwrap();
    let initrd = work.path().join("initramfs.gz");
    let t0 = Instant::now();
    let kernel = run_ok(
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/storage_vm/build-initramfs.sh"
            ))
            .arg(&cache)
            .arg(env!("CARGO_BIN_EXE_pxesrv-storage"))
            .arg(&initrd),
    );
    let kernel = kernel.lines().last().unwrap().trim().to_string();
    say(&format!(
        "guest kernel and initramfs ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));

    let port = free_port();
    let pv = work.path().join("pv.img");
    std::fs::File::create(&pv)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let serial = work.path().join("guest.log");
    let _guest = Proc(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "1024",
                "-smp",
                "2",
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 loglevel=4 pxeport={port}"))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", pv.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:3260"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the guest"),
    );
    let t0 = Instant::now();
    let log = loop {
        let log =
            String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).replace('\r', "");
        if log.contains("E2E-READY") || log.contains("Kernel panic") {
            break log;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "guest not ready after 300 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    say(&format!(
        "guest ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    let results: Vec<&str> = log.lines().filter(|l| l.starts_with("E2E-")).collect();
    say(&results.join("\n"));
    assert!(log.contains("E2E-READY"), "guest failed:\n{log}");
    assert!(!log.contains("E2E-FAIL"), "guest checks failed:\n{log}");
    for check in [
        "image-add",
        "lv-missing-error",
        "dry-run",
        "fault after:portal exit",
        "attach-a-rerun",
        "no-leak-after-rerun",
        "attach-b",
        "rollback-at-acl",
        "initiator-in-use",
        "golden-untouched",
        "reset-d",
        "detach-c",
        "restore-idempotent",
        "image-in-use",
    ] {
        assert!(
            log.contains(&format!("E2E-OK: {check}\n")),
            "missing check {check}:\n{log}"
        );
    }

    // A real initiator through the port forward: LUN 0 with LIO.
    let read = |target: &str, ini_name: &str| iscsi_read_lun(port, target, ini_name, 0, 0, 512);
    let sector = read(&tgt_iqn(A), &ini(A)).unwrap();
    assert!(has_marker(&sector, "CLIENT-A-LVM"), "A reads its snapshot");
    let sector = read(&tgt_iqn(B), &ini(B)).unwrap();
    assert!(has_marker(&sector, "GOLDEN"), "B reads the golden data");
    let sector = read(&tgt_iqn(D), &ini(D)).unwrap();
    assert!(has_marker(&sector, "GOLDEN"), "D was reset");
    let e = read(&tgt_iqn(A), &ini(B)).unwrap_err();
    assert!(
        e.contains("Failed to log in") || e.contains("Authorization"),
        "B's initiator name must not open A's target: {e}"
    );

    // An iPXE client with A's MAC boots A's snapshot, with the script the guest wrote.
    let script = log
        .split("BEGIN-SCRIPT\n")
        .nth(1)
        .and_then(|s| s.split("END-SCRIPT").next())
        .expect("boot script in the guest log");
    assert!(
        script.contains(&format!("sanboot iscsi:10.0.2.2::{port}:0:{}", tgt_iqn(A))),
        "{script}"
    );
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("static")).unwrap();
    std::fs::write(root.join("static").join(A), script).unwrap();
    let mut srv = Command::new(env!("CARGO_BIN_EXE_pxesrv"))
        .arg("--root")
        .arg(&root)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = srv.stderr.take().unwrap();
    let _srv = Proc(srv);
    let mut http_port = 0u16;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            http_port = a.rsplit_once(':').unwrap().1.parse().unwrap();
            break;
        }
    }
    assert_ne!(http_port, 0);
    let client_serial = work.path().join("client.log");
    let mut vm = Proc(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-machine",
                "graphics=off",
                "-m",
                "256",
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
            ])
            .args(["-boot", "n,reboot-timeout=0", "-netdev"])
            .arg(format!(
                "user,id=n0,bootfile=http://10.0.2.2:{http_port}/redirect?mac=${{net0/mac}}"
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac={}",
                A.replace('-', ":")
            ))
            .arg("-serial")
            .arg(format!("file:{}", client_serial.display()))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = vm.0.try_wait().unwrap() {
            break s.code();
        }
        if t0.elapsed() > Duration::from_secs(120) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = String::from_utf8_lossy(&std::fs::read(&client_serial).unwrap_or_default())
        .replace('\r', "");
    say(&format!(
        "iPXE client A: qemu status {status:?} in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    assert_eq!(status, Some(33), "A's marker did not run:\n{out}");
    assert!(out.contains("CLIENT-A-LVM"), "{out}");
}
