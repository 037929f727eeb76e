//! Command line and configuration. Clap types stop here: `ServerConfig::try_from(ServeArgs)`
//! validates once, and the rest of the server only sees the validated values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::boottree::Slot;

pub const DEFAULT_ROOT: &str = "/srv/pxesrv";
pub const DEFAULT_PORT: u16 = 4567;

#[derive(Parser, Debug)]
#[command(
    name = "pxesrv",
    version,
    about = "HTTP boot-config server for iPXE: once/static/default boot scripts by IP, MAC and subnet",
    long_about = "Serves iPXE boot scripts from a directory tree. Point the DHCP filename of every \
client at http://SERVER:4567/redirect?mac=${net0/mac}. For each request pxesrv answers the first \
that exists of once/<mac>, once/<ip> (consumed by that one boot), static/<mac>, static/<ip>, \
static/<longest subnet> (written 10.1.0.0_16) and default. Everything else in the root is served \
as plain files.\n\nWithout a subcommand pxesrv serves; the subcommands work on the same tree \
without a running server."
)]
pub struct Cli {
    /// The boot tree.
    #[arg(long, short = 'r', env = "PXESRV_ROOT", default_value = DEFAULT_ROOT, global = true)]
    pub root: PathBuf,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (repeatable or comma-separated); a bare port or IP is completed
    /// with the default. Default: 0.0.0.0:4567 and [::]:4567.
    #[arg(long, env = "PXESRV_LISTEN", value_delimiter = ',', global = true)]
    pub listen: Vec<String>,

    /// Port for the default listen addresses (as in the Ruby PXESrv).
    #[arg(long, short = 'p', env = "PXESRV_PORT", global = true)]
    pub port: Option<u16>,

    /// Log file, rotated daily (FILE.YYYY-MM-DD). Default: stderr.
    #[arg(long, env = "PXESRV_LOG")]
    pub log: Option<PathBuf>,

    /// Log level filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "PXESRV_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Peers whose X-Forwarded-For / Forwarded headers are believed (CIDRs, comma-separated).
    /// Default: none.
    #[arg(long, env = "PXESRV_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<String>,

    /// Which header a trusted proxy sets: x-forwarded-for (nginx, HAProxy, Traefik append to
    /// it) or forwarded (RFC 7239). Only that one is read: a proxy passes the other through
    /// from the client unchanged.
    #[arg(long, env = "PXESRV_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub forwarded_header: ForwardedHeader,

    /// Only these clients (CIDRs, comma-separated) may boot and download. Default: everyone.
    #[arg(long, env = "PXESRV_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,

    /// Serve directory listings.
    #[arg(long, env = "PXESRV_AUTOINDEX")]
    pub autoindex: bool,

    /// Program run before /redirect answers (no shell; split on whitespace), with
    /// PXESRV_CLIENT_IP, PXESRV_CLIENT_MAC and PXESRV_ROOT in its environment. If it fails
    /// or times out, the client gets an error script instead of a boot.
    #[arg(long, env = "PXESRV_BOOT_HOOK")]
    pub boot_hook: Option<String>,

    /// Seconds the boot hook may take.
    #[arg(long, env = "PXESRV_BOOT_HOOK_TIMEOUT", default_value_t = 30)]
    pub boot_hook_timeout: u64,

    /// When to answer a MAC-less iPXE request with a script that chains back with the MAC:
    /// auto (only if MAC entries exist), always, never.
    #[arg(long, env = "PXESRV_MAC_BOOTSTRAP", value_enum, default_value_t = MacBootstrap::Auto)]
    pub mac_bootstrap: MacBootstrap,

    /// Worker threads. Default: one per CPU.
    #[arg(long, env = "PXESRV_WORKERS")]
    pub workers: Option<usize>,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "PXESRV_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Seconds a client may take to send its request head; slower clients are dropped.
    #[arg(long, env = "PXESRV_CLIENT_TIMEOUT", default_value_t = 5)]
    pub client_timeout: u64,

    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, env = "PXESRV_KEEP_ALIVE", default_value_t = 15)]
    pub keep_alive: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacBootstrap {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Point a client's once or static entry at a file of the tree (atomic replace).
    Set {
        /// once (next boot only) or static (every boot).
        slot: Slot,
        /// IP address, MAC address, or (static only) subnet like 10.1.0.0/16.
        client: String,
        /// A regular file inside the root; relative paths are taken from the root.
        target: PathBuf,
    },
    /// Remove a client's once or static entry (every spelling of it).
    Clear { slot: Slot, client: String },
    /// List every entry with its target and health.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole tree; exits 1 if anything is wrong.
    Check,
    /// Show what a client would boot now, without consuming anything.
    Show {
        /// The client's IP address.
        #[arg(long)]
        ip: Option<IpAddr>,
        /// The client's MAC address.
        #[arg(long)]
        mac: Option<String>,
    },
    /// List consumed once links (time, client, target).
    History,
    /// Put a client's most recently consumed once link back.
    Undo { client: String },
    /// Ask the running server (the first --listen address, loopback for a wildcard) for
    /// HEAD /redirect; exit 0 on 200. Consumes nothing and runs no boot hook.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

/// The validated server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub root: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub log: Option<PathBuf>,
    pub log_level: String,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: ForwardedHeader,
    /// Empty: everyone.
    pub allow: Vec<IpNet>,
    pub autoindex: bool,
    pub boot_hook: Option<Vec<String>>,
    pub boot_hook_timeout: Duration,
    pub mac_bootstrap: MacBootstrap,
    pub workers: usize,
    pub shutdown_timeout: Duration,
    pub client_timeout: Duration,
    pub keep_alive: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--listen {0:?}: not an address; write IP:PORT, [IPv6]:PORT, IP or PORT")]
    Listen(String),
    #[error("{flag} {value:?}: not a CIDR or IP address (e.g. 10.0.0.0/8, 192.168.1.7)")]
    Cidr { flag: &'static str, value: String },
    #[error("--boot-hook is empty")]
    EmptyHook,
    #[error("--workers must be at least 1")]
    Workers,
}

fn parse_cidrs(flag: &'static str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    values
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| ConfigError::Cidr {
                    flag,
                    value: s.to_string(),
                })
        })
        .collect()
}

fn parse_listen(s: &str, port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Ok(p) = s.trim_start_matches(':').parse::<u16>() {
        return Ok(default_listen(p));
    }
    Err(ConfigError::Listen(s.to_string()))
}

fn default_listen(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    ]
}

impl ServerConfig {
    pub fn from_args(root: PathBuf, a: ServeArgs) -> Result<Self, ConfigError> {
        let port = a.port.unwrap_or(DEFAULT_PORT);
        let mut listen = Vec::new();
        for l in a.listen.iter().filter(|l| !l.trim().is_empty()) {
            listen.extend(parse_listen(l, port)?);
        }
        if listen.is_empty() {
            listen = default_listen(port);
        }
        let boot_hook = match &a.boot_hook {
            Some(h) if h.trim().is_empty() => return Err(ConfigError::EmptyHook),
            Some(h) => Some(h.split_whitespace().map(String::from).collect()),
            None => None,
        };
        let workers = match a.workers {
            Some(0) => return Err(ConfigError::Workers),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        Ok(ServerConfig {
            root,
            listen,
            log: a.log.filter(|p| !p.as_os_str().is_empty()),
            log_level: a.log_level,
            trusted_proxies: parse_cidrs("--trusted-proxy", &a.trusted_proxy)?,
            forwarded_header: a.forwarded_header,
            allow: parse_cidrs("--allow", &a.allow)?,
            autoindex: a.autoindex,
            boot_hook,
            boot_hook_timeout: Duration::from_secs(a.boot_hook_timeout),
            mac_bootstrap: a.mac_bootstrap,
            workers,
            shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
            client_timeout: Duration::from_secs(a.client_timeout.max(1)),
            keep_alive: Duration::from_secs(a.keep_alive),
        })
    }

    /// A configuration for tests and embedding: the given root, everything else default.
    pub fn for_root(root: PathBuf) -> Self {
        let args = Cli::parse_from(["pxesrv"]).serve;
        Self::from_args(root, args).expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(argv: &[&str]) -> Result<ServerConfig, ConfigError> {
        let cli = Cli::try_parse_from(argv).unwrap();
        ServerConfig::from_args(cli.root, cli.serve)
    }

    #[test]
    fn listen_forms() {
        let c = cfg(&["pxesrv"]).unwrap();
        assert_eq!(c.listen, default_listen(4567));
        let c = cfg(&["pxesrv", "-p", "8080"]).unwrap();
        assert_eq!(c.listen, default_listen(8080));
        let c = cfg(&[
            "pxesrv",
            "--listen",
            "127.0.0.1:0,[::1]:99",
            "--listen",
            "10.0.0.1",
        ])
        .unwrap();
        assert_eq!(
            c.listen,
            [
                "127.0.0.1:0".parse().unwrap(),
                "[::1]:99".parse().unwrap(),
                "10.0.0.1:4567".parse().unwrap()
            ]
        );
        assert!(matches!(
            cfg(&["pxesrv", "--listen", "nope:1"]),
            Err(ConfigError::Listen(_))
        ));
    }

    #[test]
    fn cidrs() {
        let c = cfg(&[
            "pxesrv",
            "--allow",
            "10.0.0.0/8, 192.168.1.7",
            "--trusted-proxy",
            "::1",
        ])
        .unwrap();
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.allow[1].to_string(), "192.168.1.7/32");
        assert_eq!(c.trusted_proxies[0].to_string(), "::1/128");
        let e = cfg(&["pxesrv", "--allow", "10.0.0.0/33"]).unwrap_err();
        assert!(e.to_string().contains("--allow \"10.0.0.0/33\""), "{e}");
    }

    #[test]
    fn hook_is_split_without_a_shell() {
        let c = cfg(&[
            "pxesrv",
            "--boot-hook",
            "/usr/bin/pxesrv-storage  hook --quiet",
        ])
        .unwrap();
        assert_eq!(
            c.boot_hook.unwrap(),
            ["/usr/bin/pxesrv-storage", "hook", "--quiet"]
        );
    }
}
