//! Process tests: the real `pxesrv` binary on a free port, clients on distinct 127.0.0.N.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const MAC_A: &str = "52:54:00:aa:00:01";

#[test]
fn answers_by_ip_mac_subnet_and_default() {
    let t = Tree::new();
    t.write("menus/ip.ipxe", "#!ipxe\necho BY-IP\n");
    t.write("menus/mac.ipxe", "#!ipxe\necho BY-MAC\n");
    t.write("menus/net16.ipxe", "#!ipxe\necho NET16\n");
    t.write("menus/net24.ipxe", "#!ipxe\necho NET24\n");
    t.link("static/127.0.0.2", "../menus/ip.ipxe");
    t.link("static/52-54-00-AA-00-01", "../menus/mac.ipxe");
    t.link("static/127.0.0.0_16", "../menus/net16.ipxe");
    t.link("static/127.0.5.0_24", "../menus/net24.ipxe");
    let s = Server::start(t.path(), &[]);
    let a = s.addr;

    let r = get("127.0.0.2", a, "/redirect");
    assert_eq!((r.status, r.text().as_str()), (200, "#!ipxe\necho BY-IP\n"));
    assert_eq!(r.header("x-pxesrv-rule"), Some("static-ip"));
    assert_eq!(
        get("127.0.5.9", a, "/redirect").text(),
        "#!ipxe\necho NET24\n"
    );
    assert_eq!(
        get("127.0.6.9", a, "/redirect").text(),
        "#!ipxe\necho NET16\n"
    );
    assert_eq!(
        get("127.1.0.1", a, "/redirect").text(),
        "#!ipxe\necho DEFAULT\n"
    );
    // MAC beats IP; any spelling of the MAC in the query works.
    for q in [
        "52:54:00:aa:00:01",
        "52-54-00-AA-00-01",
        "525400aa0001",
        "52%3A54%3A00%3Aaa%3A00%3A01",
    ] {
        let r = get("127.0.0.2", a, &format!("/redirect?mac={q}"));
        assert_eq!(r.text(), "#!ipxe\necho BY-MAC\n", "mac={q}");
        assert_eq!(r.header("x-pxesrv-rule"), Some("static-mac"));
    }
    // An unknown MAC falls through to the IP answers.
    assert_eq!(
        get("127.0.0.2", a, "/redirect?mac=52:54:00:00:00:99").text(),
        "#!ipxe\necho BY-IP\n"
    );
    // Empty mac (iPXE could not expand it): the IP answers, no error.
    assert_eq!(get("127.0.0.2", a, "/redirect?mac=").status, 200);

    assert!(s.wait_log(
        "client=127.0.0.2 mac=52-54-00-aa-00-01",
        Duration::from_secs(5)
    ));
    let log = s.log();
    assert!(log.contains("boot client=127.0.5.9 mac=- rule=static-subnet entry=static/127.0.5.0_24 target=menus/net24.ipxe status=200"), "{log}");
    assert!(log.contains("client=127.0.0.2 mac=52-54-00-aa-00-01 rule=static-mac entry=static/52-54-00-AA-00-01 target=menus/mac.ipxe"), "{log}");
}

#[test]
fn once_is_served_once_then_static() {
    let t = Tree::new();
    t.write("menus/install.ipxe", "#!ipxe\necho INSTALL\n");
    t.write("menus/local.ipxe", "#!ipxe\necho LOCAL\n");
    t.link("static/127.0.0.3", "../menus/local.ipxe");
    t.link("once/127.0.0.3", "../menus/install.ipxe");
    let s = Server::start(t.path(), &[]);
    // HEAD shows the once answer but never consumes it.
    for _ in 0..3 {
        let r = raw(
            "127.0.0.3",
            s.addr,
            "HEAD /redirect HTTP/1.1\r\nHost: x\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.header("x-pxesrv-rule")),
            (200, Some("once-ip"))
        );
    }
    assert!(t.exists("once/127.0.0.3"));
    let r = get("127.0.0.3", s.addr, "/redirect");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "#!ipxe\necho INSTALL\n")
    );
    assert!(!t.exists("once/127.0.0.3"), "the once link is consumed");
    assert_eq!(
        get("127.0.0.3", s.addr, "/redirect").text(),
        "#!ipxe\necho LOCAL\n"
    );
    // The consumption is recorded where an operator can see and undo it.
    let (code, out, _) = admin(t.path(), &["history"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("once/127.0.0.3  -> ../menus/install.ipxe"),
        "{out}"
    );
    let (code, out, err) = admin(t.path(), &["undo", "127.0.0.3"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        get("127.0.0.3", s.addr, "/redirect").text(),
        "#!ipxe\necho INSTALL\n"
    );
    assert!(s.wait_log("audit: once entry consumed", Duration::from_secs(5)));
}

/// 64 simultaneous requests of one client, many rounds: exactly one gets the once answer,
/// every other gets its static answer with 200.
#[test]
fn once_exactly_once_under_64_concurrent_requests() {
    let t = Tree::new();
    t.write("menus/install.ipxe", "#!ipxe\necho INSTALL\n");
    t.write("menus/local.ipxe", "#!ipxe\necho LOCAL\n");
    t.link("static/127.0.0.4", "../menus/local.ipxe");
    let s = Server::start(t.path(), &[]);
    for round in 0..15 {
        t.link("once/127.0.0.4", "../menus/install.ipxe");
        let responses = race("127.0.0.4", &[s.addr], 64);
        assert!(
            responses.iter().all(|r| r.status == 200),
            "round {round}: non-200"
        );
        let once = responses
            .iter()
            .filter(|r| r.text().contains("INSTALL"))
            .count();
        let stat = responses
            .iter()
            .filter(|r| r.text().contains("LOCAL"))
            .count();
        assert_eq!((once, stat), (1, 63), "round {round}");
        assert!(!t.exists("once/127.0.0.4"));
    }
}

/// Two pxesrv processes on one root race for the same once link.
#[test]
fn once_exactly_once_across_two_processes() {
    let t = Tree::new();
    t.write("menus/install.ipxe", "#!ipxe\necho INSTALL\n");
    let s1 = Server::start(t.path(), &[]);
    let s2 = Server::start(t.path(), &[]);
    for round in 0..25 {
        t.link("once/127.0.0.5", "../menus/install.ipxe");
        let responses = race("127.0.0.5", &[s1.addr, s2.addr], 32);
        assert!(responses.iter().all(|r| r.status == 200), "round {round}");
        let once = responses
            .iter()
            .filter(|r| r.text().contains("INSTALL"))
            .count();
        assert_eq!(once, 1, "round {round}");
    }
}

#[test]
fn broken_once_links_are_not_consumed_and_client_gets_next_answer() {
    let t = Tree::new();
    t.write("menus/local.ipxe", "#!ipxe\necho LOCAL\n");
    t.link("static/127.0.0.6", "../menus/local.ipxe");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "SECRET").unwrap();
    let cases = [
        ("../menus/missing.ipxe", "dangling"),
        ("../menus", "not a regular file"),
        ("/etc/passwd", "escapes the boot root"),
        (
            &*outside.path().join("secret").display().to_string(),
            "escapes the boot root",
        ),
        ("127.0.0.6", "symlink loop"),
    ];
    let s = Server::start(t.path(), &[]);
    for (target, why) in cases {
        t.link("once/127.0.0.6", target);
        let r = get("127.0.0.6", s.addr, "/redirect");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "#!ipxe\necho LOCAL\n"),
            "{target}"
        );
        assert!(t.exists("once/127.0.0.6"), "{target}: must not be consumed");
        assert!(
            s.wait_log(why, Duration::from_secs(5)),
            "{target}: log should say {why:?}:\n{}",
            s.log()
        );
    }
}

/// A tree whose once/ cannot be changed: the once link is neither consumed nor served, so a
/// machine cannot loop into a reinstall.
#[test]
fn once_in_read_only_tree_is_not_served() {
    let t = Tree::new();
    t.write("menus/install.ipxe", "#!ipxe\necho INSTALL\n");
    t.link("once/127.0.0.7", "../menus/install.ipxe");
    std::fs::create_dir(t.path().join("once/.consumed")).unwrap();
    let once = t.path().join("once");
    let ro = ReadOnly::new(&once);
    let s = Server::start(t.path(), &[]);
    let r = get("127.0.0.7", s.addr, "/redirect");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "#!ipxe\necho DEFAULT\n")
    );
    drop(ro);
    assert!(t.exists("once/127.0.0.7"));
    assert!(
        s.wait_log(
            "cannot be consumed, so it is not served",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
}

/// Makes a directory unchangeable even for root (chattr +i), or by mode for other users.
struct ReadOnly(std::path::PathBuf);
impl ReadOnly {
    fn new(p: &std::path::Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(p.join(".probe"), "").is_ok() {
            let _ = std::fs::remove_file(p.join(".probe"));
            let st = std::process::Command::new("chattr")
                .arg("+i")
                .arg(p)
                .status();
            assert!(
                st.is_ok_and(|s| s.success()),
                "chattr +i failed: this test needs it as root"
            );
        }
        ReadOnly(p.to_owned())
    }
}
impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn changed_scripts_and_links_are_seen_at_once() {
    let t = Tree::new();
    t.write("menus/ä b.ipxe", "#!ipxe\necho UMLAUT\n");
    t.write("menus/other.ipxe", "#!ipxe\necho OTHER\n");
    t.link("static/127.0.0.26", "../menus/ä b.ipxe");
    let s = Server::start(t.path(), &[]);
    let r = get("127.0.0.26", s.addr, "/redirect");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "#!ipxe\necho UMLAUT\n")
    );
    assert_eq!(r.header("x-pxesrv-target"), Some("menus/%C3%A4 b.ipxe"));
    std::thread::sleep(Duration::from_millis(300)); // the answer is now cached
    for _ in 0..3 {
        assert_eq!(
            get("127.0.0.26", s.addr, "/redirect").text(),
            "#!ipxe\necho UMLAUT\n"
        );
    }
    // Re-pointing the link, editing the file in place (same size) and replacing it: each is
    // seen by the very next request.
    t.link("static/127.0.0.26", "../menus/other.ipxe");
    assert_eq!(
        get("127.0.0.26", s.addr, "/redirect").text(),
        "#!ipxe\necho OTHER\n"
    );
    std::thread::sleep(Duration::from_millis(300));
    get("127.0.0.26", s.addr, "/redirect");
    std::fs::write(t.path().join("menus/other.ipxe"), "#!ipxe\necho OTHR2\n").unwrap();
    assert_eq!(
        get("127.0.0.26", s.addr, "/redirect").text(),
        "#!ipxe\necho OTHR2\n"
    );
    std::fs::write(t.path().join("menus/other.ipxe"), "#!ipxe\necho OTHR3\n").unwrap();
    assert_eq!(
        get("127.0.0.26", s.addr, "/redirect").text(),
        "#!ipxe\necho OTHR3\n"
    );
    // Re-pointed at a hard link of the same file in another directory (rsync --link-dest
    // trees): same inode, but the relative URLs must now resolve beside the new path.
    t.write("menus/v1/boot.ipxe", "#!ipxe\nkernel vmlinuz\n");
    std::fs::create_dir_all(t.path().join("menus/v2")).unwrap();
    std::fs::hard_link(
        t.path().join("menus/v1/boot.ipxe"),
        t.path().join("menus/v2/boot.ipxe"),
    )
    .unwrap();
    t.link("static/127.0.0.27", "../menus/v1/boot.ipxe");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get("127.0.0.27", s.addr, "/redirect").text(),
        "#!ipxe\nkernel /menus/v1/vmlinuz\n"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get("127.0.0.27", s.addr, "/redirect").text(),
        "#!ipxe\nkernel /menus/v1/vmlinuz\n"
    );
    t.link("static/127.0.0.27", "../menus/v2/boot.ipxe");
    assert_eq!(
        get("127.0.0.27", s.addr, "/redirect").text(),
        "#!ipxe\nkernel /menus/v2/vmlinuz\n"
    );
    // A file that becomes unreadable is no longer served (root reads anything, so remove it).
    std::fs::remove_file(t.path().join("menus/other.ipxe")).unwrap();
    assert_eq!(
        get("127.0.0.26", s.addr, "/redirect").text(),
        "#!ipxe\necho DEFAULT\n"
    );
}

#[test]
fn relative_urls_in_scripts_resolve_beside_them() {
    let t = Tree::new();
    t.write("menus/sub/boot.ipxe", "#!ipxe\nkernel vmlinuz quiet\ninitrd initrd.img\nchain ../next.ipxe || chain http://x/abs\n");
    t.write("menus/sub/vmlinuz", "KERNEL");
    t.link("static/127.0.0.8", "../menus/sub/boot.ipxe");
    let s = Server::start(t.path(), &[]);
    let r = get("127.0.0.8", s.addr, "/redirect");
    assert_eq!(
        r.text(),
        "#!ipxe\nkernel /menus/sub/vmlinuz quiet\ninitrd /menus/sub/initrd.img\nchain /menus/next.ipxe || chain http://x/abs\n"
    );
    assert_eq!(
        get("127.0.0.8", s.addr, "/menus/sub/vmlinuz").text(),
        "KERNEL"
    );
}

#[test]
fn entries_are_not_files_and_nothing_escapes() {
    let t = Tree::new();
    t.write("menus/a.ipxe", "#!ipxe\n");
    t.link("static/127.0.0.9", "../menus/a.ipxe");
    t.link("once/127.0.0.10", "../menus/a.ipxe");
    t.link("peek", "static");
    t.link("up", "..");
    let s = Server::start(t.path(), &[]);
    assert_eq!(get("127.0.0.9", s.addr, "/menus/a.ipxe").status, 200);
    assert_eq!(get("127.0.0.9", s.addr, "/default").status, 200);
    for path in [
        "/static/127.0.0.9",
        "/once/127.0.0.10",
        "/%73tatic/127.0.0.9",
        "/peek/127.0.0.9",
        "/once/",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/menus%2f..%2f..%2fetc%2fpasswd",
        "/menus/..%2f..%2f..%2fetc/passwd",
        "/up/etc/passwd",
        "/menus/a.ipxe%00.png",
        "/once/.consumed/",
        "/",
        "/menus/",
    ] {
        let r = get("127.0.0.9", s.addr, path);
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(!r.text().contains("root:"), "{path}");
    }
    assert!(t.exists("once/127.0.0.10"), "downloads never consume");
    let r = raw(
        "127.0.0.9",
        s.addr,
        "POST /redirect HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 405);
}

#[test]
fn autoindex_only_when_asked() {
    let t = Tree::new();
    t.write("menus/a.ipxe", "#!ipxe\n");
    let s = Server::start(t.path(), &["--autoindex"]);
    let r = get("127.0.0.1", s.addr, "/");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("menus/"));
    assert!(
        !r.text().contains("static") && !r.text().contains("once"),
        "{}",
        r.text()
    );
    assert!(get("127.0.0.1", s.addr, "/menus/")
        .text()
        .contains("a.ipxe"));
}

#[test]
fn forwarded_headers_only_from_trusted_proxies() {
    let t = Tree::new();
    t.write("menus/x.ipxe", "#!ipxe\necho X\n");
    t.link("static/10.9.8.7", "../menus/x.ipxe");
    let xff = [("X-Forwarded-For", "10.9.8.7")];
    let fwd = [("Forwarded", "for=\"10.9.8.7:4711\";proto=http")];
    {
        let s = Server::start(t.path(), &[]);
        assert_eq!(
            get_with("127.0.0.11", s.addr, "/redirect", &xff).text(),
            "#!ipxe\necho DEFAULT\n"
        );
        assert_eq!(
            get_with("127.0.0.11", s.addr, "/redirect", &fwd).text(),
            "#!ipxe\necho DEFAULT\n"
        );
    }
    let s = Server::start(t.path(), &["--trusted-proxy", "127.0.0.11/32"]);
    assert_eq!(
        get_with("127.0.0.11", s.addr, "/redirect", &xff).text(),
        "#!ipxe\necho X\n"
    );
    // A proxy that appends to X-Forwarded-For passes the client's own Forwarded header
    // through: it is not believed, alone or beside the real header.
    assert_eq!(
        get_with("127.0.0.11", s.addr, "/redirect", &fwd).text(),
        "#!ipxe\necho DEFAULT\n"
    );
    let spoof = [
        ("Forwarded", "for=10.9.8.7"),
        ("X-Forwarded-For", "10.1.1.1"),
    ];
    assert_eq!(
        get_with("127.0.0.11", s.addr, "/redirect", &spoof).text(),
        "#!ipxe\necho DEFAULT\n"
    );
    // The client cannot prepend a forged hop: the rightmost untrusted address counts.
    let chain = [("X-Forwarded-For", "10.9.8.7, 10.1.1.1")];
    assert_eq!(
        get_with("127.0.0.11", s.addr, "/redirect", &chain).text(),
        "#!ipxe\necho DEFAULT\n"
    );
    // Untrusted peers are not believed even with the trusted proxy configured.
    assert_eq!(
        get_with("127.0.0.12", s.addr, "/redirect", &xff).text(),
        "#!ipxe\necho DEFAULT\n"
    );
    // Header values never become paths.
    let evil = [("X-Forwarded-For", "../../etc/passwd")];
    let r = get_with("127.0.0.11", s.addr, "/redirect", &evil);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not an address"));

    // A proxy that sets RFC 7239 Forwarded: that header only.
    let s = Server::start(
        t.path(),
        &[
            "--trusted-proxy",
            "127.0.0.11/32",
            "--forwarded-header",
            "forwarded",
        ],
    );
    assert_eq!(
        get_with("127.0.0.11", s.addr, "/redirect", &fwd).text(),
        "#!ipxe\necho X\n"
    );
    assert_eq!(
        get_with("127.0.0.11", s.addr, "/redirect", &xff).text(),
        "#!ipxe\necho DEFAULT\n"
    );
}

#[test]
fn allow_limits_who_may_boot_and_download() {
    let t = Tree::new();
    let s = Server::start(t.path(), &["--allow", "127.0.0.13/32,10.0.0.0/8"]);
    assert_eq!(get("127.0.0.13", s.addr, "/redirect").status, 200);
    assert_eq!(get("127.0.0.14", s.addr, "/redirect").status, 403);
    assert_eq!(get("127.0.0.14", s.addr, "/default").status, 403);
    assert_eq!(get("127.0.0.13", s.addr, "/default").status, 200);
}

#[test]
fn missing_default_gets_an_exit_script() {
    let t = Tree::new();
    std::fs::remove_file(t.path().join("default")).unwrap();
    let s = Server::start(t.path(), &[]);
    assert!(
        s.log().contains("default is missing")
            || s.wait_log("default is missing", Duration::from_secs(5))
    );
    let r = get("127.0.0.15", s.addr, "/redirect");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("#!ipxe\n"));
    assert!(r.text().contains("no default script"), "{}", r.text());
    assert!(r.text().contains("exit 1"));
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_survives() {
    let t = Tree::new();
    let s = Server::start(t.path(), &["--client-timeout", "2"]);
    let a = s.addr;
    let r = get("127.0.0.16", a, "/redirect?mac=52:54:00:zz:00:01");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("is not a MAC address"), "{}", r.text());
    assert_eq!(get("127.0.0.16", a, "/redirect?mac=%ff").status, 400);
    assert_eq!(get("127.0.0.16", a, "/redirect?mac=1&mac=2").status, 400);

    // Overlong URL and header: refused, not hung.
    let long = format!("/redirect?x={}", "a".repeat(10_000));
    let r = raw(
        "127.0.0.16",
        a,
        &format!("GET {long} HTTP/1.1\r\nHost: x\r\n"),
    );
    assert_eq!(r.unwrap().status, 414, "overlong URL must be refused");
    let huge = format!("/redirect?x={}", "a".repeat(200_000));
    let r = raw(
        "127.0.0.16",
        a,
        &format!("GET {huge} HTTP/1.1\r\nHost: x\r\n"),
    );
    assert!(
        r.map_or(true, |r| r.status >= 400),
        "huge URL must be refused"
    );
    let r = raw(
        "127.0.0.16",
        a,
        &format!(
            "GET /redirect HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
            "b".repeat(70_000)
        ),
    );
    assert_eq!(r.unwrap().status, 431, "overlong header must be refused");
    // Garbage instead of HTTP.
    let r = raw("127.0.0.16", a, "\u{1}\u{2}GARBAGE\r\n");
    assert!(r.map_or(true, |r| r.status >= 400));

    // A slow client that never finishes its request head is dropped.
    let mut slow = connect_from("127.0.0.17".parse().unwrap(), a).unwrap();
    slow.write_all(b"GET /redirect HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "slow client held for {:?}",
        t0.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    assert_eq!(
        get("127.0.0.16", a, "/redirect").status,
        200,
        "still serving"
    );
}

#[test]
fn thousands_of_connections_do_not_stop_boots() {
    let t = Tree::new();
    let s = Server::start(t.path(), &["--client-timeout", "30"]);
    let mut idle = Vec::new();
    for i in 0..3000u32 {
        let from = format!("127.0.{}.{}", 20 + i / 250, 1 + i % 250);
        idle.push(connect_from(from.parse().unwrap(), s.addr).unwrap());
    }
    // Every boot still gets its answer while 3000 connections sit idle.
    for i in 0..20 {
        let r = get(&format!("127.0.9.{}", i + 1), s.addr, "/redirect");
        assert_eq!(r.status, 200);
    }
    drop(idle);
    assert_eq!(get("127.0.9.99", s.addr, "/redirect").status, 200);
}

#[test]
fn large_files_stream_with_length_and_ranges() {
    let t = Tree::new();
    let f = std::fs::File::create(t.path().join("menus/big.img")).unwrap();
    f.set_len(300 << 20).unwrap(); // 300 MiB, sparse
    drop(f);
    let s = Server::start(t.path(), &[]);
    let r = raw(
        "127.0.0.18",
        s.addr,
        "HEAD /menus/big.img HTTP/1.1\r\nHost: x\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("314572800"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let r = get_with(
        "127.0.0.18",
        s.addr,
        "/menus/big.img",
        &[("Range", "bytes=1000-1099")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), 100);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1099/314572800"));
    // The whole file arrives while the server's memory stays far below its size.
    let mut c = connect_from("127.0.0.18".parse().unwrap(), s.addr).unwrap();
    c.write_all(b"GET /menus/big.img HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > 300 << 20);
    let rss_kb = rss_kb(s.pid());
    assert!(
        rss_kb < 100 * 1024,
        "RSS {rss_kb} kB after streaming 300 MiB"
    );
    assert!(s.wait_log(
        "path=/menus/big.img status=200 bytes=314572800",
        Duration::from_secs(5)
    ));
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn log_file_keeps_every_line_and_sigterm_exits_zero() {
    let t = Tree::new();
    let logdir = tempfile::tempdir().unwrap();
    let logfile = logdir.path().join("pxesrv.log");
    // Logging to a file, the server says nothing on stderr: give it a port known to be free.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(BIN)
        .arg("--root")
        .arg(t.path())
        .env("PXESRV_LISTEN", format!("127.0.0.1:{port}"))
        .env("PXESRV_LOG", &logfile)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = std::time::Instant::now();
    while connect_from("127.0.0.1".parse().unwrap(), addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..200 {
        assert_eq!(
            get(&format!("127.0.3.{}", i % 250 + 1), addr, "/redirect").status,
            200
        );
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    let files: Vec<_> = std::fs::read_dir(logdir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("pxesrv.log."), "daily file name: {name}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        text.matches(" boot client=").count(),
        200,
        "every boot line is in the file"
    );
    assert!(text.contains("stopped"));
}

#[test]
fn sigterm_finishes_in_flight_downloads() {
    let t = Tree::new();
    let f = std::fs::File::create(t.path().join("menus/big.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let mut s = Server::start(t.path(), &[]);
    let mut c = connect_from("127.0.0.19".parse().unwrap(), s.addr).unwrap();
    c.write_all(b"GET /menus/big.img HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 4096];
    c.read_exact(&mut first).unwrap();
    let pid = s.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(
        4096 + rest.len() as u64 > 64 << 20,
        "download finished after SIGTERM"
    );
    assert_eq!(s.terminate(), Some(0));
}

#[test]
fn boot_hook_runs_with_identity_and_failure_gives_error_script() {
    let t = Tree::new();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.out");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$PXESRV_CLIENT_IP $PXESRV_CLIENT_MAC $PXESRV_ROOT $1\" >> {}\n\
             [ \"$PXESRV_CLIENT_MAC\" = 52-54-00-00-00-66 ] && exit 3\n\
             [ \"$PXESRV_CLIENT_MAC\" = 52-54-00-00-00-77 ] && sleep 30\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = format!("{} ARG1", hook.display());
    let s = Server::start(
        t.path(),
        &["--boot-hook", &spec, "--boot-hook-timeout", "2"],
    );
    let r = get("127.0.0.20", s.addr, &format!("/redirect?mac={MAC_A}"));
    assert_eq!(r.text(), "#!ipxe\necho DEFAULT\n");
    let seen = std::fs::read_to_string(&out).unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap();
    assert_eq!(
        seen,
        format!("127.0.0.20 52-54-00-aa-00-01 {} ARG1\n", root.display())
    );

    let r = get("127.0.0.20", s.addr, "/redirect?mac=52:54:00:00:00:66");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-pxesrv-rule"), Some("hook-failed"));
    assert!(
        r.text().contains("boot hook failed") && r.text().contains("exit 1"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("DEFAULT"));

    let r = get("127.0.0.20", s.addr, "/redirect?mac=52:54:00:00:00:77");
    assert_eq!(r.header("x-pxesrv-rule"), Some("hook-failed"));
    assert!(r.text().contains("did not finish"), "{}", r.text());
    // HEAD has no side effects: no hook run.
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    raw(
        "127.0.0.20",
        s.addr,
        "HEAD /redirect HTTP/1.1\r\nHost: x\r\n",
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        before
    );
}

#[test]
fn mac_bootstrap_for_ipxe_clients_without_mac() {
    let t = Tree::new();
    t.write("menus/m.ipxe", "#!ipxe\necho M\n");
    let s = Server::start(t.path(), &[]);
    let ipxe = [("User-Agent", "iPXE/1.0.0+")];
    // No MAC entries yet: no detour.
    assert_eq!(
        get_with("127.0.0.21", s.addr, "/redirect", &ipxe).text(),
        "#!ipxe\necho DEFAULT\n"
    );
    t.link("static/52-54-00-aa-00-01", "../menus/m.ipxe");
    let r = get_with("127.0.0.21", s.addr, "/redirect", &ipxe);
    assert_eq!(r.header("x-pxesrv-rule"), Some("mac-bootstrap"));
    assert!(
        r.text().contains("chain /redirect?mac=${mac:hexhyp}"),
        "{}",
        r.text()
    );
    // curl and friends get the answer directly; a client that sent mac= never loops.
    assert_eq!(
        get("127.0.0.21", s.addr, "/redirect").text(),
        "#!ipxe\necho DEFAULT\n"
    );
    assert_eq!(
        get_with("127.0.0.21", s.addr, "/redirect?mac=", &ipxe).text(),
        "#!ipxe\necho DEFAULT\n"
    );
    assert_eq!(
        get_with(
            "127.0.0.21",
            s.addr,
            "/redirect?mac=52-54-00-aa-00-01",
            &ipxe
        )
        .text(),
        "#!ipxe\necho M\n"
    );
}

#[test]
fn watcher_reports_changes_and_problems_as_they_happen() {
    let t = Tree::new();
    t.write("menus/a.ipxe", "#!ipxe\n");
    let s = Server::start(t.path(), &[]);
    std::thread::sleep(Duration::from_millis(200));
    t.link("static/127.0.0.22", "../menus/a.ipxe");
    assert!(
        s.wait_log(
            "audit: entry set entry=static/127.0.0.22 target=menus/a.ipxe",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
    t.link("once/127.0.0.23", "../nope");
    assert!(
        s.wait_log(
            "entry=once/127.0.0.23 problem=\"once/127.0.0.23 is dangling",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
    t.link("static/not-a-client", "../menus/a.ipxe");
    assert!(
        s.wait_log("is neither an IP address", Duration::from_secs(5)),
        "{}",
        s.log()
    );
    t.link("static/127.0.0.24", "/etc/passwd");
    assert!(
        s.wait_log(
            "static/127.0.0.24 escapes the boot root",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
    std::fs::remove_file(t.path().join("static/127.0.0.22")).unwrap();
    assert!(s.wait_log(
        "audit: entry removed entry=static/127.0.0.22",
        Duration::from_secs(5)
    ));
    std::fs::remove_file(t.path().join("default")).unwrap();
    assert!(s.wait_log("default is missing", Duration::from_secs(5)));
}

#[test]
fn admin_cli_set_clear_list_check_show() {
    let t = Tree::new();
    t.write("menus/a.ipxe", "#!ipxe\necho A\n");
    let root = t.path();
    let (c, o, e) = admin(
        root,
        &["set", "static", "AA:BB:CC:DD:EE:FF", "menus/a.ipxe"],
    );
    assert_eq!(c, 0, "{o}{e}");
    assert_eq!(o, "static/aa-bb-cc-dd-ee-ff -> menus/a.ipxe\n");
    assert_eq!(
        std::fs::read_link(root.join("static/aa-bb-cc-dd-ee-ff"))
            .unwrap()
            .to_str(),
        Some("../menus/a.ipxe")
    );
    let (c, _, e) = admin(root, &["set", "static", "10.0.0.0/8", "menus/a.ipxe"]);
    assert_eq!(c, 0, "{e}");
    assert!(t.exists("static/10.0.0.0_8"));
    let (c, _, e) = admin(root, &["set", "once", "10.0.0.0/8", "menus/a.ipxe"]);
    assert_eq!(c, 1);
    assert!(e.contains("subnet entry belongs in static/"), "{e}");
    let (c, _, e) = admin(root, &["set", "once", "bogus", "menus/a.ipxe"]);
    assert_eq!(c, 1);
    assert!(e.contains("is neither an IP address"), "{e}");
    let (c, _, e) = admin(root, &["set", "once", "10.1.1.1", "/etc/passwd"]);
    assert_eq!(c, 1);
    assert!(e.contains("outside the boot root"), "{e}");
    let (c, _, e) = admin(root, &["set", "once", "10.1.1.1", "menus/nope"]);
    assert_eq!(c, 1);
    assert!(e.contains("No such file"), "{e}");

    let (c, o, _) = admin(root, &["check"]);
    assert_eq!(c, 0, "{o}");
    let (c, o, _) = admin(root, &["show", "--ip", "10.2.3.4", "--mac", "aabbccddeeff"]);
    assert_eq!(c, 0);
    assert!(
        o.contains("static-mac") && o.contains("BOOTS  -> menus/a.ipxe"),
        "{o}"
    );
    assert!(
        o.lines()
            .any(|l| l.starts_with("static-subnet") && l.contains("shadowed")),
        "{o}"
    );

    t.link("once/10.1.1.1", "../gone");
    let (c, o, _) = admin(root, &["check"]);
    assert_eq!(c, 1);
    assert!(o.contains("once/10.1.1.1 is dangling"), "{o}");
    let (_, o, _) = admin(root, &["list", "--json"]);
    let rows: Vec<serde_json::Value> = o
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .any(|r| r["entry"] == "once/10.1.1.1" && r["status"] == "problem"));
    // show never consumes.
    admin(root, &["show", "--ip", "10.1.1.1"]);
    assert!(t.exists("once/10.1.1.1"));
    let (c, o, _) = admin(root, &["clear", "once", "10.1.1.1"]);
    assert_eq!((c, o.as_str()), (0, "removed once/10.1.1.1\n"));
    let (c, _, e) = admin(t.path().join("missing").as_path(), &["check"]);
    assert_eq!(c, 1);
    assert!(e.contains("boot root"), "{e}");
}

#[test]
fn ipv6_clients_and_mapped_addresses() {
    let t = Tree::new();
    t.write("menus/v4.ipxe", "#!ipxe\necho V4\n");
    t.write("menus/v6.ipxe", "#!ipxe\necho V6\n");
    t.link("static/127.0.0.25", "../menus/v4.ipxe");
    t.link("static/0000:0000::0001", "../menus/v6.ipxe");
    let s = Server::start(t.path(), &["--listen", "[::1]:0"]);
    // The harness connected to the first listener (IPv4); find the IPv6 one in the log.
    assert!(s.wait_log("addr=[::1]:", Duration::from_secs(5)));
    let log = s.log();
    let v6: std::net::SocketAddr = log
        .split("addr=")
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .find(|a: &std::net::SocketAddr| a.is_ipv6())
        .expect("an IPv6 listener");
    assert_eq!(get("::1", v6, "/redirect").text(), "#!ipxe\necho V6\n");
    assert_eq!(
        get("127.0.0.25", s.addr, "/redirect").text(),
        "#!ipxe\necho V4\n"
    );
}

#[test]
fn healthcheck_asks_the_running_server_and_consumes_nothing() {
    let t = Tree::new();
    t.write("menus/i.ipxe", "#!ipxe\n");
    t.link("once/127.0.0.1", "../menus/i.ipxe");
    let mut s = Server::start(t.path(), &[]);
    let listen = format!("127.0.0.1:{}", s.port());
    let (c, o, e) = admin(t.path(), &["healthcheck", "--listen", &listen]);
    assert_eq!(
        (c, o.as_str()),
        (0, format!("ok: {listen} answers /redirect\n").as_str()),
        "{e}"
    );
    assert!(t.exists("once/127.0.0.1"), "a healthcheck never consumes");
    // A wildcard listen address is checked on loopback.
    let (c, _, e) = admin(
        t.path(),
        &["healthcheck", "--listen", &format!("0.0.0.0:{}", s.port())],
    );
    assert_eq!(c, 0, "{e}");
    assert_eq!(s.terminate(), Some(0));
    // With --allow excluding loopback the server answers 403: alive all the same.
    let s = Server::start(t.path(), &["--allow", "10.0.0.0/8"]);
    let listen2 = format!("127.0.0.1:{}", s.port());
    let (c, o, e) = admin(t.path(), &["healthcheck", "--listen", &listen2]);
    assert_eq!(c, 0, "{o}{e}");
    assert!(o.contains("403"), "{o}");
    drop(s);
    let (c, _, e) = admin(t.path(), &["healthcheck", "--listen", &listen]);
    assert_eq!(c, 1);
    assert!(e.contains("is not healthy") && e.contains("refused"), "{e}");
}
