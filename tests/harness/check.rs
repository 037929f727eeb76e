//! Asserting which target a boot reached, by three independent witnesses: the marker on the
//! serial console, QEMU's exit status 33, and the server's own `boot` log line. A failure
//! prints everything needed to explain it: each check, the console, the server log.

use std::time::Duration;

use super::marker::{marker, MARKER_EXIT, MARKER_PREFIX};
use super::qemu::BootOutcome;
use super::server::{LogEvent, Server};
use super::tree::Tree;

/// How a boot's `boot` log line is told apart from others on the same server.
#[derive(Clone, Debug)]
pub enum Who {
    /// `mac=` field, compared in normal form (lower case, `-` separated).
    Mac(String),
    /// `client=` field: the address the server saw.
    Client(String),
}

impl Who {
    /// Whether `ev` is about this client. The server logs MACs in their canonical form, so
    /// that is what is compared: a log with another spelling does not match.
    pub fn matches(&self, ev: &LogEvent) -> bool {
        match self {
            Who::Mac(mac) => ev.get("mac") == Some(canonical_mac(mac).as_str()),
            Who::Client(ip) => ev.get("client") == Some(ip.as_str()),
        }
    }
}

/// The canonical spelling of a MAC: `52:54:00:AB:00:01` -> `52-54-00-ab-00-01`.
pub fn canonical_mac(mac: &str) -> String {
    mac.to_ascii_lowercase().replace([':', '.'], "-")
}

/// What a boot must show.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The marker sector that must have run (see [`super::tree::Tree::marker_target`]).
    pub marker: String,
    pub rule: String,
    /// `default`, `once/NAME` or `static/NAME`.
    pub entry: String,
    /// The file served, relative to the root.
    pub target: String,
    /// The `client=` the server must have seen, if the test knows it.
    pub client: Option<String>,
}

impl Expect {
    pub fn new(marker_name: &str, rule: &str, entry: &str, target: &str) -> Expect {
        Expect {
            marker: marker(marker_name),
            rule: rule.into(),
            entry: entry.into(),
            target: target.into(),
            client: None,
        }
    }

    pub fn client(mut self, ip: &str) -> Expect {
        self.client = Some(ip.into());
        self
    }
}

/// The marker lines on a console, in order.
pub fn markers_on(serial: &str) -> Vec<String> {
    serial
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| l.starts_with(MARKER_PREFIX))
        .map(String::from)
        .collect()
}

/// Asserts that `boot` reached `exp`: rc 33, exactly the expected marker on the console, and
/// exactly one `boot` line since `mark` for `who` with the expected rule, entry, target and
/// status 200. Returns that log line's event for further checks.
pub fn assert_booted(
    boot: &BootOutcome,
    server: &Server,
    tree: &Tree,
    mark: usize,
    who: &Who,
    exp: &Expect,
) -> LogEvent {
    let mut checks: Vec<(bool, String)> = Vec::new();
    checks.push((
        boot.rc == Some(MARKER_EXIT),
        format!(
            "qemu exit status {} (want {MARKER_EXIT}: the marker sector ran){}",
            boot.rc.map_or("none".into(), |c| c.to_string()),
            if boot.timed_out { ", TIMED OUT" } else { "" }
        ),
    ));
    let seen = markers_on(&boot.serial);
    checks.push((
        seen == [exp.marker.clone()],
        format!("markers on serial {seen:?} (want [{:?}])", exp.marker),
    ));
    // The line can trail the client's exit by a moment.
    let events = server.wait_events(mark, Duration::from_secs(3), |e| {
        e.message == "boot" && who.matches(e)
    });
    checks.push((
        events.len() == 1,
        format!("{} `boot` log lines for {who:?} (want 1)", events.len()),
    ));
    let ev = events.first().cloned().unwrap_or_default();
    let mut field = |key: &str, want: &str| {
        let got = ev.get(key);
        checks.push((
            got == Some(want),
            format!(
                "boot line {key}={} (want {want})",
                got.unwrap_or("<missing>")
            ),
        ));
    };
    if !events.is_empty() {
        field("rule", &exp.rule);
        field("entry", &exp.entry);
        field("target", &exp.target);
        field("status", "200");
        if let Some(client) = &exp.client {
            field("client", client);
        }
    }
    if checks.iter().all(|(ok, _)| *ok) {
        super::say(&format!(
            "boot {} booted {} via rule={} entry={} client={} mac={} \
             (qemu rc 33, marker on serial, boot line)",
            boot.name,
            exp.target,
            exp.rule,
            exp.entry,
            ev.get("client").unwrap_or("?"),
            ev.get("mac").unwrap_or("?"),
        ));
        return ev;
    }
    panic!("{}", failure_report(boot, server, tree, mark, &checks));
}

/// Everything about a boot, for a failure message.
pub fn failure_report(
    boot: &BootOutcome,
    server: &Server,
    tree: &Tree,
    mark: usize,
    checks: &[(bool, String)],
) -> String {
    let mut out = format!(
        "boot {} (mac {}) is not what was expected:\n",
        boot.name, boot.mac
    );
    for (ok, what) in checks {
        out.push_str(&format!(
            "  [{}] {what}\n",
            if *ok { " ok " } else { "FAIL" }
        ));
    }
    out.push_str(&format!(
        "duration {:.1} s\nqemu argv: {}\n",
        boot.duration.as_secs_f64(),
        boot.argv.join(" ")
    ));
    if !boot.qemu_stderr.trim().is_empty() {
        out.push_str(&format!("qemu stderr:\n{}\n", boot.qemu_stderr.trim_end()));
    }
    out.push_str(&format!(
        "---- serial console ({}) ----\n{}\n",
        boot.serial_path.display(),
        printable(&boot.serial)
    ));
    out.push_str(&format!(
        "---- boot tree {} now ----\n{}",
        tree.root().display(),
        tree.listing()
    ));
    out.push_str(&format!(
        "---- server log since this boot started (argv {:?}) ----\n{}\n",
        server.argv,
        server.log_since(mark)
    ));
    out.push_str("---- end ----\n");
    out
}

/// The console without terminal control sequences and carriage returns.
pub fn printable(serial: &str) -> String {
    super::server::strip_ansi(serial)
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect()
}
