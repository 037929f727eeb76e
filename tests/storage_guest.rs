//! The `lvm` disk backend and the `lio` target backend, for real: in a QEMU (TCG) guest
//! with a Debian kernel (this host has neither device-mapper nor configfs), driven by the
//! real `pxesrv-storage` binary inside the guest. The guest's init (tests/guest/init) runs
//! the shell steps this test sends it over HTTP and posts their output back.
//!
//! 1. The guest gets a volume group on /dev/vda, a 64 MiB golden LV whose first sector
//!    prints GOLDEN and exits QEMU with status 33, and a thin pool with a thin golden LV
//!    (THIN-GOLDEN). `pxesrv-storage` registers both (`image add --lv`) and attaches
//!    clients A, B (classic snapshots), C (thin snapshot) and D (with CHAP); LIO exports
//!    each through configfs. Their boot scripts (`static/MAC`) come back to the host.
//! 2. From the host, a real initiator (qemu-io's libiscsi driver, through QEMU's port
//!    forward) logs in as A: reads GOLDEN, writes CLIENT-A. Other initiator names are
//!    refused by the ACLs; D needs its CHAP secret; the guest confirms each write is in
//!    that client's snapshot only and the golden LVs are byte for byte unchanged.
//! 3. The real `pxesrv` serves the scripts the guest wrote; iPXE client VMs with the
//!    clients' MACs sanboot through the guest's LIO target: A shows CLIENT-A, B GOLDEN,
//!    C CLIENT-C, D (CHAP) GOLDEN. After `client reset A`, A shows GOLDEN again; `client
//!    detach B` removes B's LV, target, backstore, boot entry and state.
//! 4. A dry run changes nothing; an injected failure half-way is rolled back in LVM and
//!    configfs; a run killed half-way is finished by the next one.
//! 5. The storage guest is killed and booted again on the same disk with only its state
//!    file: `restore` activates the snapshots, exports them and writes the boot entries;
//!    A and C boot their own data again, D still needs CHAP.
//!
//! Runs only with PXESRV_E2E=1 (it downloads a kernel once and takes about two minutes);
//! then a missing tool is a failure. Needs qemu-system-x86_64 (with ipxe-qemu), qemu-io
//! (qemu-utils, qemu-block-extra for libiscsi), busybox, lvm2, apt-get and dpkg-deb; see
//! .ci/guest-deps. The kernel is cached in target/e2e-kernel/, the logs of the last run
//! are kept in target/tmp/storage_guest-logs/.

mod guest;
mod storage_support;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use guest::*;
use storage_support::{has_marker, ini, marker_sector, tgt_iqn, PREFIX};

const MIB: u64 = 1 << 20;
const A: &str = "52-54-00-12-34-0a";
const B: &str = "52-54-00-12-34-0b";
const C: &str = "52-54-00-12-34-0c";
/// Attached with CHAP.
const D: &str = "52-54-00-12-34-0d";
/// Only ever half-attached: dry run and injected faults.
const E: &str = "52-54-00-12-34-0e";
const VG: &str = "pxevg";
const LUN: u32 = 0;

const TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "qemu-io",
    "busybox",
    "lvm",
    "dmsetup",
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "ldd",
    "find",
];

/// Keeps the logs of the run (guest serial consoles, pxesrv, iPXE clients) in
/// target/tmp/storage_guest-logs/, and prints them when a step failed.
struct Logs<'a>(&'a Path);

impl Drop for Logs<'_> {
    fn drop(&mut self) {
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("storage_guest-logs");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::create_dir_all(&keep);
        let mut logs: Vec<_> = std::fs::read_dir(self.0)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "err"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        for p in &logs {
            let _ = std::fs::copy(p, keep.join(p.file_name().unwrap()));
        }
        if !std::thread::panicking() {
            return;
        }
        for p in logs {
            let text =
                String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).replace('\r', "");
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(250)..];
            say(&format!(
                "===== {} (last {} lines) =====\n{}",
                p.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        say(&format!("(all logs of this run: {})", keep.display()));
    }
}

fn config(iscsi_port: u16) -> String {
    // Clients are told 10.0.2.2:PORT (the host, from an iPXE VM on QEMU's user network);
    // the guest's LIO listens on its own 10.0.2.15:3260, which QEMU forwards from PORT.
    format!(
        "root = \"/srv/pxesrv\"\nstate_dir = \"/var/lib/pxesrv-storage\"\n\
         portal = \"10.0.2.2:{iscsi_port}\"\niqn_prefix = \"{PREFIX}\"\n\
         command_timeout = \"60s\"\n\
         [disk]\nbackend = \"lvm\"\nvg = \"{VG}\"\n\
         [target]\nbackend = \"lio\"\nlisten = \"10.0.2.15:3260\"\n"
    )
}

/// The printable strings of the first sector of a device in the guest.
fn guest_sector(g: &Guest, dev: &str) -> String {
    g.ok(&format!("dd if={dev} bs=512 count=1 2>/dev/null | strings"))
}

/// md5 of the whole of the golden LVs, to prove nothing ever writes them. (After a
/// reboot, restore activates the clients' snapshots only; a thin origin stays inactive.)
fn golden_md5(g: &Guest) -> String {
    g.ok(&format!(
        "lvchange -ay {VG}/golden {VG}/thingolden
md5sum /dev/{VG}/golden /dev/{VG}/thingolden"
    ))
}

/// `client list --json` in the guest: MAC -> (state, used bytes).
fn client_list(g: &Guest) -> Vec<(String, String, u64)> {
    let out = g.ok("pxesrv-storage client list --json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["mac"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
                c["used"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

const MARKERS: &[&str] = &["GOLDEN", "CLIENT-A", "THIN-GOLDEN", "CLIENT-C"];

fn assert_boots(work: &Path, http_port: u16, mac: &str, tag: &str, marker: &str) {
    let (status, serial) = ipxe_boot(work, http_port, mac, tag);
    assert_eq!(
        status,
        Some(33),
        "{tag}: the marker sector did not run; serial:\n{serial}"
    );
    assert!(
        serial.contains(&format!("\n{marker}\n")),
        "{tag}: expected {marker}; serial:\n{serial}"
    );
    for other in MARKERS {
        if *other != marker {
            assert!(
                !serial.contains(&format!("\n{other}\n")),
                "{tag}: booted {other}:\n{serial}"
            );
        }
    }
}

/// Writes a marker sector into `mac`'s disk as `mac`'s initiator, and reads it back.
fn write_marker(work: &Path, port: u16, mac: &str, marker: &str) {
    let src = work.join(format!("{marker}.bin"));
    std::fs::write(&src, marker_sector(marker)).unwrap();
    iscsi_write_file(port, &tgt_iqn(mac), &ini(mac), LUN, &src);
    assert!(has_marker(
        &iscsi_read(port, &tgt_iqn(mac), &ini(mac), LUN, 512),
        marker
    ));
}

/// CHAP user and secret from a boot script.
fn chap_of(script: &str) -> (String, String) {
    let get = |key: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("set {key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{script}"))
            .to_string()
    };
    (get("username"), get("password"))
}

/// Whatever exists of client `mac` in the guest: LV, configfs target and backstore, boot
/// entry, state. Empty if nothing.
fn traces_of(g: &Guest, mac: &str) -> String {
    let (_, out) = g.sh(&format!(
        "lvs --noheadings -o lv_name {VG}\nls /sys/kernel/config/target/iscsi \
         /sys/kernel/config/target/core/iblock_0 /srv/pxesrv/static\n\
         cat /var/lib/pxesrv-storage/state.json"
    ));
    // Each listing worked (an empty answer must not pass for "nothing left").
    for known in ["thingolden", "lio_version", "\"clients\""] {
        assert!(out.contains(known), "no {known} in:\n{out}");
    }
    out.lines()
        .filter(|l| l.contains(mac))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The boot entries the guest wrote, copied into the host's pxesrv tree.
fn fetch_scripts(g: &Guest, root: &Path, macs: &[&str]) -> Vec<String> {
    std::fs::create_dir_all(root.join("static")).unwrap();
    macs.iter()
        .map(|mac| {
            let s = g.ok(&format!("cat /srv/pxesrv/static/{mac}"));
            std::fs::write(root.join("static").join(mac), &s).unwrap();
            s
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: LVM and LIO in a QEMU guest; run with PXESRV_E2E=1 cargo test --test storage_guest"
)]
fn lvm_snapshots_exported_by_lio_boot_ipxe_clients() {
    let test = "lvm_snapshots_exported_by_lio_boot_ipxe_clients";
    if !storage_support::e2e_required() {
        let _ = std::io::stderr().write_all(
            format!(
                "\n*** SKIPPED {test}: it boots a Debian kernel in QEMU (TCG) and downloads it once;\n\
                 *** run it with: PXESRV_E2E=1 cargo test --test storage_guest -- --nocapture\n\n"
            )
            .as_bytes(),
        );
        return;
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{test}: PXESRV_E2E=1 but missing: {missing:?} (see .ci/guest-deps)"
    );
    assert!(
        Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom").exists()
            || Path::new("/usr/share/qemu/efi-virtio.rom").exists(),
        "{test}: PXESRV_E2E=1 but the iPXE ROM for QEMU (ipxe-qemu) is missing"
    );
    // qemu-io's iSCSI driver is a module of qemu-block-extra (only recommended by
    // qemu-utils): probe it against a closed loopback port.
    let probe = qemu_io(
        1,
        "iqn.2024-01.test.pxesrv:probe",
        "iqn.2024-01.test.pxesrv:probe",
        0,
        &["read 0 512"],
    );
    let err = String::from_utf8_lossy(&probe.stderr);
    assert!(
        !err.contains("Unknown driver"),
        "{test}: PXESRV_E2E=1 but qemu-io has no iscsi driver (install qemu-block-extra): {err}"
    );
    let t_all = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("pxesrv-guest-")
        .tempdir()
        .unwrap();
    let work = tmp.path();
    let _logs = Logs(work);

    // ---- 1. the guest -----------------------------------------------------------------
    let k = phase(
        "kernel (apt-get download once, cached in target/e2e-kernel)",
        kernel,
    );
    let iscsi_port = storage_support::free_port();
    let initrd = work.join("initramfs.cpio");
    phase("initramfs", || {
        let ir = Initramfs::new(work, &k);
        ir.binary(
            Path::new(env!("CARGO_BIN_EXE_pxesrv-storage")),
            "usr/sbin/pxesrv-storage",
            true,
        );
        ir.file("etc/pxesrv/storage.toml", config(iscsi_port).as_bytes());
        ir.dir("srv/pxesrv");
        ir.file("golden.bin", &marker_sector("GOLDEN"));
        ir.file("thingolden.bin", &marker_sector("THIN-GOLDEN"));
        ir.pack(&initrd);
    });
    let pv = work.join("pv.img");
    std::fs::File::create(&pv)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    let g = phase("guest boot (kernel, modules, network)", || {
        Guest::boot(work, "guest", &k, &initrd, &pv, iscsi_port, Ctl::start())
    });

    let golden_sums = phase(
        "guest: volume group, golden LV, thin pool with a thin golden LV",
        || {
            g.ok(&format!(
                "set -e\npvcreate -ff -y /dev/vda\nvgcreate {VG} /dev/vda\n\
             lvcreate -y -L 64M -n golden {VG}\n\
             dd if=/golden.bin of=/dev/{VG}/golden bs=512 count=1 conv=fsync\n\
             lvcreate -y --type thin-pool -L 96M -n pool {VG}\n\
             lvcreate -y -V 64M -T {VG}/pool -n thingolden\n\
             dd if=/thingolden.bin of=/dev/{VG}/thingolden bs=512 count=1 conv=fsync"
            ));
            assert!(guest_sector(&g, &format!("/dev/{VG}/golden")).contains("GOLDEN"));
            assert!(guest_sector(&g, &format!("/dev/{VG}/thingolden")).contains("THIN-GOLDEN"));
            golden_md5(&g)
        },
    );

    let scripts = phase("guest: pxesrv-storage image add, client attach", || {
        let out = g.ok("pxesrv-storage image add golden --lv golden");
        assert!(out.contains("image golden registered"), "{out}");
        let out = g.ok("pxesrv-storage image add thin --lv thingolden");
        assert!(out.contains("image thin registered"), "{out}");
        for (mac, image, opt) in [
            (A, "golden", ""),
            (B, "golden", ""),
            (C, "thin", ""),
            (D, "golden", "--chap"),
        ] {
            let out = g.ok(&format!(
                "pxesrv-storage client attach {mac} --image {image} {opt}"
            ));
            assert!(
                out.contains(&format!("target {}", tgt_iqn(mac)))
                    && out.contains(&format!("initiator {}", ini(mac))),
                "{out}"
            );
        }
        let list = g.ok(&format!(
            "pxesrv-storage client list\nlvs -o lv_name,lv_attr,origin,pool_lv,lv_size {VG}\n\
             ls /sys/kernel/config/target/iscsi\n\
             ls /sys/kernel/config/target/iscsi/*/tpgt_1/acls /sys/kernel/config/target/core/iblock_0"
        ));
        say(&format!("guest state after attach:\n{list}"));
        let lvs = g.ok(&format!(
            "lvs --noheadings -o lv_name,origin,pool_lv --separator , {VG}"
        ));
        for (mac, origin, pool) in [
            (A, "golden", ""),
            (B, "golden", ""),
            (C, "thingolden", "pool"),
            (D, "golden", ""),
        ] {
            let row = format!("pxc-{mac},{origin},{pool}");
            assert!(
                lvs.lines().any(|l| l.trim() == row),
                "{mac}: a snapshot of {origin} (pool {pool:?}):\n{lvs}"
            );
        }
        let clients = client_list(&g);
        assert_eq!(clients.len(), 4, "{clients:?}");
        assert!(clients.iter().all(|c| c.1 == "ready"), "{clients:?}");
        let root = work.join("pxesrv-root");
        let scripts = fetch_scripts(&g, &root, &[A, B, C, D]);
        say(&format!("static/{A} written in the guest:\n{}", scripts[0]));
        for (mac, s) in [A, B, C, D].iter().zip(&scripts) {
            assert!(
                s.contains(&format!("set initiator-iqn {}\n", ini(mac))),
                "{s}"
            );
            assert!(
                s.contains(&format!(
                    "sanboot iscsi:10.0.2.2::{iscsi_port}:{LUN}:{}",
                    tgt_iqn(mac)
                )),
                "{s}"
            );
        }
        let (user, secret) = chap_of(&scripts[3]);
        assert_eq!(user, format!("pxc-{D}"));
        assert!(secret.len() >= 12, "{secret}");
        assert!(!scripts[0].contains("set username"), "{}", scripts[0]);
        say("GUEST-READY: images and clients set up, boot scripts read back");
        scripts
    });

    // ---- 2. a real initiator on the host ----------------------------------------------
    phase(
        "host initiator: reads, writes and refusals through LIO",
        || {
            assert!(
                has_marker(
                    &iscsi_read(iscsi_port, &tgt_iqn(A), &ini(A), LUN, 512),
                    "GOLDEN"
                ),
                "A's fresh disk is golden"
            );
            write_marker(work, iscsi_port, A, "CLIENT-A");
            for (target, who) in [
                (tgt_iqn(A), ini(B)),
                (tgt_iqn(B), ini(A)),
                (tgt_iqn(A), ini(C)),
                (tgt_iqn(D), ini(A)),
            ] {
                let out = qemu_io(iscsi_port, &target, &who, LUN, &["read 0 512"]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !out.status.success() && err.contains("Authorization failure"),
                    "{who} must not open {target} (the ACL refuses it): {}{err}",
                    String::from_utf8_lossy(&out.stdout)
                );
                say(&format!("{who} on {target} refused: {}", err.trim()));
            }
            // D needs CHAP: its own name alone, or a wrong secret, does not get in.
            let (user, secret) = chap_of(&scripts[3]);
            for chap in [None, Some((user.as_str(), "wrong-secret-123"))] {
                let out =
                    qemu_io_chap(iscsi_port, &tgt_iqn(D), &ini(D), LUN, chap, &["read 0 512"]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !out.status.success(),
                    "D without its secret got in: {chap:?}"
                );
                say(&format!("D with CHAP {chap:?} refused: {}", err.trim()));
            }
            let sector = iscsi_read_chap(
                iscsi_port,
                &tgt_iqn(D),
                &ini(D),
                LUN,
                Some((&user, &secret)),
                512,
            );
            assert!(has_marker(&sector, "GOLDEN"), "D with its CHAP secret");
            assert!(has_marker(
                &iscsi_read(iscsi_port, &tgt_iqn(B), &ini(B), LUN, 512),
                "GOLDEN"
            ));
            assert!(has_marker(
                &iscsi_read(iscsi_port, &tgt_iqn(C), &ini(C), LUN, 512),
                "THIN-GOLDEN"
            ));
            write_marker(work, iscsi_port, C, "CLIENT-C");
            // The writes went into A's and C's snapshots, and nowhere else.
            assert!(guest_sector(&g, &format!("/dev/{VG}/pxc-{A}")).contains("CLIENT-A"));
            assert!(guest_sector(&g, &format!("/dev/{VG}/pxc-{B}")).contains("GOLDEN"));
            assert!(guest_sector(&g, &format!("/dev/{VG}/pxc-{C}")).contains("CLIENT-C"));
            assert_eq!(golden_md5(&g), golden_sums, "a golden LV changed");
            let clients = client_list(&g);
            say(&format!("client list after the writes: {clients:?}"));
        },
    );

    // ---- 3. the full chain: pxesrv, iPXE, sanboot through LIO -------------------------
    let root = work.join("pxesrv-root");
    let (_srv, http_port) = start_pxesrv(&root, &[], &work.join("pxesrv.log"));

    phase("iPXE clients sanboot their LVM snapshots", || {
        assert_boots(work, http_port, A, "a-1", "CLIENT-A");
        assert_boots(work, http_port, B, "b-1", "GOLDEN");
        assert_boots(work, http_port, C, "c-1", "CLIENT-C");
        // With the CHAP user and secret from its boot script.
        assert_boots(work, http_port, D, "d-1", "GOLDEN");
    });

    phase("client reset A in the guest while A is logged in", || {
        // An initiator holds a session on A's target (as a client that just rebooted
        // would): the reset must drop it, not fail on the busy configfs groups or LV.
        let holder = Proc(
            std::process::Command::new("qemu-io")
                .arg("--image-opts")
                .arg(format!(
                    "driver=iscsi,transport=tcp,portal=127.0.0.1:{iscsi_port},target={},lun={LUN},initiator-name={}",
                    tgt_iqn(A),
                    ini(A)
                ))
                .args(["-c", "read 0 512", "-c", "sleep 20000"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("qemu-io"),
        );
        let info = format!(
            "cat /sys/kernel/config/target/iscsi/{}/tpgt_1/acls/{}/info",
            tgt_iqn(A),
            ini(A)
        );
        let t0 = Instant::now();
        loop {
            let out = g.ok(&info);
            if out.contains("TARG_SESS_STATE_LOGGED_IN") {
                say(&format!("A's live session before the reset:\n{out}"));
                break;
            }
            assert!(
                t0.elapsed().as_secs() < 20,
                "no session of A in the guest:\n{out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let out = g.ok(&format!("pxesrv-storage client reset {A}"));
        assert!(out.contains("reset to its golden image"), "{out}");
        drop(holder);
        say(&format!("A's ACL after the reset:\n{}", g.ok(&info)));
        assert!(guest_sector(&g, &format!("/dev/{VG}/pxc-{A}")).contains("GOLDEN"));
        let again = fetch_scripts(&g, &root, &[A]);
        assert_eq!(again[0], scripts[0], "the boot script stays the same");
        assert_boots(work, http_port, A, "a-2", "GOLDEN");
    });

    phase("client detach B in the guest", || {
        g.ok(&format!("pxesrv-storage client detach {B}"));
        let left = traces_of(&g, B);
        assert!(
            left.is_empty(),
            "B's LV, target, entry or state is left:\n{left}"
        );
        for mac in [A, C, D] {
            assert!(!traces_of(&g, mac).is_empty(), "{mac} is still there");
        }
        let out = qemu_io(iscsi_port, &tgt_iqn(B), &ini(B), LUN, &["read 0 512"]);
        assert!(!out.status.success(), "B's target is gone");
        assert_eq!(golden_md5(&g), golden_sums, "a golden LV changed");
    });

    phase(
        "dry run and injected faults leave nothing in LVM or configfs",
        || {
            let out = g.ok(&format!(
                "pxesrv-storage --dry-run client attach {E} --image golden"
            ));
            assert!(
                out.contains(&format!(
                    "lvcreate -y -s -L 67108864b -n pxc-{E} -- {VG}/golden"
                )) && out.contains(&format!(
                    "mkdir /sys/kernel/config/target/iscsi/{}/tpgt_1",
                    tgt_iqn(E)
                )),
                "the plan: {out}"
            );
            let left = traces_of(&g, E);
            assert!(left.is_empty(), "dry run changed something:\n{left}");
            // A failure half-way (after the snapshot, backstore, target, LUN, portal and ACL
            // exist in configfs) is rolled back by the same run.
            let (rc, out) = g.sh(&format!(
                "PXESRV_STORAGE_FAULT=fail:enable pxesrv-storage client attach {E} --image golden"
            ));
            assert!(rc != 0 && out.contains("fault injected"), "{rc}: {out}");
            let left = traces_of(&g, E);
            assert!(left.is_empty(), "rollback left:\n{left}");
            // A run killed half-way leaves pieces; the next run finishes the job.
            let (rc, out) = g.sh(&format!(
                "PXESRV_STORAGE_FAULT=after:acl pxesrv-storage client attach {E} --image golden"
            ));
            assert_eq!(rc, 86, "{out}");
            assert!(!traces_of(&g, E).is_empty(), "the killed run left nothing?");
            let out = g.ok("pxesrv-storage client list");
            assert!(out.contains("interrupted"), "{out}");
            g.ok(&format!("pxesrv-storage client attach {E} --image golden"));
            assert!(has_marker(
                &iscsi_read(iscsi_port, &tgt_iqn(E), &ini(E), LUN, 512),
                "GOLDEN"
            ));
            g.ok(&format!("pxesrv-storage client detach {E}"));
            let left = traces_of(&g, E);
            assert!(left.is_empty(), "detach left:\n{left}");
            assert_eq!(golden_md5(&g), golden_sums, "a golden LV changed");
        },
    );

    // ---- 4. a reboot of the storage server: restore -----------------------------------
    let state = phase("write A again, note the state, crash the guest", || {
        write_marker(work, iscsi_port, A, "CLIENT-A");
        let state = g.ok("cat /var/lib/pxesrv-storage/state.json");
        g.ok("sync");
        state
    });
    drop(g);
    let g = phase("guest boot again, same disk", || {
        Guest::boot(work, "guest2", &k, &initrd, &pv, iscsi_port, Ctl::start())
    });
    phase(
        "pxesrv-storage restore: activate, export, boot entries",
        || {
            // The state dir lives on the guest's tmpfs: put the saved one back, as a real
            // server's /var/lib would have kept it. Nothing else survives: no active LV, no
            // configfs entry, no boot tree.
            g.ok(&format!(
            "mkdir -p /var/lib/pxesrv-storage\ncat > /var/lib/pxesrv-storage/state.json <<'STATE_EOF'\n{state}STATE_EOF"
        ));
            let before = g.ok(&format!(
                "vgchange -an {VG} >/dev/null 2>&1; lvs --noheadings -o lv_name,lv_attr {VG}"
            ));
            say(&format!("LVs after the reboot:\n{before}"));
            let out = g.ok("pxesrv-storage restore");
            say(&format!("restore:\n{out}"));
            for mac in [A, C, D] {
                assert!(
                    out.contains(&format!("{mac}: exported {}", tgt_iqn(mac))),
                    "{out}"
                );
                assert!(out.contains(&format!("{mac}: wrote boot entry")), "{out}");
            }
            let clients = client_list(&g);
            assert_eq!(clients.len(), 3, "{clients:?}");
            assert!(clients.iter().all(|c| c.1 == "ready"), "{clients:?}");
            let again = g.ok("pxesrv-storage restore");
            assert!(
                again.contains("restore: 0 change(s)"),
                "restore twice: {again}"
            );
            let after = fetch_scripts(&g, &root, &[A, C, D]);
            assert_eq!(after[0], scripts[0]);
            assert_eq!(after[1], scripts[2]);
            assert_eq!(after[2], scripts[3], "D keeps its CHAP secret");
            assert_eq!(golden_md5(&g), golden_sums, "a golden LV changed");
        },
    );
    phase("iPXE clients boot after the restore", || {
        assert_boots(work, http_port, A, "a-3", "CLIENT-A");
        assert_boots(work, http_port, C, "c-2", "CLIENT-C");
        let (user, secret) = chap_of(&scripts[3]);
        let sector = iscsi_read_chap(
            iscsi_port,
            &tgt_iqn(D),
            &ini(D),
            LUN,
            Some((&user, &secret)),
            512,
        );
        assert!(
            has_marker(&sector, "GOLDEN"),
            "D with CHAP after the restore"
        );
        let out = qemu_io(iscsi_port, &tgt_iqn(D), &ini(D), LUN, &["read 0 512"]);
        assert!(!out.status.success(), "D without CHAP after the restore");
    });
    drop(g);
    say(&format!(
        "{test}: passed in {:.1}s",
        t_all.elapsed().as_secs_f64()
    ));
}
