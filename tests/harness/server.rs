//! The real `pxesrv` binary on a boot tree, its stderr log captured and parsed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::netns::Netns;

/// How long the server gets to print its `listening` lines.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ServerSpec {
    pub program: PathBuf,
    pub root: PathBuf,
    /// One `--listen` each; port 0 lets the kernel pick, the harness reads the real port.
    pub listen: Vec<String>,
    pub extra_args: Vec<OsString>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Where the server's stderr is copied, line by line, as it arrives.
    pub log_file: PathBuf,
}

impl ServerSpec {
    /// The `pxesrv` this crate builds, serving `root`, listening on `listen`.
    pub fn pxesrv(root: &Path, listen: &[&str], log_file: &Path) -> ServerSpec {
        ServerSpec {
            program: PathBuf::from(env!("CARGO_BIN_EXE_pxesrv")),
            root: root.to_owned(),
            listen: listen.iter().map(|s| s.to_string()).collect(),
            extra_args: Vec::new(),
            netns: None,
            log_file: log_file.to_owned(),
        }
    }

    pub fn in_netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.name().to_string());
        self
    }
}

/// The captured log, shared with the reader threads.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running server; killed and reaped on drop.
pub struct Server {
    child: Child,
    log: Arc<Log>,
    addrs: Vec<SocketAddr>,
    pub argv: Vec<OsString>,
}

impl Server {
    /// Starts the server and waits for one `listening ... addr=IP:PORT` line per `--listen`.
    pub fn start(spec: ServerSpec) -> Server {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = &spec.netns {
            argv.push(super::tool("ip").unwrap().into());
            argv.extend(["netns", "exec"].map(OsString::from));
            argv.push(ns.into());
        }
        argv.push(spec.program.clone().into());
        argv.push("--root".into());
        argv.push(spec.root.clone().into());
        for l in &spec.listen {
            argv.push("--listen".into());
            argv.push(l.into());
        }
        argv.extend(spec.extra_args.iter().cloned());

        let mut cmd = super::long_running(&argv);
        // Only the arguments configure the server: no PXESRV_* twin of a flag from the
        // caller's environment (PXESRV_LOG would send the log to a file), no log filter.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PXESRV_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", argv));
        let log = Arc::new(Log::default());
        let file = Arc::new(Mutex::new(
            std::fs::File::create(&spec.log_file).expect("create server log file"),
        ));
        spawn_reader(child.stderr.take().unwrap(), log.clone(), file.clone());
        spawn_reader(child.stdout.take().unwrap(), log.clone(), file);

        let mut server = Server {
            child,
            log,
            addrs: Vec::new(),
            argv,
        };
        let want = spec.listen.len();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let addrs: Vec<SocketAddr> = server
                .events_since(0)
                .iter()
                .filter(|e| e.message.starts_with("listening"))
                .filter_map(|e| e.get("addr").and_then(|a| a.parse().ok()))
                .collect();
            if addrs.len() >= want {
                server.addrs = addrs;
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "pxesrv exited ({status}) before listening\nargv: {:?}\nlog:\n{}",
                    server.argv,
                    server.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "pxesrv printed {} of {want} `listening ... addr=` lines within {:?}\n\
                     argv: {:?}\nlog:\n{}",
                    addrs.len(),
                    START_TIMEOUT,
                    server.argv,
                    server.log_text()
                );
            }
            server.wait_for_more(Duration::from_millis(200));
        }
    }

    /// The address of the first listener, as the server reported it.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `http://ADDR` of the first listener, as a client reaches it (`host` replaces the IP,
    /// e.g. `10.0.2.2` for QEMU user networking, where the host's loopback appears).
    pub fn url_via(&self, host: &str) -> String {
        format!("http://{host}:{}", self.addr().port())
    }

    /// Number of log lines so far: a mark to look at what a boot added.
    pub fn mark(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    pub fn log_since(&self, mark: usize) -> String {
        let lines = self.log.lines.lock().unwrap();
        lines[mark.min(lines.len())..].join("\n")
    }

    /// The parsed log lines after `mark`.
    pub fn events_since(&self, mark: usize) -> Vec<LogEvent> {
        let lines = self.log.lines.lock().unwrap();
        lines[mark.min(lines.len())..]
            .iter()
            .map(|l| LogEvent::parse(l))
            .collect()
    }

    /// The boot decisions after `mark`: lines whose message is exactly `boot`.
    pub fn boots_since(&self, mark: usize) -> Vec<LogEvent> {
        self.events_since(mark)
            .into_iter()
            .filter(|e| e.message == "boot")
            .collect()
    }

    /// The `path=` of each plain download after `mark` (message exactly `download`).
    pub fn downloads_since(&self, mark: usize) -> Vec<String> {
        self.events_since(mark)
            .into_iter()
            .filter(|e| e.message == "download")
            .filter_map(|e| e.get("path").map(String::from))
            .collect()
    }

    /// Waits up to `timeout` for an event after `mark` that satisfies `pred` (a log line can
    /// trail the client's exit by a moment); returns all matching events at that time.
    pub fn wait_events(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&LogEvent) -> bool,
    ) -> Vec<LogEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<LogEvent> = self.events_since(mark).into_iter().filter(&pred).collect();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            self.wait_for_more(Duration::from_millis(100));
        }
    }

    fn wait_for_more(&self, timeout: Duration) {
        let lines = self.log.lines.lock().unwrap();
        let _ = self.log.grew.wait_timeout(lines, timeout).unwrap();
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    log: Arc<Log>,
    file: Arc<Mutex<std::fs::File>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = file.lock().unwrap().write_all(&buf);
                    let line = strip_ansi(&String::from_utf8_lossy(&buf))
                        .trim_end()
                        .to_string();
                    log.lines.lock().unwrap().push(line);
                    log.grew.notify_all();
                }
            }
        }
    });
}

/// Removes terminal colour sequences (`ESC [ ... letter`), in case the server colours its log.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of the server's tracing text log: `TIME LEVEL [target:] message k=v k="v w"`.
/// The message is the text between the level (and any `module::path:` or `span{..}:` prefix)
/// and the first `k=v` field; a later field of the same name wins (event fields follow span
/// fields).
#[derive(Clone, Debug, Default)]
pub struct LogEvent {
    pub line: String,
    pub level: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

impl LogEvent {
    pub fn parse(line: &str) -> LogEvent {
        let tokens = tokenize(line);
        let mut ev = LogEvent {
            line: line.to_string(),
            ..Default::default()
        };
        let mut rest = match tokens.iter().position(|t| LEVELS.contains(&t.as_str())) {
            Some(i) => {
                ev.level = tokens[i].clone();
                &tokens[i + 1..]
            }
            None => &tokens[..],
        };
        let is_prefix =
            |t: &String| t.ends_with(':') && (t.contains("::") || t.contains(['{', '}']));
        while rest.first().is_some_and(is_prefix) {
            rest = &rest[1..];
        }
        let mut words = Vec::new();
        for tok in rest {
            match split_field(tok) {
                Some((k, v)) => {
                    ev.fields.insert(k, v);
                }
                None if ev.fields.is_empty() => words.push(tok.as_str()),
                None => {}
            }
        }
        ev.message = words.join(" ");
        ev
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Splits on whitespace outside double quotes, keeping the quotes.
fn tokenize(line: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' && quoted {
            cur.push(c);
            escaped = true;
        } else if c == '"' {
            cur.push(c);
            quoted = !quoted;
        } else if c.is_whitespace() && !quoted {
            if !cur.is_empty() {
                tokens.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    tokens
}

/// `key=value` or `key="quoted value"` (unquoted); `None` for anything else.
fn split_field(tok: &str) -> Option<(String, String)> {
    // Span fields look like `span{k=v}:`; only plain `k=v` tokens are event fields.
    let (k, v) = tok.split_once('=')?;
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    };
    Some((k.to_string(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_text_lines() {
        let ev = LogEvent::parse(
            "2026-11-22T13:00:00.123456Z  INFO boot client=10.77.0.55 \
             mac=52-54-00-12-34-01 rule=static-ip entry=static/10.77.0.55 \
             target=targets/a.ipxe status=200 bytes=59 ms=0.4",
        );
        assert_eq!(ev.level, "INFO");
        assert_eq!(ev.message, "boot");
        assert_eq!(ev.get("rule"), Some("static-ip"));
        assert_eq!(ev.get("target"), Some("targets/a.ipxe"));

        let ev = LogEvent::parse(&strip_ansi(
            "\u{1b}[2m2026-11-22T13:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening on \
             http://127.0.0.1:4242/redirect addr=127.0.0.1:4242 root=\"/tmp/a b\"",
        ));
        assert_eq!(ev.message, "listening on http://127.0.0.1:4242/redirect");
        assert_eq!(ev.get("addr"), Some("127.0.0.1:4242"));
        assert_eq!(ev.get("root"), Some("/tmp/a b"));

        let ev = LogEvent::parse(
            "T  INFO boot: asking the client to come back with its MAC client=127.0.0.1 mac=-",
        );
        assert_eq!(
            ev.message,
            "boot: asking the client to come back with its MAC"
        );

        let ev = LogEvent::parse("T INFO pxesrv::http: request{method=GET}: download path=/x");
        assert_eq!(ev.message, "download");
        assert_eq!(ev.get("path"), Some("/x"));
    }
}
