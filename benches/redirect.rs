//! Load benchmark: many clients (distinct 127.0.x.y source addresses) hit `/redirect` with a
//! mix of default, static-IP, static-MAC, subnet and once answers. Reports req/s, p50/p99
//! latency, errors, the server's RSS, and the time to the first answer after start. When
//! nginx is installed it serves the same tree's `default` as a static file in the same run,
//! and the ratio pxesrv/nginx is printed. Then one 200 MB file is downloaded by 50 clients
//! at once from each server, while a probe measures /redirect latency during the downloads.
//!
//! Run: `cargo bench --bench redirect` (env: BENCH_REQUESTS, BENCH_CONNS, and BENCH_ONCE_MS:
//! how often the once links of 1/8 of the clients are re-created, default 200 ms; 20 ms is a
//! stress case where once/ changes hundreds of times a second).
//! Targets on a 2-core machine: /redirect >= 0.8x nginx, p99 <= 5 ms at 64 connections,
//! RSS <= 30 MB after 100k requests, first answer <= 50 ms after start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pxesrv");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn client_addr(i: u64) -> IpAddr {
    // 127.0.(10 + i/250).(1 + i%250): distinct clients, none of them 127.0.0.1.
    format!("127.0.{}.{}", 10 + i / 250, 1 + i % 250)
        .parse()
        .unwrap()
}

fn mac_of(i: u64) -> String {
    format!("52-54-00-00-{:02x}-{:02x}", i / 256, i % 256)
}

fn connect(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect(&to.into())?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Reads one response; returns (status, body length).
fn read_response(r: &mut BufReader<TcpStream>, sink: &mut [u8]) -> std::io::Result<(u16, u64)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0u64;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("eof in headers"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut left = len;
    while left > 0 {
        let want = left.min(sink.len() as u64) as usize;
        let n = r.read(&mut sink[..want])?;
        if n == 0 {
            return Err(std::io::Error::other("eof in body"));
        }
        left -= n as u64;
    }
    Ok((status, len))
}

struct LoadResult {
    requests: u64,
    errors: u64,
    secs: f64,
    lat_us: Vec<u32>,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<8} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}  ({} requests in {:.2} s)",
            self.rps(),
            self.pct(0.50),
            self.pct(0.99),
            self.errors,
            self.requests,
            self.secs
        )
    }
}

/// `conns` keep-alive connections from distinct client addresses, `total` requests in all.
/// `path_of(client index)` is the request target.
fn load(
    to: SocketAddr,
    conns: u64,
    total: u64,
    path_of: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let (next, errors, path_of) = (next.clone(), errors.clone(), path_of.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut sink = vec![0u8; 64 << 10];
                let from = client_addr(c);
                let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    if conn.is_none() {
                        match connect(from, to) {
                            Ok(s) => {
                                let r = BufReader::with_capacity(64 << 10, s.try_clone().unwrap());
                                conn = Some((s, r));
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    let (w, r) = conn.as_mut().unwrap();
                    let req = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", path_of(c));
                    let t = Instant::now();
                    let ok = w.write_all(req.as_bytes()).is_ok()
                        && matches!(read_response(r, &mut sink), Ok((200, _)));
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat_us: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    LoadResult {
        requests: lat_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        secs,
        lat_us,
    }
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(addr: SocketAddr, path: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = connect("127.0.0.1".parse().unwrap(), addr) {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let req = format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            if w.write_all(req.as_bytes()).is_ok() {
                if let Ok((200, _)) = read_response(&mut r, &mut [0u8; 4096]) {
                    return t0.elapsed();
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "server at {addr} did not answer"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn make_tree(root: &Path, clients: u64) {
    for d in ["once", "static", "menus", "files"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("default"),
        "#!ipxe\necho default\nchain menus/menu.ipxe\n",
    )
    .unwrap();
    std::fs::write(
        root.join("menus/menu.ipxe"),
        "#!ipxe\nkernel vmlinuz\ninitrd initrd\nboot\n",
    )
    .unwrap();
    std::fs::write(
        root.join("menus/install.ipxe"),
        "#!ipxe\nchain http://x/install\n",
    )
    .unwrap();
    // Mix: every 4th client by IP, every 4th+1 by MAC, subnet for the 127.0.11.0/24 block,
    // the rest default; once links are refreshed in the background.
    for i in 0..clients {
        match i % 4 {
            0 => std::os::unix::fs::symlink(
                "../menus/menu.ipxe",
                root.join("static").join(client_addr(i).to_string()),
            )
            .unwrap(),
            1 => std::os::unix::fs::symlink(
                "../menus/menu.ipxe",
                root.join("static").join(mac_of(i)),
            )
            .unwrap(),
            _ => {}
        }
    }
    std::os::unix::fs::symlink("../menus/menu.ipxe", root.join("static/127.0.11.0_24")).unwrap();
}

fn main() {
    let total = env_num("BENCH_REQUESTS", 100_000);
    let conns = env_num("BENCH_CONNS", 64);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    make_tree(&root, conns);
    let logdir = dir.path().join("log");
    std::fs::create_dir_all(&logdir).unwrap();

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t_spawn = Instant::now();
    let server = Proc(
        Command::new(BIN)
            .arg("--root")
            .arg(&root)
            .args(["--listen", &addr.to_string()])
            .arg("--log")
            .arg(logdir.join("pxesrv.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let first = wait_ready(addr, "/redirect");
    let _ = t_spawn;
    println!(
        "pxesrv first answer {:.1} ms after start",
        first.as_secs_f64() * 1000.0
    );

    // Keep a steady share of once answers: re-create once links for 1/8 of the clients every
    // BENCH_ONCE_MS.
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut made = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in (0..conns).filter(|i| i % 8 == 2) {
                    let link = root.join("once").join(client_addr(i).to_string());
                    if std::os::unix::fs::symlink("../menus/install.ipxe", &link).is_ok() {
                        made += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(env_num("BENCH_ONCE_MS", 200)));
            }
            made
        })
    };
    let path_of: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|c| {
        if c % 4 == 1 {
            format!("/redirect?mac={}", mac_of(c))
        } else {
            "/redirect".into()
        }
    });
    // Warm-up, then the measured run.
    load(addr, conns, total / 10, path_of.clone());
    let px = load(addr, conns, total, path_of);
    stop.store(true, Ordering::Relaxed);
    let once_links = refresher.join().unwrap();
    let rss = rss_mb(server.0.id());
    println!("{}", px.line("pxesrv"));
    println!("pxesrv RSS after {} requests: {rss:.1} MB; once links created during the run: {once_links}", px.requests + total / 10);

    let nginx = Command::new("nginx").arg("-v").output().is_ok();
    let mut ng_res = None;
    let mut ng_proc = None;
    let ng_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    if nginx {
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\ndaemon off;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log {d}/nginx-access.log; sendfile on; keepalive_requests 1000000;\n\
                 client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen {ng_addr}; root {root}; }} }}\n",
                d = dir.path().display(),
                root = root.display()
            ),
        )
        .unwrap();
        ng_proc = Some(Proc(
            Command::new("nginx")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        wait_ready(ng_addr, "/default");
        let p: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|_| "/default".into());
        load(ng_addr, conns, total / 10, p.clone());
        let ng = load(ng_addr, conns, total, p);
        println!("{}", ng.line("nginx"));
        println!("ratio pxesrv/nginx: {:.2}", px.rps() / ng.rps());
        ng_res = Some(ng);
    } else {
        println!("nginx not installed: no comparison (apt-get install nginx-light)");
    }

    // The same comparison with wrk (one source address, epoll-driven, so the load generator
    // takes less of the two cores than the thread-per-connection clients above).
    if Command::new("wrk").arg("--version").output().is_ok() {
        let mut targets = vec![("pxesrv", format!("http://{addr}/redirect"))];
        if ng_res.is_some() {
            targets.push(("nginx", format!("http://{ng_addr}/default")));
        }
        let mut rates = Vec::new();
        for (name, url) in targets {
            let out = Command::new("wrk")
                .args(["-t2", "-c64", "-d5s", "--latency", &url])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |key: &str| {
                text.lines()
                    .find(|l| l.trim_start().starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("?")
                    .to_string()
            };
            let rps = field("Requests/sec:");
            println!(
                "wrk {name:<8} {rps:>9} req/s  p50 {}  p99 {}",
                field("50%"),
                field("99%")
            );
            rates.push(rps.parse::<f64>().unwrap_or(f64::NAN));
        }
        if rates.len() == 2 {
            println!("wrk ratio pxesrv/nginx: {:.2}", rates[0] / rates[1]);
        }
    } else {
        println!("wrk not installed: no wrk comparison (apt-get install wrk)");
    }

    // 200 MB downloaded by 50 clients at once, with a /redirect probe running alongside.
    let big = root.join("files/big.img");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for _ in 0..200 {
            f.write_all(&chunk).unwrap();
        }
    }
    let mut servers = vec![("pxesrv", addr)];
    if ng_res.is_some() {
        servers.push(("nginx", ng_addr));
    }
    for (name, a) in servers {
        let t0 = Instant::now();
        let downloads: Vec<_> = (0..50u64)
            .map(|i| {
                std::thread::spawn(move || {
                    let s = connect(client_addr(500 + i), a).unwrap();
                    let mut r = BufReader::with_capacity(1 << 20, s.try_clone().unwrap());
                    let mut w = s;
                    w.write_all(b"GET /files/big.img HTTP/1.1\r\nHost: b\r\n\r\n")
                        .unwrap();
                    read_response(&mut r, &mut vec![0u8; 1 << 20])
                        .map(|(st, n)| st == 200 && n == 200 << 20)
                })
            })
            .collect();
        let probe = if name == "pxesrv" {
            let p: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|_| "/redirect".into());
            Some(load(a, 1, 200, p))
        } else {
            None
        };
        let ok = downloads
            .into_iter()
            .map(|h| h.join())
            .filter(|r| matches!(r, Ok(Ok(true))))
            .count();
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{name:<8} 50 x 200 MB: {ok}/50 complete in {secs:.2} s ({:.0} MB/s aggregate)",
            ok as f64 * 200.0 / secs
        );
        if let Some(p) = probe {
            println!(
                "         /redirect during the downloads: p50 {:.3} ms  p99 {:.3} ms  errors {}",
                p.pct(0.5),
                p.pct(0.99),
                p.errors
            );
        }
    }
    println!(
        "pxesrv RSS after the downloads: {:.1} MB",
        rss_mb(server.0.id())
    );
    drop(ng_proc);
    drop(server);
}
