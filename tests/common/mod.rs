//! Test harness: start the real `pxesrv` binary on a free port and talk HTTP to it from
//! distinct loopback addresses (127.0.0.N), as many different clients would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pxesrv");

/// A boot tree in a temp dir: `default`, `menus/`, empty `once/` and `static/`.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["once", "static", "menus/sub"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let t = Tree { dir };
        t.write("default", "#!ipxe\necho DEFAULT\n");
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// `ln -s TARGET REL` (TARGET as written, relative to the link's directory).
    pub fn link(&self, rel: &str, target: &str) {
        let p = self.path().join(rel);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).symlink_metadata().is_ok()
    }
}

/// A running `pxesrv`, killed on drop. Its stderr is collected in `log`.
pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        Self::start_env(root, extra, &[])
    }

    pub fn start_env(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("PXESRV_ROOT")
            .env_remove("PXESRV_LISTEN")
            .env_remove("PXESRV_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pxesrv");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(a) = line.split("addr=").nth(1) {
                        let a = a.split_whitespace().next().unwrap_or("").to_string();
                        if let Ok(sa) = a.parse::<SocketAddr>() {
                            let _ = tx.send(sa);
                            sent = true;
                        }
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("pxesrv did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child: Some(child),
            addr,
            log,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (the watcher reports asynchronously).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then the exit code (None if it had to be killed).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // let the log reader finish
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects to `addr` from the source address `from` (127.0.0.N).
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

/// Sends a raw request (the request head without its final blank line is completed here)
/// from `from` and reads the whole response (the connection is closed by the request).
pub fn raw(from: &str, addr: SocketAddr, head: &str) -> std::io::Result<Response> {
    let mut s = connect_from(from.parse().unwrap(), addr)?;
    s.write_all(head.as_bytes())?;
    s.write_all(b"Connection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf, head.starts_with("HEAD"))
}

pub fn parse_response(buf: &[u8], head: bool) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = if head {
        Vec::new()
    } else {
        buf[end + 4..].to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `GET path` from client address `from`.
pub fn get(from: &str, addr: SocketAddr, path: &str) -> Response {
    get_with(from, addr, path, &[])
}

pub fn get_with(from: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: pxesrv\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    raw(from, addr, &head).unwrap_or_else(|e| panic!("GET {path} from {from}: {e}"))
}

/// Runs the admin CLI on `root`: (exit code, stdout, stderr).
pub fn admin(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("PXESRV_ROOT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `n` requests for `/redirect` from one client at the same moment, spread over `servers`
/// (one connection each, released together by a barrier). Returns every response.
pub fn race(from: &str, servers: &[SocketAddr], n: usize) -> Vec<Response> {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            let addr = servers[i % servers.len()];
            let from: IpAddr = from.parse().unwrap();
            std::thread::spawn(move || {
                let mut c = connect_from(from, addr).unwrap();
                b.wait();
                c.write_all(b"GET /redirect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut buf = Vec::new();
                c.read_to_end(&mut buf).unwrap();
                parse_response(&buf, false).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}
