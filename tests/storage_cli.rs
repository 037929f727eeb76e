//! The pxesrv-storage binary without any backend: help, config errors, exit codes.

use std::process::Command;

fn tool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pxesrv-storage"));
    c.env_remove("PXESRV_STORAGE_CONFIG");
    c
}

#[test]
fn help_explains_every_command() {
    let out = tool().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "image",
        "client",
        "restore",
        "apply",
        "hook",
        "--dry-run",
        "--config",
        "PXESRV_STORAGE_CONFIG",
        "/etc/pxesrv/storage.toml",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let out = tool()
        .args(["client", "attach", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--image",
        "--mode",
        "reset-on-boot",
        "--initiator",
        "--chap",
    ] {
        assert!(help.contains(word), "attach --help lacks {word}:\n{help}");
    }
}

#[test]
fn config_mistakes_are_reported_with_the_file_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = tool()
        .arg("--config")
        .arg(&missing)
        .args(["image", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.toml") && err.contains("No such file"),
        "{err}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "root = \"/srv\"\nportal = \"10.0.0.1\"\niqn_prefix = \"IQN.X\"\n[disk]\nbackend = \"reflink\"\ndir = \"/d\"\n[target]\nbackend = \"tgt\"\n").unwrap();
    let out = tool()
        .env("PXESRV_STORAGE_CONFIG", &bad)
        .args(["client", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("must start with 'iqn.'"),
        "{err}"
    );
}

#[test]
fn hook_passes_unknown_clients_through_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = {:?}\nstate_dir = {:?}\nportal = \"10.0.0.1\"\niqn_prefix = \"iqn.2024-01.a.b\"\n[disk]\nbackend = \"reflink\"\ndir = \"/nonexistent\"\n[target]\nbackend = \"tgt\"\n",
            dir.path(),
            dir.path().join("state")
        ),
    )
    .unwrap();
    for mac in ["", "52-54-00-00-00-01", "not-a-mac"] {
        let t0 = std::time::Instant::now();
        let out = tool()
            .env("PXESRV_STORAGE_CONFIG", &cfg)
            .env("PXESRV_CLIENT_MAC", mac)
            .env("PXESRV_CLIENT_IP", "192.0.2.7")
            .arg("hook")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mac:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    }
}
