//! One network boot of an iPXE client in QEMU (always TCG: under KVM this iPXE hangs).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{ipxe_rom, long_running, say, secs, tool, VM_SLOTS};

/// Time limit of one boot. A good boot takes about 5 s alone under TCG, a failed one ends
/// after about 8 s (`-no-reboot`); this only stops a hung VM.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How the VM's NIC is connected.
#[derive(Clone, Debug)]
pub enum Net {
    /// QEMU user networking: the built-in DHCP server hands out `bootfile`. The host's
    /// loopback is 10.0.2.2 to the guest, and the server sees every guest as 127.0.0.1.
    User { bootfile: String },
    /// QEMU user networking with DHCP but no boot file and no way out (`restrict=on`): a NIC
    /// the firmware tries and gives up on.
    NoBoot,
    /// Any other `-netdev` backend, written as QEMU takes it without the id (e.g.
    /// `user,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:...,bootfile=http://10.0.2.100/x`).
    Custom(String),
    /// A tap device in a network namespace (created by [`super::netns::Netns::add_tap`]);
    /// QEMU runs inside that namespace and DHCP comes from whoever serves the bridge.
    Tap { netns: String, ifname: String },
}

#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Names the boot in output and file names.
    pub name: String,
    /// `52:54:00:xx:xx:xx`.
    pub mac: String,
    pub net: Net,
    /// NICs in front of the boot NIC, `(MAC, network)`: lower PCI slots, so the firmware
    /// tries them first.
    pub first_nics: Vec<(String, Net)>,
    /// More QEMU arguments (disks, memory: a later `-m` wins).
    pub extra_args: Vec<String>,
    pub timeout: Duration,
}

impl VmSpec {
    pub fn user(name: &str, mac: &str, bootfile: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            mac: mac.into(),
            net: Net::User {
                bootfile: bootfile.into(),
            },
            first_nics: Vec::new(),
            extra_args: Vec::new(),
            timeout: BOOT_TIMEOUT,
        }
    }

    pub fn tap(name: &str, mac: &str, netns: &str, ifname: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            mac: mac.into(),
            net: Net::Tap {
                netns: netns.into(),
                ifname: ifname.into(),
            },
            first_nics: Vec::new(),
            extra_args: Vec::new(),
            timeout: BOOT_TIMEOUT,
        }
    }
}

/// What one boot produced.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    pub name: String,
    pub mac: String,
    /// QEMU's exit status; `None` if it was killed (timeout) or died of a signal.
    pub rc: Option<i32>,
    pub timed_out: bool,
    /// The serial console: SeaBIOS and iPXE output (`-machine graphics=off`) and the marker.
    pub serial: String,
    pub serial_path: PathBuf,
    pub qemu_stderr: String,
    /// From QEMU's start to its exit, not counting the wait for a VM slot.
    pub duration: Duration,
    pub argv: Vec<String>,
}

/// Kills the VM if the test unwinds while it runs.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// QEMU's option syntax: a comma inside a value is written `,,`.
fn opt(s: &str) -> String {
    s.replace(',', ",,")
}

/// The QEMU argv for `spec`, writing the console to `serial`.
pub fn argv(spec: &VmSpec, serial: &Path) -> Vec<String> {
    let qemu = tool("qemu-system-x86_64").unwrap_or_else(|e| panic!("{e}"));
    // QEMU finds the ROM itself (`qemu-system-x86_64 -L help` lists /usr/lib/ipxe/qemu);
    // naming it with `romfile=` leaves SeaBIOS without a network boot entry (QEMU 7.2).
    ipxe_rom().unwrap_or_else(|e| panic!("{e}"));
    let mut argv = Vec::new();
    let nics: Vec<(&str, &Net)> = spec
        .first_nics
        .iter()
        .map(|(mac, net)| (mac.as_str(), net))
        .chain([(spec.mac.as_str(), &spec.net)])
        .collect();
    if let Some(netns) = nics.iter().find_map(|(_, net)| match net {
        Net::Tap { netns, .. } => Some(netns),
        _ => None,
    }) {
        let ip = tool("ip").unwrap_or_else(|e| panic!("{e}"));
        argv.extend([ip.display().to_string(), "netns".into(), "exec".into()]);
        argv.push(netns.clone());
    }
    argv.push(qemu.display().to_string());
    argv.extend(
        [
            "-name",
            &opt(&spec.name),
            "-accel",
            "tcg",
            "-machine",
            "graphics=off",
            "-m",
            "128",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-boot",
            "n,reboot-timeout=0",
        ]
        .map(String::from),
    );
    for (i, (mac, net)) in nics.iter().enumerate() {
        let netdev = match net {
            Net::User { bootfile } => format!("user,id=n{i},bootfile={}", opt(bootfile)),
            Net::NoBoot => format!("user,id=n{i},restrict=on"),
            Net::Custom(opts) => {
                let (backend, rest) = opts.split_once(',').unwrap_or((opts, ""));
                format!(
                    "{backend},id=n{i}{}{rest}",
                    if rest.is_empty() { "" } else { "," }
                )
            }
            Net::Tap { ifname, .. } => {
                format!("tap,id=n{i},ifname={},script=no,downscript=no", opt(ifname))
            }
        };
        argv.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=n{i},mac={}", opt(mac)),
        ]);
    }
    argv.extend(
        [
            "-serial",
            &format!("file:{}", serial.display()),
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        .map(String::from),
    );
    argv.extend(spec.extra_args.iter().cloned());
    argv
}

/// Boots one VM to its end (exit or timeout), waiting first for a free VM slot. Files go to
/// `dir/NAME.serial`. Prints the boot's duration.
pub fn boot(spec: &VmSpec, dir: &Path) -> BootOutcome {
    let serial_path = dir.join(format!("{}.serial", spec.name));
    let argv = argv(spec, &serial_path);
    let queued = Instant::now();
    let _slot = VM_SLOTS.acquire();
    let waited = queued.elapsed();

    let started = Instant::now();
    let stderr_path = dir.join(format!("{}.qemu-stderr", spec.name));
    let stderr = std::fs::File::create(&stderr_path).expect("create qemu stderr file");
    let child = long_running(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
    let mut vm = Vm(child);
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = vm.0.try_wait().expect("wait for qemu") {
            break Some(status);
        }
        if started.elapsed() > spec.timeout {
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(vm); // kills a timed-out VM
    let duration = started.elapsed();
    let rc = status.and_then(|s| s.code());

    let serial =
        String::from_utf8_lossy(&std::fs::read(&serial_path).unwrap_or_default()).into_owned();
    let qemu_stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    say(&format!(
        "boot {}: qemu rc={} in {}{}{}",
        spec.name,
        rc.map_or("none".into(), |c| c.to_string()),
        secs(duration),
        if timed_out {
            " (TIMED OUT, killed)"
        } else {
            ""
        },
        if waited > Duration::from_millis(500) {
            format!(" (waited {} for a VM slot)", secs(waited))
        } else {
            String::new()
        },
    ));
    BootOutcome {
        name: spec.name.clone(),
        mac: spec.mac.clone(),
        rc,
        timed_out,
        serial,
        serial_path,
        qemu_stderr,
        duration,
        argv,
    }
}

/// Boots several VMs at once (each still takes a VM slot); outcomes in the order given.
pub fn boot_all(specs: &[VmSpec], dir: &Path) -> Vec<BootOutcome> {
    std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| s.spawn(|| boot(spec, dir)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread panicked"))
            .collect()
    })
}
