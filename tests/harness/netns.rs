//! A private network namespace with a bridge and taps, and dnsmasq serving DHCP on it: the
//! deployment's network on one machine, where each client gets a real address (unlike QEMU
//! user networking, where the server sees every guest as 127.0.0.1). Nothing in it can reach
//! any other network.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::tool;

/// The bridge's address: where the server listens and the clients' router.
pub const BRIDGE_IP: &str = "10.77.0.1";
const BRIDGE_CIDR: &str = "10.77.0.1/24";
const BRIDGE_ULA: &str = "fd77::1/64";
const BRIDGE: &str = "br0";
/// Namespaces this harness creates are named `PREFIX-PID-N`.
const PREFIX: &str = "pxe2e";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS...`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new(tool("ip").unwrap_or_else(|e| panic!("{e}")))
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace, deleted (with its bridge and taps) on drop.
pub struct Netns {
    name: String,
    taps: usize,
}

impl Netns {
    /// A fresh namespace `pxe2e-PID-N` with `lo` up and bridge `br0` at 10.77.0.1/24.
    pub fn create() -> Netns {
        remove_stale();
        let name = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name, taps: 0 };
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns.exec_ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        ns.exec_ip(&["addr", "add", BRIDGE_CIDR, "dev", BRIDGE]);
        // A ULA prefix for dnsmasq's router advertisements (see `Dnsmasq::start`).
        ns.exec_ip(&["addr", "add", BRIDGE_ULA, "dev", BRIDGE, "nodad"]);
        ns.exec_ip(&["link", "set", BRIDGE, "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`
    pub fn exec_ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A new tap device on the bridge, up; returns its name for [`super::qemu::Net::Tap`].
    pub fn add_tap(&mut self) -> String {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        self.exec_ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        self.exec_ip(&["link", "set", &tap, "master", BRIDGE]);
        self.exec_ip(&["link", "set", &tap, "up"]);
        tap
    }

    /// A command that runs `program` inside the namespace, dying with the thread that
    /// starts it (see [`super::long_running`]).
    pub fn command(&self, program: &Path) -> Command {
        let ip = tool("ip").unwrap_or_else(|e| panic!("{e}"));
        super::long_running(&[
            ip.as_os_str(),
            "netns".as_ref(),
            "exec".as_ref(),
            self.name.as_ref(),
            program.as_os_str(),
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let Ok(ip) = tool("ip") else { return };
        // Whatever still runs inside was started by this test (its own guards normally
        // stopped it already): kill it by pid, so the namespace and its links really go.
        if let Ok(out) = Command::new(&ip)
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new(&ip)
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes namespaces left by harness runs whose process no longer exists (killed runs
/// cannot clean up after themselves).
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new(tool("ip").unwrap_or_else(|e| panic!("{e}")))
                .args(["netns", "del", &name])
                .status();
        }
    }
}

/// dnsmasq giving DHCP on the namespace's bridge, as the deployment runs it: addresses from
/// 10.77.0.50-90 (or pinned per MAC), and to iPXE clients (option 175) the boot URL.
/// Killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub log_path: PathBuf,
}

impl Dnsmasq {
    /// `boot_url` is handed to iPXE as the boot file name; `hosts` pins `(MAC, IP)` pairs.
    pub fn start(ns: &Netns, boot_url: &str, hosts: &[(&str, &str)], dir: &Path) -> Dnsmasq {
        let log_path = dir.join("dnsmasq.log");
        let log = std::fs::File::create(&log_path).expect("create dnsmasq log");
        let dnsmasq = tool("dnsmasq").unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = ns.command(&dnsmasq);
        cmd.args([
            // Foreground, and (unlike --keep-in-foreground) keeps root, so it can write the
            // lease file in the test's private directory.
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--log-facility=-",
            "--log-dhcp",
            "--bind-interfaces",
            "--interface",
            BRIDGE,
            "--except-interface=lo",
            "--dhcp-range=10.77.0.50,10.77.0.90,255.255.255.0,1h",
            "--dhcp-match=set:ipxe,175",
            &format!("--dhcp-boot=tag:ipxe,{boot_url}"),
            "--dhcp-authoritative",
            // iPXE's "Configuring (net0 ...)" also waits for IPv6 autoconfiguration: on a
            // network without router advertisements each boot stalls ~15 s there (measured:
            // 19 s per boot instead of 5.6 s). An RA-only prefix ends that wait; the boot
            // itself stays IPv4 (the URL names 10.77.0.1).
            "--enable-ra",
            "--dhcp-range=::,constructor:br0,ra-only",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ));
        for (mac, ip) in hosts {
            cmd.arg(format!("--dhcp-host={mac},{ip}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start dnsmasq: {e}"));
        let mut d = Dnsmasq { child, log_path };
        // Ready once it has bound the DHCP socket and says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = d.log();
            if log.contains("DHCP, IP range") {
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dnsmasq exited ({status}) at start:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not report its DHCP range within 10 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
