//! Shared pieces of the storage end-to-end tests: loop-mounted filesystems, a private tgtd,
//! the tool's config, real iSCSI reads and writes (qemu-io), marker boot sectors.
//!
//! Every resource is owned by a guard whose Drop undoes it, so a failing test leaves no
//! mount, daemon or VM behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PREFIX: &str = "iqn.2024-01.test.pxesrv";

/// `PXESRV_E2E=1`: a missing tool is a failure, not a skip.
pub fn e2e_required() -> bool {
    std::env::var("PXESRV_E2E").is_ok_and(|v| v == "1")
}

/// Says loudly (past cargo's capture) that a test did not run, and how to run it.
pub fn skip(test: &str, why: &str) {
    let msg = format!(
        "\n*** SKIPPED {test}: {why}\n*** run as root with the tools installed, and set PXESRV_E2E=1 to make this a failure:\n***   sudo PXESRV_E2E=1 cargo test --test {}\n\n",
        std::env::args()
            .next()
            .and_then(|p| Path::new(&p).file_name().map(|f| f.to_string_lossy().into_owned()))
            .map(|f| f.rsplit_once('-').map(|(a, _)| a.to_string()).unwrap_or(f))
            .unwrap_or_default()
    );
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file()
}

/// True if the test can run. Missing tools or not being root: a skip, or a panic under
/// PXESRV_E2E=1.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !on_path(t))
        .map(|t| t.to_string())
        .collect();
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.map(|o| o.stdout != b"0\n").unwrap_or(true) {
        missing.push("root (mount, tgtd)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("missing {}", missing.join(", "));
    if e2e_required() {
        panic!("{test}: PXESRV_E2E=1 but {why}");
    }
    skip(test, &why);
    false
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A 512-byte boot sector that prints MARKER on COM1 and exits QEMU with status 33
/// (isa-debug-exit), in a sparse file of `size` bytes (>= 8 MiB for iPXE's geometry guess).
pub fn marker_sector(marker: &str) -> Vec<u8> {
    let msg_off: u16 = 0x1B;
    let addr = (0x7C00 + msg_off).to_le_bytes();
    let mut s: Vec<u8> = vec![
        0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0xFC, 0xBE, addr[0], addr[1], 0xBA, 0xF8, 0x03, 0xAC, 0x84,
        0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8, 0xB0, 0x10, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD,
    ];
    assert_eq!(s.len(), msg_off as usize);
    s.extend_from_slice(b"\r\n");
    s.extend_from_slice(marker.as_bytes());
    s.extend_from_slice(b"\r\n\0");
    assert!(s.len() <= 446);
    s.resize(510, 0);
    s.extend_from_slice(&[0x55, 0xAA]);
    s
}

pub fn write_marker_disk(path: &Path, marker: &str, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&marker_sector(marker)).unwrap();
    f.set_len(size).unwrap();
    f.sync_all().unwrap();
}

#[derive(Clone, Copy, Debug)]
pub enum FsKind {
    Xfs,
    Btrfs,
}

/// A filesystem image mounted on a loop device in its own temp dir; unmounted on drop.
pub struct LoopFs {
    pub tmp: tempfile::TempDir,
    pub mnt: PathBuf,
    mounted: bool,
}

impl LoopFs {
    pub fn new(kind: FsKind, size: u64) -> LoopFs {
        let tmp = tempfile::Builder::new()
            .prefix("pxesrv-storage-fs-")
            .tempdir()
            .unwrap();
        let img = tmp.path().join("fs.img");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        match kind {
            FsKind::Xfs => run_ok(
                Command::new("mkfs.xfs")
                    .args(["-q", "-f", "-m", "reflink=1"])
                    .arg(&img),
            ),
            FsKind::Btrfs => run_ok(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&img)),
        };
        run_ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        );
        LoopFs {
            tmp,
            mnt,
            mounted: true,
        }
    }

    /// Bytes used on the filesystem (df).
    pub fn used(&self) -> u64 {
        let out = run_ok(
            Command::new("df")
                .args(["-B1", "--output=used"])
                .arg(&self.mnt),
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            for _ in 0..20 {
                if Command::new("umount")
                    .arg(&self.mnt)
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// A private tgtd: its own control port and portal; stopped the way tgtd needs on drop.
pub struct Tgtd {
    pub control: u16,
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Tgtd {
    pub fn start(dir: &Path) -> Tgtd {
        let port = free_port();
        // Control ports are sockets /var/run/tgtd/socket.N: pick one nobody uses.
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT: AtomicU16 = AtomicU16::new(0);
        // tgtadm accepts control ports up to 32767.
        let mut control =
            1000 + (std::process::id() % 1900) as u16 * 16 + NEXT.fetch_add(1, Ordering::SeqCst);
        while Path::new(&format!("/var/run/tgtd/socket.{control}")).exists() {
            control += 1;
        }
        Tgtd::start_on(dir, control, port)
    }

    pub fn start_on(dir: &Path, control: u16, port: u16) -> Tgtd {
        let log = dir.join(format!("tgtd-{control}.log"));
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start tgtd");
        let t = Tgtd {
            control,
            port,
            child: Some(child),
            log,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if t.tgtadm(&["--op", "show", "--mode", "target"])
                .status
                .success()
            {
                return t;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "tgtd on control port {control} did not come up; see {}",
            t.log.display()
        );
    }

    pub fn tgtadm(&self, args: &[&str]) -> Output {
        run(Command::new("tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args))
    }

    /// The IQNs of the targets that exist.
    pub fn targets(&self) -> Vec<String> {
        let out = self.tgtadm(&["--op", "show", "--mode", "target"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("Target "))
            .filter_map(|l| l.split_once(": ").map(|(_, iqn)| iqn.to_string()))
            .collect()
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let c = self.control.to_string();
        let _ = run(Command::new("tgtadm").args([
            "-C", &c, "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline",
        ]));
        let out = self.tgtadm(&["--op", "show", "--mode", "target"]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((tid, _)) = line.strip_prefix("Target ").and_then(|l| l.split_once(':')) {
                let _ = self.tgtadm(&[
                    "--op", "delete", "--mode", "target", "--force", "--tid", tid,
                ]);
            }
        }
        let _ = run(Command::new("tgtadm").args(["-C", &c, "--op", "delete", "--mode", "system"]));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                self.remove_socket();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.remove_socket();
    }

    fn remove_socket(&self) {
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A complete setup: a boot tree, a state dir, a config file for the tool.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Setup {
    /// `portal_host`: what clients are told (10.0.2.2 for QEMU's slirp, 127.0.0.1 for
    /// host initiators).
    pub fn new(disk_dir: &Path, control: u16, portal_host: &str, port: u16) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("pxesrv-storage-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir(&root).unwrap();
        let config = dir.path().join("storage.toml");
        std::fs::write(
            &config,
            format!(
                "root = {root:?}\nstate_dir = {state:?}\nportal = \"{portal_host}:{port}\"\n\
                 iqn_prefix = \"{PREFIX}\"\ncommand_timeout = \"30s\"\n\
                 [disk]\nbackend = \"reflink\"\ndir = {disk_dir:?}\n\
                 [target]\nbackend = \"tgt\"\ncontrol_port = {control}\n"
            ),
        )
        .unwrap();
        Setup {
            dir,
            root,
            state,
            config,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pxesrv-storage"));
        c.env("PXESRV_STORAGE_CONFIG", &self.config)
            .env_remove("PXESRV_STORAGE_FAULT")
            .env_remove("PXESRV_STORAGE_DRY_RUN");
        c
    }

    /// Runs the tool; panics unless it succeeds. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd().args(args))
    }

    /// Runs the tool; panics if it succeeds. Returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        assert!(
            !out.status.success(),
            "{args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn state_json(&self) -> serde_json::Value {
        match std::fs::read_to_string(self.state.join("state.json")) {
            Ok(t) => serde_json::from_str(&t).unwrap(),
            Err(_) => serde_json::json!({}),
        }
    }

    pub fn static_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("static"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn ini(mac: &str) -> String {
    format!("{PREFIX}:client-{mac}")
}
pub fn tgt_iqn(mac: &str) -> String {
    format!("{PREFIX}:disk-{mac}")
}

fn image_opts(port: u16, target: &str, initiator: &str, lun: u32) -> String {
    format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{port},target={target},lun={lun},initiator-name={initiator}"
    )
}

/// Runs qemu-io commands against a target as `initiator` (a real iSCSI login).
pub fn qemu_io(port: u16, target: &str, initiator: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.arg("--image-opts")
        .arg(image_opts(port, target, initiator, 1));
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run(&mut c)
}

/// Reads `len` bytes at `off` through iSCSI (LUN 1, tgt).
pub fn iscsi_read(port: u16, target: &str, initiator: &str, off: u64, len: usize) -> Vec<u8> {
    iscsi_read_lun(port, target, initiator, 1, off, len).expect("qemu-io read")
}

/// Reads `len` bytes at `off` of `lun` through iSCSI; Err(stderr) if the login or read fails.
pub fn iscsi_read_lun(
    port: u16,
    target: &str,
    initiator: &str,
    lun: u32,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, String> {
    let out = run(Command::new("qemu-io")
        .arg("--image-opts")
        .arg(image_opts(port, target, initiator, lun))
        .arg("-c")
        .arg(format!("read -v {off} {len}")));
    if !out.status.success() {
        return Err(format!(
            "qemu-io read as {initiator} from {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bytes = parse_qemu_io_dump(&String::from_utf8_lossy(&out.stdout));
    if bytes.len() != len {
        return Err(format!(
            "parsed {} of {len} bytes from the qemu-io dump:\n{}",
            bytes.len(),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(bytes)
}

/// Writes the contents of `src` at offset 0 through iSCSI.
pub fn iscsi_write_file(port: u16, target: &str, initiator: &str, src: &Path) {
    let len = std::fs::metadata(src).unwrap().len();
    let out = qemu_io(
        port,
        target,
        initiator,
        &[&format!("write -s {} 0 {len}", src.display())],
    );
    assert!(
        out.status.success(),
        "qemu-io write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn has_marker(sector: &[u8], marker: &str) -> bool {
    sector.windows(marker.len()).any(|w| w == marker.as_bytes())
}

/// Boots an iPXE client VM with `mac` from pxesrv's `/redirect` (TCG). Returns QEMU's exit
/// status (33: a marker sector ran) and the serial output (iPXE's and the sector's).
pub fn ipxe_boot(dir: &Path, http_port: u16, mac: &str, tag: &str) -> (Option<i32>, String) {
    let serial = dir.join(format!("ipxe-{tag}.log"));
    let colon = mac.replace('-', ":");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-machine", "graphics=off", "-m", "256"])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .args(["-boot", "n,reboot-timeout=0"])
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,bootfile=http://10.0.2.2:{http_port}/redirect?mac=${{net0/mac}}"
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={colon}"))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut vm = Proc(child);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = vm.0.try_wait().unwrap() {
            break s.code();
        }
        if t0.elapsed() > Duration::from_secs(90) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(vm);
    let out =
        String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).replace('\r', "");
    say(&format!(
        "iPXE boot {tag} ({mac}): qemu status {status:?} in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    (status, out)
}

/// Prints past cargo's output capture.
pub fn say(msg: &str) {
    let _ = std::io::stderr().write_all(format!("{msg}\n").as_bytes());
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bytes of a `qemu-io -c "read -v OFF LEN"` hex dump.
pub fn parse_qemu_io_dump(stdout: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in stdout.lines() {
        let Some((addr, rest)) = line.split_once(":  ") else {
            continue;
        };
        if !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        for h in rest.split_whitespace().take(16) {
            match u8::from_str_radix(h, 16) {
                Ok(b) if h.len() == 2 => bytes.push(b),
                _ => break,
            }
        }
    }
    bytes
}

/// The real pxesrv on 127.0.0.1 (port chosen by the kernel) with `extra` arguments, its
/// stderr in `log`.
pub fn start_pxesrv(root: &Path, extra: &[&str], log: &Path) -> (Proc, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pxesrv"))
        .arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pxesrv");
    let stderr = child.stderr.take().unwrap();
    let guard = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let log = log.to_owned();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(&log).unwrap();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
            if !sent && line.contains("listening") {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                {
                    let _ = tx.send(addr.to_string());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("pxesrv did not say it is listening");
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    (guard, port)
}
