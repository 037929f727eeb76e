//! Proof on the host: reflink clones on loop-mounted xfs and btrfs, exported by a real tgtd,
//! read and written by a real initiator (qemu-io's libiscsi driver). Also the refusals,
//! fault injection with re-runs, apply idempotence, dry runs, restore and the boot hook.
//!
//! Needs root, tgtd, tgtadm, qemu-io, mkfs.xfs, mkfs.btrfs. Without them the tests skip
//! loudly; with PXESRV_E2E=1 they fail.

mod storage_support;

use std::path::Path;

use storage_support::*;

const MIB: u64 = 1 << 20;
const TOOLS: &[&str] = &[
    "tgtd",
    "tgtadm",
    "qemu-io",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mount",
    "cp",
];

const A: &str = "52-54-00-aa-00-01";
const B: &str = "52-54-00-aa-00-02";

// Fields drop in order: the daemon must let go of the disks before the unmount.
struct World {
    s: Setup,
    tgtd: Tgtd,
    fs: LoopFs,
}

impl World {
    fn new(kind: FsKind) -> World {
        let fs = LoopFs::new(kind, 512 * MIB);
        let tgtd = Tgtd::start(fs.tmp.path());
        let s = Setup::new(&fs.mnt, tgtd.control, "127.0.0.1", tgtd.port);
        write_marker_disk(&fs.mnt.join("golden.img"), "GOLDEN", 64 * MIB);
        World { fs, tgtd, s }
    }

    fn add_golden(&self) {
        let g = self.fs.mnt.join("golden.img");
        self.s
            .ok(&["image", "add", "golden", "--file", g.to_str().unwrap()]);
    }

    fn client_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.fs.mnt.join("clients"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Exactly the given clients exist, everywhere: state, disks, targets, boot entries.
    fn assert_only(&self, macs: &[&str]) {
        let st = self.s.state_json();
        let mut in_state: Vec<String> = st["clients"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        in_state.sort();
        assert_eq!(in_state, macs, "clients in state");
        assert!(st.get("pending").is_none(), "no pending change: {st}");
        let want_files: Vec<String> = macs.iter().map(|m| format!("{m}.img")).collect();
        assert_eq!(
            self.client_files(),
            want_files,
            "client disks (no leaked clone)"
        );
        let mut targets = self.tgtd.targets();
        targets.sort();
        let want_t: Vec<String> = macs.iter().map(|m| tgt_iqn(m)).collect();
        assert_eq!(targets, want_t, "targets (no leaked target)");
        assert_eq!(
            self.s.static_entries(),
            macs,
            "boot entries (no leaked entry)"
        );
    }
}

fn isolation(kind: FsKind, test: &str) {
    if !require(test, TOOLS) {
        return;
    }
    let w = World::new(kind);
    let port = w.tgtd.port;
    w.add_golden();
    let used0 = w.fs.used();
    w.s.ok(&["client", "attach", "52:54:00:AA:00:01", "--image", "golden"]);
    w.s.ok(&["client", "attach", B, "--image", "golden"]);
    w.assert_only(&[A, B]);
    // Clones share the golden's blocks: two 64 MiB clients cost (almost) nothing.
    assert!(
        w.fs.used() < used0 + 4 * MIB,
        "clones are reflinks: {} -> {}",
        used0,
        w.fs.used()
    );

    // The boot entry tells the client its initiator name and where its disk is.
    let script = std::fs::read_to_string(w.s.root.join("static").join(A)).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains(&format!("set initiator-iqn {}\n", ini(A))),
        "{script}"
    );
    assert!(
        script.contains(&format!("sanboot iscsi:127.0.0.1::{port}:1:{}", tgt_iqn(A))),
        "{script}"
    );

    // A writes through its own target; it reads its data back.
    let out = qemu_io(
        port,
        &tgt_iqn(A),
        &ini(A),
        &["write -P 0xab 1048576 65536", "read -P 0xab 1048576 65536"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("read 65536/65536"), "{out}");
    // B sees the golden data, not A's write.
    assert_eq!(
        iscsi_read(port, &tgt_iqn(B), &ini(B), MIB, 16),
        vec![0u8; 16]
    );
    assert!(has_marker(
        &iscsi_read(port, &tgt_iqn(B), &ini(B), 0, 64),
        "GOLDEN"
    ));
    // The golden image is untouched.
    let golden = std::fs::read(w.fs.mnt.join("golden.img")).unwrap();
    assert!(golden[MIB as usize..MIB as usize + 65536]
        .iter()
        .all(|&b| b == 0));
    // B's initiator name cannot open A's target (and vice versa).
    let out = qemu_io(port, &tgt_iqn(A), &ini(B), &["read 0 512"]);
    assert!(!out.status.success(), "B must not open A's disk");
    let out = qemu_io(port, &tgt_iqn(B), &ini(A), &["read 0 512"]);
    assert!(!out.status.success(), "A must not open B's disk");

    // list shows state and space used.
    let list: serde_json::Value =
        serde_json::from_str(&w.s.ok(&["client", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "ready"),
        "{list}"
    );
    // Space used is the client's own data: A wrote 64 KiB, B nothing.
    let used = |mac: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["mac"] == mac)
            .unwrap()["used"]
            .as_u64()
            .unwrap()
    };
    assert!((65536..=65536 + 4096 * 2).contains(&used(A)), "{list}");
    assert_eq!(used(B), 0, "{list}");

    // Reset drops A's writes.
    w.s.ok(&["client", "reset", A]);
    assert_eq!(
        iscsi_read(port, &tgt_iqn(A), &ini(A), MIB, 16),
        vec![0u8; 16]
    );
    w.assert_only(&[A, B]);

    // The image cannot go while clients use it.
    let e = w.s.fails(&["image", "rm", "golden"]);
    assert!(e.contains("still has clients attached"), "{e}");

    w.s.ok(&["client", "detach", A]);
    w.s.ok(&["client", "detach", B]);
    w.assert_only(&[]);
    w.s.ok(&["image", "rm", "golden"]);
    assert!(
        w.fs.mnt.join("golden.img").is_file(),
        "the golden file is the operator's"
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn xfs_reflink_clients_are_isolated() {
    isolation(FsKind::Xfs, "xfs_reflink_clients_are_isolated");
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn btrfs_reflink_clients_are_isolated() {
    isolation(FsKind::Btrfs, "btrfs_reflink_clients_are_isolated");
}

#[test]
fn ext4_is_refused_with_a_clear_error() {
    // /tmp is ext4 here; any filesystem without reflink must be refused, never copied.
    if !require("ext4_is_refused_with_a_clear_error", &["cp"]) {
        return;
    }
    let disks = tempfile::tempdir().unwrap();
    let fstype = run_ok(
        std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(disks.path()),
    );
    if !fstype.trim().starts_with("ext") {
        skip(
            "ext4_is_refused_with_a_clear_error",
            &format!("temp dir is {} not ext4", fstype.trim()),
        );
        return;
    }
    let s = Setup::new(disks.path(), 1, "127.0.0.1", 3260);
    write_marker_disk(&disks.path().join("golden.img"), "GOLDEN", 64 * MIB);
    let g = disks.path().join("golden.img");
    let e = s.fails(&["image", "add", "golden", "--file", g.to_str().unwrap()]);
    assert!(e.contains("does not support reflink"), "{e}");
    assert!(e.contains("never falls back to a full copy"), "{e}");
    assert!(e.contains("Operation not supported"), "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(disks.path().join("clients"))
        .map(|rd| rd.collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "no probe left behind");
    assert!(s.state_json()["images"]
        .as_object()
        .is_none_or(|o| o.is_empty()));
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn usual_mistakes_have_clear_errors() {
    if !require("usual_mistakes_have_clear_errors", TOOLS) {
        return;
    }
    let w = World::new(FsKind::Xfs);
    let e =
        w.s.fails(&["image", "add", "golden", "--file", "/nonexistent/g.img"]);
    assert!(
        e.contains("image file /nonexistent/g.img does not exist"),
        "{e}"
    );
    let e = w.s.fails(&["image", "add", "../x", "--file", "/x"]);
    assert!(e.contains("image name \"../x\" is not valid"), "{e}");
    w.add_golden();
    let e =
        w.s.fails(&["client", "attach", "nope", "--image", "golden"]);
    assert!(e.contains("is not a MAC address"), "{e}");
    let e = w.s.fails(&["client", "attach", A, "--image", "other"]);
    assert!(e.contains("no image named other"), "{e}");
    w.s.ok(&["client", "attach", A, "--image", "golden"]);
    let e = w.s.fails(&["client", "attach", A, "--image", "golden"]);
    assert!(e.contains("already attached"), "{e}");
    let e = w.s.fails(&[
        "client",
        "attach",
        B,
        "--image",
        "golden",
        "--initiator",
        &ini(A),
    ]);
    assert!(
        e.contains(&format!(
            "initiator name {} is already used by client {A}",
            ini(A)
        )),
        "{e}"
    );
    let e = w.s.fails(&[
        "client",
        "attach",
        B,
        "--image",
        "golden",
        "--initiator",
        "iqn.2024-01.x.y:a;rm",
    ]);
    assert!(e.contains("is not valid"), "{e}");
    // A boot entry someone else wrote is not overwritten.
    std::fs::write(w.s.root.join("static").join(B), "#!ipxe\nexit\n").unwrap();
    let e = w.s.fails(&["client", "attach", B, "--image", "golden"]);
    assert!(e.contains("was not written by pxesrv-storage"), "{e}");
    std::fs::remove_file(w.s.root.join("static").join(B)).unwrap();
    w.assert_only(&[A]);
    // Target daemon down: a config pointing at a control port nobody serves.
    let text = std::fs::read_to_string(&w.s.config).unwrap();
    let mut unused = w.tgtd.control + 1000;
    while Path::new(&format!("/var/run/tgtd/socket.{unused}")).exists() {
        unused += 1;
    }
    let down = text.replace(
        &format!("control_port = {}", w.tgtd.control),
        &format!("control_port = {unused}"),
    );
    std::fs::write(&w.s.config, down).unwrap();
    let e = w.s.fails(&["client", "attach", B, "--image", "golden"]);
    assert!(
        e.contains(&format!(
            "tgt daemon is not answering on control port {unused}"
        )),
        "{e}"
    );
    std::fs::write(&w.s.config, text).unwrap();
    w.assert_only(&[A]);
    // LVM: a volume group that does not exist.
    let lvm_cfg = w.s.dir.path().join("lvm.toml");
    std::fs::write(
        &lvm_cfg,
        std::fs::read_to_string(&w.s.config).unwrap().replace(
            &format!("backend = \"reflink\"\ndir = {:?}", w.fs.mnt),
            "backend = \"lvm\"\nvg = \"pxesrvnosuchvg\"",
        ),
    )
    .unwrap();
    if Path::new("/sbin/lvs").exists() || Path::new("/usr/sbin/lvs").exists() {
        let out = run(w
            .s
            .cmd()
            .env("PXESRV_STORAGE_CONFIG", &lvm_cfg)
            .args(["image", "add", "g2", "--lv", "golden"]));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("volume group pxesrvnosuchvg not found"), "{e}");
    }
    // No space: a full filesystem.
    let filler = w.fs.mnt.join("filler");
    let _ = run(std::process::Command::new("fallocate")
        .args(["-l", &format!("{}", 600 * MIB)])
        .arg(&filler));
    let _ = run(std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}/filler2", w.fs.mnt.display())));
    let out = run(w.s.cmd().args(["client", "attach", B, "--image", "golden"]));
    if !out.status.success() {
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("no space left") || e.contains("No space"), "{e}");
        w.assert_only(&[A]);
    }
}

/// Attach, killed right after each step, then run again: as if the first run never was.
#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn fault_injection_then_rerun_leaves_no_leaks() {
    if !require("fault_injection_then_rerun_leaves_no_leaks", TOOLS) {
        return;
    }
    let w = World::new(FsKind::Xfs);
    w.add_golden();
    for step in [
        "journal",
        "disk",
        "target",
        "lun",
        "acl",
        "boot-entry",
        "commit",
    ] {
        // Killed after the step.
        let out = run(w
            .s
            .cmd()
            .env("PXESRV_STORAGE_FAULT", format!("after:{step}"))
            .args(["client", "attach", A, "--image", "golden"]));
        assert_eq!(
            out.status.code(),
            Some(86),
            "after:{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if step == "commit" {
            // Killed after the commit: the attach is done; running it again says so.
            let e = w.s.fails(&["client", "attach", A, "--image", "golden"]);
            assert!(e.contains("already attached"), "{e}");
        } else {
            w.s.ok(&["client", "attach", A, "--image", "golden"]);
        }
        w.assert_only(&[A]);
        w.s.ok(&["client", "detach", A]);
        w.assert_only(&[]);
    }
    for step in ["disk", "target", "lun", "acl", "boot-entry"] {
        // Failing in the step: rolled back at once, the error names the step.
        let out = run(w
            .s
            .cmd()
            .env("PXESRV_STORAGE_FAULT", format!("fail:{step}"))
            .args(["client", "attach", A, "--image", "golden"]));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(e.contains(&format!("step {step} failed")), "{e}");
        w.assert_only(&[]);
    }
    // Detach and reset killed half-way are finished by the next run.
    w.s.ok(&["client", "attach", A, "--image", "golden"]);
    w.s.ok(&["client", "attach", B, "--image", "golden"]);
    for step in ["journal", "boot-entry-remove", "unexport", "disk-remove"] {
        let out = run(w
            .s
            .cmd()
            .env("PXESRV_STORAGE_FAULT", format!("after:{step}"))
            .args(["client", "detach", B]));
        assert_eq!(out.status.code(), Some(86), "detach after:{step}");
        w.s.ok(&["client", "detach", B]);
        w.assert_only(&[A]);
        w.s.ok(&["client", "attach", B, "--image", "golden"]);
    }
    let port = w.tgtd.port;
    for step in [
        "journal",
        "unexport",
        "disk-remove",
        "disk",
        "target",
        "lun",
        "acl",
        "boot-entry",
    ] {
        let out = qemu_io(port, &tgt_iqn(A), &ini(A), &["write -P 0xcd 1048576 4096"]);
        assert!(out.status.success());
        let out = run(w
            .s
            .cmd()
            .env("PXESRV_STORAGE_FAULT", format!("after:{step}"))
            .args(["client", "reset", A]));
        assert_eq!(out.status.code(), Some(86), "reset after:{step}");
        w.s.ok(&["client", "reset", A]);
        w.assert_only(&[A, B]);
        assert_eq!(
            iscsi_read(port, &tgt_iqn(A), &ini(A), MIB, 8),
            vec![0u8; 8],
            "reset after:{step}"
        );
    }
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn apply_twice_changes_nothing_and_dry_run_changes_nothing() {
    if !require(
        "apply_twice_changes_nothing_and_dry_run_changes_nothing",
        TOOLS,
    ) {
        return;
    }
    let w = World::new(FsKind::Btrfs);
    let g = w.fs.mnt.join("golden.img");
    let file = w.s.dir.path().join("want.toml");
    let want = format!(
        "[[image]]\nname = \"golden\"\nfile = {g:?}\n\n\
         [[client]]\nmac = \"52:54:00:aa:00:01\"\nimage = \"golden\"\n\n\
         [[client]]\nmac = \"52:54:00:aa:00:02\"\nimage = \"golden\"\nmode = \"reset-on-boot\"\n\n\
         [[client]]\nmac = \"52:54:00:aa:00:03\"\nimage = \"golden\"\n"
    );
    std::fs::write(&file, &want).unwrap();
    let f = file.to_str().unwrap();

    // Dry run first: prints the plan, changes nothing.
    let out = w.s.ok(&["--dry-run", "apply", f]);
    assert!(out.contains("cp --reflink=always"), "{out}");
    assert!(out.contains("--op new --mode target"), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert!(
        !w.s.state.join("state.json").exists(),
        "dry run wrote no state"
    );
    w.assert_only(&[]);

    let out = w.s.ok(&["apply", f]);
    assert!(out.contains("apply: 4 change(s)"), "{out}");
    let abc = [
        "52-54-00-aa-00-01",
        "52-54-00-aa-00-02",
        "52-54-00-aa-00-03",
    ];
    w.assert_only(&abc);
    let state1 = std::fs::read(w.s.state.join("state.json")).unwrap();
    let out = w.s.ok(&["apply", f]);
    assert!(out.trim_end().ends_with("apply: 0 change(s)"), "{out}");
    assert_eq!(std::fs::read(w.s.state.join("state.json")).unwrap(), state1);
    w.assert_only(&abc);

    // A dry run of a detach prints the commands and leaves everything in place.
    let out =
        w.s.ok(&["--dry-run", "client", "detach", "52-54-00-aa-00-03"]);
    assert!(out.contains("--op delete --mode target --force"), "{out}");
    w.assert_only(&abc);

    // Dropping a client from the file detaches it; a mode change keeps the disk.
    let edited = want
        .replace(
            "[[client]]\nmac = \"52:54:00:aa:00:03\"\nimage = \"golden\"\n",
            "",
        )
        .replace("mode = \"reset-on-boot\"", "mode = \"persistent\"");
    std::fs::write(&file, edited).unwrap();
    let out = w.s.ok(&["apply", f]);
    assert!(out.contains("detached 52-54-00-aa-00-03"), "{out}");
    assert!(out.contains("52-54-00-aa-00-02: mode persistent"), "{out}");
    w.assert_only(&abc[..2]);
    let out = w.s.ok(&["apply", f]);
    assert!(out.trim_end().ends_with("apply: 0 change(s)"), "{out}");

    // A golden file that cannot be found (moved, being replaced) must not read as "the
    // image changed": that would detach every client and delete its disk.
    let edited = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        edited.replace(&format!("{g:?}"), "\"/nonexistent/golden.img\""),
    )
    .unwrap();
    let err = w.s.fails(&["apply", f]);
    assert!(
        err.contains("/nonexistent/golden.img is not a file; nothing was changed"),
        "{err}"
    );
    w.assert_only(&abc[..2]);
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn restore_after_target_restart_and_boot_hook() {
    if !require("restore_after_target_restart_and_boot_hook", TOOLS) {
        return;
    }
    let mut w = World::new(FsKind::Xfs);
    w.add_golden();
    w.s.ok(&["client", "attach", A, "--image", "golden"]);
    w.s.ok(&[
        "client",
        "attach",
        B,
        "--image",
        "golden",
        "--mode",
        "reset-on-boot",
    ]);
    let port = w.tgtd.port;
    for (mac, p) in [(A, "0xa1"), (B, "0xb2")] {
        let out = qemu_io(
            port,
            &tgt_iqn(mac),
            &ini(mac),
            &[&format!("write -P {p} 1048576 4096")],
        );
        assert!(out.status.success());
    }

    // The "server reboot": the target daemon comes back empty.
    let control = w.tgtd.control;
    w.tgtd.stop();
    w.tgtd = Tgtd::start_on(w.fs.tmp.path(), control, port);
    assert!(w.tgtd.targets().is_empty());
    let out = w.s.ok(&["restore"]);
    assert!(out.contains("restore: 2 change(s)"), "{out}");
    w.assert_only(&[A, B]);
    let out = w.s.ok(&["restore"]);
    assert!(out.contains("restore: 0 change(s)"), "{out}");
    // Persistent data survived.
    assert_eq!(
        iscsi_read(port, &tgt_iqn(A), &ini(A), MIB, 4),
        vec![0xa1; 4]
    );

    // A reset killed half-way, then a reboot, then a restore whose recovery of that reset
    // fails: every other client is exported all the same, and the failure is reported.
    let out = run(w
        .s
        .cmd()
        .env("PXESRV_STORAGE_FAULT", "after:disk-remove")
        .args(["client", "reset", B]));
    assert_eq!(out.status.code(), Some(86));
    w.tgtd.stop();
    w.tgtd = Tgtd::start_on(w.fs.tmp.path(), control, port);
    let out = run(w
        .s
        .cmd()
        .env("PXESRV_STORAGE_FAULT", "fail:disk")
        .arg("restore"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk"), "{err}");
    assert!(
        w.tgtd.targets().contains(&tgt_iqn(A)),
        "A is exported: {:?}",
        w.tgtd.targets()
    );
    assert_eq!(
        iscsi_read(port, &tgt_iqn(A), &ini(A), MIB, 4),
        vec![0xa1; 4]
    );
    // The next restore finishes B's reset.
    w.s.ok(&["restore"]);
    w.assert_only(&[A, B]);
    assert_eq!(iscsi_read(port, &tgt_iqn(B), &ini(B), MIB, 4), vec![0; 4]);
    // Give B its marker back for the hook checks below.
    let out = qemu_io(port, &tgt_iqn(B), &ini(B), &["write -P 0xb2 1048576 4096"]);
    assert!(out.status.success());

    // The boot hook: persistent and unknown clients pass through, untouched.
    for mac in [A, "", "52-54-00-ff-ff-ff", "garbage"] {
        let out = run(w
            .s
            .cmd()
            .env("PXESRV_CLIENT_MAC", mac)
            .env("PXESRV_CLIENT_IP", "127.0.0.1")
            .env("PXESRV_ROOT", &w.s.root)
            .arg("hook"));
        assert!(
            out.status.success(),
            "hook {mac:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        iscsi_read(port, &tgt_iqn(A), &ini(A), MIB, 4),
        vec![0xa1; 4]
    );
    assert_eq!(
        iscsi_read(port, &tgt_iqn(B), &ini(B), MIB, 4),
        vec![0xb2; 4]
    );
    // A reset-on-boot client is back to the golden image.
    let out = run(w
        .s
        .cmd()
        .env("PXESRV_CLIENT_MAC", B)
        .env("PXESRV_CLIENT_IP", "127.0.0.1")
        .arg("hook"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(iscsi_read(port, &tgt_iqn(B), &ini(B), MIB, 4), vec![0; 4]);
    w.assert_only(&[A, B]);
    // The hook fails (so pxesrv answers with an error script) when it cannot reset.
    w.tgtd.stop();
    let out = run(w.s.cmd().env("PXESRV_CLIENT_MAC", B).arg("hook"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tgt daemon is not answering"));
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn chap_is_required_when_asked_for() {
    if !require(
        "chap_is_required_when_asked_for",
        &[TOOLS, &["iscsi-inq"]].concat(),
    ) {
        return;
    }
    let w = World::new(FsKind::Xfs);
    w.add_golden();
    w.s.ok(&["client", "attach", A, "--image", "golden", "--chap"]);
    let script = std::fs::read_to_string(w.s.root.join("static").join(A)).unwrap();
    let user = format!("pxc-{A}");
    assert!(
        script.contains(&format!("set username {user}\n")),
        "{script}"
    );
    let secret = script
        .lines()
        .find_map(|l| l.strip_prefix("set password "))
        .expect("password in the script")
        .to_string();
    assert_eq!(secret.len(), 16);
    let inq = |creds: &str| {
        run(std::process::Command::new("iscsi-inq")
            .args(["-i", &ini(A)])
            .arg(format!(
                "iscsi://{creds}127.0.0.1:{}/{}/1",
                w.tgtd.port,
                tgt_iqn(A)
            )))
        .status
        .success()
    };
    assert!(!inq(""), "no credentials: refused");
    assert!(
        !inq(&format!("{user}%wrongwrongwrong1@")),
        "wrong secret: refused"
    );
    assert!(
        inq(&format!("{user}%{secret}@")),
        "the client's credentials: admitted"
    );
    w.s.ok(&["client", "detach", A]);
    w.assert_only(&[]);
    let accounts = w.tgtd.tgtadm(&["--op", "show", "--mode", "account"]);
    assert!(
        !String::from_utf8_lossy(&accounts.stdout).contains(&user),
        "account removed"
    );
}

#[test]
#[cfg_attr(
    not(pxesrv_e2e),
    ignore = "end-to-end: loop mounts, tgtd and qemu-io as root; run with sudo PXESRV_E2E=1 cargo test --test storage_reflink_tgt"
)]
fn concurrent_invocations_are_serialised() {
    if !require("concurrent_invocations_are_serialised", TOOLS) {
        return;
    }
    let w = World::new(FsKind::Xfs);
    w.add_golden();
    let macs: Vec<String> = (0..12).map(|i| format!("52-54-00-cc-00-{i:02x}")).collect();
    // Twelve attaches at once: each needs a free tid, a state update and a boot entry.
    let children: Vec<_> = macs
        .iter()
        .map(|m| {
            w.s.cmd()
                .args(["client", "attach", m, "--image", "golden"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refs: Vec<&str> = macs.iter().map(String::as_str).collect();
    w.assert_only(&refs);
    // And twelve detaches at once.
    let children: Vec<_> = macs
        .iter()
        .map(|m| {
            w.s.cmd()
                .args(["client", "detach", m])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    w.assert_only(&[]);
}
