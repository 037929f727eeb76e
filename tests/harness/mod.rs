//! End-to-end harness: real iPXE clients (QEMU, TCG) booting through the real `pxesrv`.
//!
//! Reusable pieces, each cleaning up after itself on drop (also when a test panics):
//! - [`Case`]: one test's skip decision, temp directory, boot tree and timing;
//! - [`tree::Tree`]: a boot tree in a temp dir, with marker targets ([`marker`]);
//! - [`server::Server`]: `pxesrv` on that tree, its log parsed into events;
//! - [`qemu::VmSpec`] / [`qemu::boot`]: one VM boot with a given MAC and network, serial
//!   console, exit status and duration collected, at most [`MAX_VMS`] at a time;
//! - [`netns::Netns`] / [`netns::Dnsmasq`]: a private network namespace with a bridge, taps
//!   and dnsmasq handing out real addresses;
//! - [`check`]: asserting which target a boot reached, printing console and server log if not.
//!
//! The tests run only with `PXESRV_E2E=1` ([`enabled`]); there, a missing tool fails the test.
#![allow(dead_code)] // every test binary uses its own part of the harness

pub mod check;
pub mod marker;
pub mod netns;
pub mod qemu;
pub mod server;
pub mod tree;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use qemu::VmSpec;
use server::{Server, ServerSpec};
use tree::Tree;

/// The boot file iPXE clients are pointed at, as the deployment's DHCP server does: iPXE
/// expands `${net0/mac}` in the boot file name.
pub const REDIRECT_WITH_MAC: &str = "/redirect?mac=${net0/mac}";

/// How to run the suite, for skip messages and failures.
pub const HOW_TO_RUN: &str = "PXESRV_E2E=1 cargo test --test e2e";

/// TCG is CPU-bound and the CI machine has 2 cores: never more VMs than this at once.
pub const MAX_VMS: usize = 2;

/// Writes a line to the real stderr: cargo's test capture hides `eprintln!` of passing tests,
/// but not this.
pub fn say(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(format!("[e2e] {msg}\n").as_bytes());
    let _ = err.flush();
}

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Qemu,
    /// The iPXE option ROM QEMU's virtio-net-pci boots from (Debian package ipxe-qemu).
    IpxeRom,
    Dnsmasq,
    Ip,
    /// Network namespaces, bridges and taps need root.
    Root,
}

/// True when the e2e suite should run (`PXESRV_E2E=1`). Then every need is checked and a
/// missing one panics: in CI a missing tool is a failure, never a skip. Otherwise says loudly
/// that `test` was skipped and how to run it.
pub fn enabled(test: &str, needs: &[Need]) -> bool {
    if std::env::var("PXESRV_E2E").as_deref() != Ok("1") {
        say(&format!(
            "SKIPPED {test}: end-to-end tests boot QEMU VMs and run only with PXESRV_E2E=1 \
             (as root, with the packages in .ci/e2e-deps). Run them: {HOW_TO_RUN}"
        ));
        return false;
    }
    let missing: Vec<String> = needs.iter().filter_map(|n| check_need(*n).err()).collect();
    assert!(
        missing.is_empty(),
        "PXESRV_E2E=1 but {test} cannot run:\n  {}\n(install the packages in .ci/e2e-deps)",
        missing.join("\n  ")
    );
    true
}

fn check_need(need: Need) -> Result<(), String> {
    match need {
        Need::Qemu => tool("qemu-system-x86_64").map(drop),
        Need::IpxeRom => ipxe_rom().map(drop),
        Need::Dnsmasq => tool("dnsmasq").map(drop),
        Need::Ip => tool("ip").map(drop),
        Need::Root => {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_string();
            if uid == "0" {
                Ok(())
            } else {
                Err(format!(
                    "not running as root (effective uid {uid}): network namespaces need it"
                ))
            }
        }
    }
}

/// A command for a long-running child (server, VM, dnsmasq) that dies with the thread that
/// started it: `setpriv --pdeathsig KILL` (util-linux, always installed on Debian) sets the
/// parent-death signal and execs `argv`, so the pid stays the child's. Drop guards stop
/// children normally; this covers a test process that is itself killed (CI timeout).
pub fn long_running(argv: &[impl AsRef<std::ffi::OsStr>]) -> std::process::Command {
    match tool("setpriv") {
        Ok(setpriv) => {
            let mut cmd = std::process::Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).args(argv);
            cmd
        }
        Err(_) => {
            let mut cmd = std::process::Command::new(argv[0].as_ref());
            cmd.args(&argv[1..]);
            cmd
        }
    }
}

/// The absolute path of `name`, looked up in `PATH` and the sbin directories (which a
/// non-login root shell may lack).
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("{name} not found in PATH or /usr/sbin, /sbin"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The iPXE ROM QEMU loads for virtio-net-pci, checked so a missing ROM is reported as such
/// instead of as a VM that silently has no network boot.
pub fn ipxe_rom() -> Result<PathBuf, String> {
    let candidates = [
        "/usr/lib/ipxe/qemu/efi-virtio.rom",
        "/usr/share/qemu/efi-virtio.rom",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| format!("iPXE ROM for virtio-net not found (looked at {candidates:?})"))
}

/// A counting semaphore for VM slots, shared by all tests of the binary.
pub(crate) struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

pub(crate) static VM_SLOTS: Slots = Slots {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

pub(crate) struct SlotGuard;

impl Slots {
    pub(crate) fn acquire(&'static self) -> SlotGuard {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_VMS {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        SlotGuard
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut used = VM_SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        VM_SLOTS.freed.notify_one();
    }
}

/// Seconds with one decimal, for duration lines.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A fresh directory for one test's files (tree, consoles, logs), removed on drop unless
/// `PXESRV_E2E_KEEP=1` (then its path is printed, to look at after the run).
pub fn workdir(test: &str) -> tempfile::TempDir {
    let keep = std::env::var("PXESRV_E2E_KEEP").as_deref() == Ok("1");
    let dir = tempfile::Builder::new()
        .prefix(&format!("pxesrv-e2e-{test}-"))
        .disable_cleanup(keep)
        .tempdir()
        .expect("create a temp dir for the test");
    if keep {
        say(&format!("{test}: files kept in {}", dir.path().display()));
    }
    dir
}

/// One test's directory, boot tree and timing.
pub struct Case {
    pub name: &'static str,
    pub dir: tempfile::TempDir,
    pub tree: Tree,
    started: Instant,
}

impl Case {
    /// `None` (after saying so loudly) unless `PXESRV_E2E=1`.
    pub fn new(name: &'static str, needs: &[Need]) -> Option<Case> {
        if !enabled(name, needs) {
            return None;
        }
        let dir = workdir(name);
        let tree = Tree::new(&dir.path().join("root"));
        Some(Case {
            name,
            dir,
            tree,
            started: Instant::now(),
        })
    }

    /// `pxesrv` on this case's tree, on the loopback (QEMU user networking reaches it).
    pub fn server(&self) -> Server {
        Server::start(ServerSpec::pxesrv(
            self.tree.root(),
            &["127.0.0.1:0"],
            &self.dir.path().join("pxesrv.log"),
        ))
    }

    /// A VM on QEMU user networking whose DHCP boot file is `path` on `server`.
    pub fn vm(&self, name: &str, mac: &str, server: &Server, path: &str) -> VmSpec {
        VmSpec::user(name, mac, &format!("{}{path}", server.url_via("10.0.2.2")))
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        say(&format!(
            "test {} {} after {}",
            self.name,
            if std::thread::panicking() {
                "FAILED"
            } else {
                "passed"
            },
            secs(self.started.elapsed())
        ));
    }
}
