//! The boot hook across the privilege boundary: `pxesrv-storage hook --socket` (what the
//! unprivileged pxesrv runs) talks to `pxesrv-storage hook-serve`, started per connection with
//! the connection as stdin and stdout, as systemd's `Accept=yes` socket unit does.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TOOL: &str = env!("CARGO_BIN_EXE_pxesrv-storage");

/// A storage config in `dir` (reflink + tgt; nothing here runs a backend).
fn config(dir: &Path) -> PathBuf {
    for d in ["root/static", "disks", "state"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let cfg = dir.join("storage.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = \"{d}/root\"\nstate_dir = \"{d}/state\"\nportal = \"127.0.0.1:3260\"\n\
             iqn_prefix = \"iqn.2026-11.org.example.test\"\n\n\
             [disk]\nbackend = \"reflink\"\ndir = \"{d}/disks\"\n\n\
             [target]\nbackend = \"tgt\"\ncontrol_port = 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// A stand-in for systemd's socket unit: accepts `n` connections on `sock`, each served by
/// `pxesrv-storage --config CFG hook-serve` with the connection as stdin and stdout.
fn socket_service(sock: &Path, cfg: &Path, n: usize) -> std::thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(sock).unwrap();
    let cfg = cfg.to_owned();
    std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (conn, _) = listener.accept().unwrap();
                let input: OwnedFd = conn.try_clone().unwrap().into();
                let output: OwnedFd = conn.into();
                let out = Command::new(TOOL)
                    .arg("--config")
                    .arg(&cfg)
                    .arg("hook-serve")
                    .env_remove("PXESRV_STORAGE_CONFIG")
                    .stdin(Stdio::from(input))
                    .stdout(Stdio::from(output))
                    .stderr(Stdio::piped())
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stderr).into_owned()
            })
            .collect()
    })
}

fn ask(sock: &Path, mac: &str) -> (i32, String, String) {
    let out = Command::new(TOOL)
        .args(["--config", "/nonexistent/not-read.toml", "hook", "--socket"])
        .arg(sock)
        .env("PXESRV_CLIENT_MAC", mac)
        .env_remove("PXESRV_STORAGE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hook_over_a_socket_answers_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sock = dir.path().join("hook.sock");

    // No service listening: a clear error, non-zero exit (pxesrv then serves an error script).
    let (code, _, err) = ask(&sock, "52-54-00-00-00-01");
    assert_eq!(code, 1);
    assert!(
        err.contains("hook.sock") && err.contains("pxesrv-storage-hook.socket"),
        "{err}"
    );

    let service = socket_service(&sock, &cfg, 3);
    // A MAC that is not a storage client: nothing to do, exit 0. The client side never read
    // a configuration (its --config does not exist).
    let (code, out, err) = ask(&sock, "52:54:00:00:00:01");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok nothing to do") && out.contains("52-54-00-00-00-01"),
        "{out}"
    );
    // Garbage is not a MAC: still nothing to do, and never a path or a command.
    let (code, out, _) = ask(&sock, "../../etc/passwd; reboot");
    assert_eq!(code, 0);
    assert!(out.contains("is not a MAC"), "{out}");
    // The service fails (its state file is corrupt): the error travels back, exit 1.
    std::fs::write(dir.path().join("state/state.json"), "{ not json").unwrap();
    let (code, _, err) = ask(&sock, "52:54:00:00:00:02");
    assert_eq!(code, 1);
    assert!(
        err.contains("boot hook service") && err.contains("state"),
        "{err}"
    );
    let service_logs = service.join().unwrap();
    assert!(
        service_logs[2].contains("state"),
        "the failure is also in the service's log: {service_logs:?}"
    );
}
