//! The guest harness of `tests/storage_guest.rs`: a QEMU (TCG) guest running a Debian
//! kernel, so that device-mapper (LVM) and the kernel iSCSI target (LIO, configfs) exist,
//! which this host kernel lacks.
//!
//! - `kernel()`: the current Debian kernel package, fetched with `apt-get download` and
//!   unpacked (never installed) once into `target/e2e-kernel/`.
//! - `Initramfs`: busybox, the kernel modules needed (with their dependencies), host
//!   binaries with the libraries `ldd` names, the `init` of this directory and extra files;
//!   an uncompressed newc cpio (no decompression under TCG).
//! - `Guest`: the VM, killed on drop. Its init fetches shell scripts from `Ctl`, a tiny
//!   HTTP server of the test on 127.0.0.1 (10.0.2.2 in the guest), runs them and posts
//!   their output and exit status back, so the host test drives every step.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use crate::storage_support::{ipxe_boot, parse_qemu_io_dump, say, start_pxesrv, Proc};

/// Runs `f` and prints how long it took.
pub fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    say(&format!("--- phase {name} ..."));
    let r = f();
    say(&format!(
        "--- phase {name}: {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    r
}

/// Runs a command; panics with its output unless it succeeds. Returns stdout.
pub fn cmd_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The path of `tool` on PATH or in /usr/sbin, /sbin.
pub fn which(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

// ---- the kernel ---------------------------------------------------------------------------

pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/VERSION`
    pub moddir: PathBuf,
    pub version: String,
}

/// `target/e2e-kernel/`: survives `cargo test` runs, goes with `cargo clean`.
fn kernel_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .join("e2e-kernel")
}

/// The Debian kernel that `linux-image-amd64` depends on now, unpacked once.
pub fn kernel() -> Kernel {
    let deps = cmd_ok(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .unwrap_or_else(|| panic!("apt-cache depends linux-image-amd64 names no kernel:\n{deps}"))
        .to_string();
    let cache = kernel_cache();
    let dir = cache.join(&pkg);
    if !dir.join(".ready").exists() {
        let tmp = cache.join(format!("{pkg}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        cmd_ok(
            Command::new("apt-get")
                .args(["download", "-q"])
                .arg(&pkg)
                .current_dir(&tmp),
        );
        let deb = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("apt-get download left no .deb");
        cmd_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp));
        std::fs::remove_file(&deb).unwrap();
        let version = only_child(&tmp.join("lib/modules"));
        // The host has no kmod: busybox writes modules.dep.
        cmd_ok(
            Command::new("busybox")
                .args(["depmod", "-b"])
                .arg(&tmp)
                .arg(&version),
        );
        std::fs::write(tmp.join(".ready"), &pkg).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        // Older kernels are not needed any more (about 400 MB each).
        for old in std::fs::read_dir(&cache).unwrap().filter_map(|e| e.ok()) {
            if old.path() != dir {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
    }
    let version = only_child(&dir.join("lib/modules"));
    Kernel {
        vmlinuz: dir.join(format!("boot/vmlinuz-{version}")),
        moddir: dir.join("lib/modules").join(&version),
        version,
    }
}

fn only_child(dir: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{}: {names:?}", dir.display());
    names.into_iter().next().unwrap()
}

/// The modules (paths relative to the module dir) needed for `names`, dependencies first.
/// Names built into the kernel need nothing.
pub fn module_closure(moddir: &Path, names: &[&str]) -> Vec<String> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).unwrap();
    let builtin: Vec<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|f| {
            f.to_string_lossy()
                .split(".ko")
                .next()
                .unwrap()
                .replace('-', "_")
        })
        .collect();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let base = Path::new(path).file_name().unwrap().to_string_lossy();
        let name = base.split(".ko").next().unwrap().replace('-', "_");
        by_name.insert(name, path.to_string());
        deps.insert(
            path.to_string(),
            rest.split_whitespace().map(str::to_string).collect(),
        );
    }
    fn visit(p: &str, deps: &HashMap<String, Vec<String>>, out: &mut Vec<String>) {
        if out.iter().any(|x| x == p) {
            return;
        }
        for d in &deps[p] {
            visit(d, deps, out);
        }
        out.push(p.to_string());
    }
    let mut out = Vec::new();
    for n in names {
        if builtin.iter().any(|b| *b == n.replace('-', "_")) {
            continue;
        }
        let p = by_name
            .get(&n.replace('-', "_"))
            .unwrap_or_else(|| panic!("module {n} is not in this kernel"));
        visit(p, &deps, &mut out);
    }
    out
}

// ---- the initramfs ------------------------------------------------------------------------

pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    // Without it every LIO login fails (crypto_alloc_ahash for the iSCSI digests).
    "crc32c_generic",
    "dm_mod",
    "dm_snapshot",
    // Thin pools: the lvm backend takes thin snapshots of a thin golden LV.
    "dm_thin_pool",
    "configfs",
    "target_core_mod",
    "target_core_iblock",
    "target_core_file",
    "iscsi_target_mod",
];

/// lvm(8) runs the command named by argv[0].
const LVM_COMMANDS: &[&str] = &[
    "lvs", "vgs", "pvs", "lvcreate", "lvremove", "lvchange", "vgcreate", "pvcreate",
];

/// No udev in the guest: LVM makes its device nodes itself.
/// No thin_check in the guest (thin-provisioning-tools): pools activate unchecked.
const LVM_CONF: &str = "activation {\n  udev_sync = 0\n  udev_rules = 0\n  monitoring = 0\n}\n\
devices {\n  obtain_device_list_from_udev = 0\n}\n\
global {\n  thin_check_executable = \"\"\n}\n";

pub struct Initramfs {
    root: PathBuf,
}

impl Initramfs {
    /// busybox, the modules, lvm and dmsetup, the init.
    pub fn new(work: &Path, k: &Kernel) -> Initramfs {
        let root = work.join("initramfs-root");
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "bin",
            "sbin",
            "usr/sbin",
            "etc/lvm",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "var/lib",
            "lib64",
            "lib/x86_64-linux-gnu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let me = Initramfs { root };
        me.binary(&which("busybox").expect("busybox"), "bin/busybox", false);
        let mut list = String::new();
        for m in module_closure(&k.moddir, MODULES) {
            me.copy(
                &k.moddir.join(&m),
                &format!("lib/modules/{}/{m}", k.version),
            );
            list.push_str(&format!("{}/{m}\n", k.version));
        }
        me.file("modules.list", list.as_bytes());
        for tool in ["lvm", "dmsetup"] {
            let p = which(tool).unwrap_or_else(|| panic!("{tool} (lvm2) is not installed"));
            me.binary(&p, &format!("usr/sbin/{tool}"), false);
        }
        for c in LVM_COMMANDS {
            std::os::unix::fs::symlink("lvm", me.root.join("usr/sbin").join(c)).unwrap();
        }
        me.file("etc/lvm/lvm.conf", LVM_CONF.as_bytes());
        me.file("init", include_bytes!("init"));
        me.chmod("init", 0o755);
        me
    }

    fn copy(&self, src: &Path, dest: &str) {
        let d = self.root.join(dest);
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::copy(src, &d).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }

    fn chmod(&self, dest: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.root.join(dest), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }

    pub fn file(&self, dest: &str, content: &[u8]) {
        let d = self.root.join(dest);
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::write(d, content).unwrap();
    }

    pub fn dir(&self, dest: &str) {
        std::fs::create_dir_all(self.root.join(dest)).unwrap();
    }

    /// A host executable and the shared libraries it loads. `strip`: drop its debug info
    /// (a debug build of the tool is about 100 MB) when `strip` is there.
    pub fn binary(&self, src: &Path, dest: &str, strip: bool) {
        let d = self.root.join(dest);
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        let stripped = strip
            && which("strip").is_some()
            && Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&d)
                .arg(src)
                .status()
                .is_ok_and(|s| s.success());
        if !stripped {
            self.copy(src, dest);
        }
        self.chmod(dest, 0o755);
        let out = Command::new("ldd").arg(src).output().expect("ldd");
        // "not a dynamic executable" (busybox-static): nothing to add.
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let rel = lib.trim_start_matches('/');
            if !self.root.join(rel).exists() {
                self.copy(Path::new(lib), rel);
            }
        }
    }

    /// Packs it: an uncompressed newc cpio (busybox cpio).
    pub fn pack(&self, out: &Path) {
        let t0 = Instant::now();
        let list = cmd_ok(Command::new("find").arg(".").current_dir(&self.root));
        let mut child = Command::new("busybox")
            .args(["cpio", "-o", "-H", "newc"])
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox cpio");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "busybox cpio failed");
        say(&format!(
            "initramfs {}: {} MB in {:.1}s",
            out.display(),
            std::fs::metadata(out).unwrap().len() >> 20,
            t0.elapsed().as_secs_f64()
        ));
    }
}

// ---- the control server -------------------------------------------------------------------

#[derive(Default)]
struct CtlState {
    scripts: Vec<String>,
    results: HashMap<usize, (i32, String)>,
    polls: usize,
}

/// The test's side of the guest's command loop: `GET /cmd/N` answers script N (waiting up
/// to 20 s for it, else 404), `POST /done/N/RC` takes its output.
pub struct Ctl {
    pub port: u16,
    state: Arc<(Mutex<CtlState>, Condvar)>,
}

impl Ctl {
    pub fn start() -> Ctl {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<CtlState>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Ctl { port, state }
    }

    /// Waits for the guest's first poll: it is up and reaches the host.
    pub fn wait_polled(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.state;
        let g = m.lock().unwrap();
        let (g, _) = cv.wait_timeout_while(g, timeout, |s| s.polls == 0).unwrap();
        g.polls > 0
    }

    /// Queues a script; waits for its exit status and output.
    pub fn run(&self, script: &str, timeout: Duration) -> Option<(i32, String)> {
        let (m, cv) = &*self.state;
        let mut g = m.lock().unwrap();
        let n = g.scripts.len();
        let mut script = script.to_string();
        if !script.ends_with('\n') {
            script.push('\n');
        }
        g.scripts.push(script);
        cv.notify_all();
        let (mut g, _) = cv
            .wait_timeout_while(g, timeout, |s| !s.results.contains_key(&n))
            .unwrap();
        g.results.remove(&n)
    }
}

fn serve(conn: TcpStream, st: &(Mutex<CtlState>, Condvar)) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (m, cv) = st;
    let reply = match (method.as_str(), seg.as_slice()) {
        ("GET", ["cmd", n]) => {
            let n: usize = n.parse().unwrap_or(usize::MAX);
            let mut g = m.lock().unwrap();
            g.polls += 1;
            cv.notify_all();
            let (g, _) = cv
                .wait_timeout_while(g, Duration::from_secs(20), |s| s.scripts.len() <= n)
                .unwrap();
            g.scripts.get(n).cloned()
        }
        ("POST", ["done", n, rc]) => {
            let mut g = m.lock().unwrap();
            g.results.insert(
                n.parse().unwrap_or(usize::MAX),
                (
                    rc.parse().unwrap_or(-1),
                    String::from_utf8_lossy(&body).into_owned(),
                ),
            );
            cv.notify_all();
            Some("ok\n".to_string())
        }
        _ => None,
    };
    let mut w = conn;
    match reply {
        Some(b) => write!(
            w,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
        None => write!(
            w,
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    }
}

// ---- the guest ----------------------------------------------------------------------------

pub struct Guest {
    vm: Proc,
    pub serial: PathBuf,
    pub ctl: Ctl,
}

impl Guest {
    /// Boots the kernel with `initrd`, `disk` as /dev/vda, its port 3260 forwarded to
    /// 127.0.0.1:`iscsi_port`, and waits until its init polls `ctl`.
    pub fn boot(
        work: &Path,
        name: &str,
        k: &Kernel,
        initrd: &Path,
        disk: &Path,
        iscsi_port: u16,
        ctl: Ctl,
    ) -> Guest {
        let serial = work.join(format!("{name}-serial.log"));
        let qemu_err = work.join(format!("{name}-qemu.err"));
        let child = Command::new("qemu-system-x86_64")
            // Always TCG: under KVM nested here, Linux hangs in its decompressor.
            .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
            .args(["-display", "none", "-nodefaults", "-no-reboot"])
            .arg("-kernel")
            .arg(&k.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 loglevel=4 pxe_ctl={}",
                ctl.port
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{iscsi_port}-10.0.2.15:3260"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_err).unwrap())
            .spawn()
            .expect("start qemu-system-x86_64");
        let mut g = Guest {
            vm: Proc(child),
            serial,
            ctl,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(150) {
            if g.ctl.wait_polled(Duration::from_millis(500)) {
                return g;
            }
            if let Ok(Some(st)) = g.vm.0.try_wait() {
                panic!(
                    "the guest exited ({st}) before it was up; qemu: {}\nserial:\n{}",
                    std::fs::read_to_string(&qemu_err).unwrap_or_default(),
                    g.serial_log()
                );
            }
        }
        panic!(
            "the guest did not come up in 150 s; serial:\n{}",
            g.serial_log()
        );
    }

    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).replace('\r', "")
    }

    /// Runs a shell script in the guest: (exit status, output).
    pub fn sh(&self, script: &str) -> (i32, String) {
        match self.ctl.run(script, Duration::from_secs(120)) {
            Some(r) => r,
            None => panic!(
                "the guest did not answer within 120 s: {script}\nserial:\n{}",
                self.serial_log()
            ),
        }
    }

    /// Runs a script that must succeed; returns its output.
    pub fn ok(&self, script: &str) -> String {
        let (rc, out) = self.sh(script);
        assert_eq!(
            rc, 0,
            "in the guest, `{script}` failed (status {rc}):\n{out}"
        );
        out
    }
}

// ---- iSCSI from the host (qemu-io's libiscsi driver) -------------------------------------

/// Runs qemu-io commands on LUN `lun` of `target` at 127.0.0.1:`port`, logged in as
/// `initiator`. Never a discovery: LIO would advertise the guest's 10.0.2.15.
pub fn qemu_io(
    port: u16,
    target: &str,
    initiator: &str,
    lun: u32,
    cmds: &[&str],
) -> std::process::Output {
    qemu_io_chap(port, target, initiator, lun, None, cmds)
}

/// `qemu_io` with CHAP credentials (user, secret).
pub fn qemu_io_chap(
    port: u16,
    target: &str,
    initiator: &str,
    lun: u32,
    chap: Option<(&str, &str)>,
    cmds: &[&str],
) -> std::process::Output {
    let mut c = Command::new("qemu-io");
    let mut opts = format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{port},target={target},lun={lun},initiator-name={initiator}"
    );
    if let Some((user, secret)) = chap {
        c.arg("--object")
            .arg(format!("secret,id=chap0,data={secret}"));
        opts.push_str(&format!(",user={user},password-secret=chap0"));
    }
    c.arg("--image-opts").arg(opts);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    c.output().expect("qemu-io")
}

/// The first `len` bytes (a multiple of 16) of the LUN.
pub fn iscsi_read(port: u16, target: &str, initiator: &str, lun: u32, len: usize) -> Vec<u8> {
    iscsi_read_chap(port, target, initiator, lun, None, len)
}

/// `iscsi_read` with CHAP credentials (user, secret).
pub fn iscsi_read_chap(
    port: u16,
    target: &str,
    initiator: &str,
    lun: u32,
    chap: Option<(&str, &str)>,
    len: usize,
) -> Vec<u8> {
    let out = qemu_io_chap(
        port,
        target,
        initiator,
        lun,
        chap,
        &[&format!("read -v 0 {len}")],
    );
    assert!(
        out.status.success(),
        "qemu-io read as {initiator} from {target}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = parse_qemu_io_dump(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(bytes.len(), len, "parsed qemu-io dump");
    bytes
}

/// Writes the file `src` at offset 0 of the LUN.
pub fn iscsi_write_file(port: u16, target: &str, initiator: &str, lun: u32, src: &Path) {
    let len = std::fs::metadata(src).unwrap().len();
    let out = qemu_io(
        port,
        target,
        initiator,
        lun,
        &[&format!("write -s {} 0 {len}", src.display())],
    );
    assert!(
        out.status.success(),
        "qemu-io write as {initiator} to {target}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- pxesrv and iPXE clients --------------------------------------------------------------
