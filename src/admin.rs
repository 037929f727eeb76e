//! The admin subcommands: they work on the boot tree directly, with or without a server.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use crate::boottree::{BootTree, Slot, TreeError};
use crate::identity::{ClientId, EntryName, MacAddr, NO_IP};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Name(#[from] crate::identity::NameParseError),
    #[error(transparent)]
    Mac(#[from] crate::identity::MacParseError),
    #[error("a subnet entry belongs in static/: a once entry is used up by one boot")]
    OnceSubnet,
    #[error("show needs --ip, --mac or both")]
    NoClient,
    #[error("{0} has no consumed once entry to restore")]
    NothingToUndo(String),
    #[error("the tree has {0} problem(s)")]
    Problems(usize),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("server at {addr} is not healthy: {why}")]
    Unhealthy {
        addr: std::net::SocketAddr,
        why: String,
    },
}

pub fn set(
    tree: &BootTree,
    slot: Slot,
    client: &str,
    target: &Path,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let name: EntryName = client.parse()?;
    if slot == Slot::Once && matches!(name, EntryName::Subnet(_)) {
        return Err(AdminError::OnceSubnet);
    }
    let rel = tree.set_link(slot, &name, target)?;
    writeln!(out, "{slot}/{name} -> {}", rel.display())?;
    Ok(())
}

pub fn clear(
    tree: &BootTree,
    slot: Slot,
    client: &str,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let name: EntryName = client.parse()?;
    let removed = tree.clear(slot, &name)?;
    if removed.is_empty() {
        writeln!(out, "{slot}/{name}: no entry")?;
    }
    for r in removed {
        writeln!(out, "removed {slot}/{r}")?;
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

pub fn list(tree: &BootTree, json: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    for slot in [Slot::Once, Slot::Static] {
        for e in tree.list(slot) {
            let kind = e.name.as_ref().map(|n| n.kind()).unwrap_or("invalid");
            let health = tree.health(&e);
            if json {
                let (status, detail) = match &health {
                    Ok(t) => ("ok", t.as_str()),
                    Err(p) => ("problem", p.as_str()),
                };
                writeln!(
                    out,
                    "{{\"entry\":{},\"kind\":\"{kind}\",\"status\":\"{status}\",\"{}\":{}}}",
                    json_str(&e.rel_path()),
                    if status == "ok" { "target" } else { "problem" },
                    json_str(detail)
                )?;
            } else {
                match health {
                    Ok(t) => writeln!(out, "{:<32} {kind:<7} ok       -> {t}", e.rel_path())?,
                    Err(p) => writeln!(out, "{:<32} {kind:<7} PROBLEM  {p}", e.rel_path())?,
                }
            }
        }
    }
    Ok(())
}

pub fn check(tree: &BootTree, out: &mut dyn Write) -> Result<(), AdminError> {
    let problems = tree.problems();
    for p in &problems {
        writeln!(out, "problem: {p}")?;
    }
    if problems.is_empty() {
        let n = tree.list(Slot::Once).len() + tree.list(Slot::Static).len();
        writeln!(out, "ok: {} ({n} entries)", tree.root().display())?;
        Ok(())
    } else {
        Err(AdminError::Problems(problems.len()))
    }
}

pub fn show(
    tree: &BootTree,
    ip: Option<IpAddr>,
    mac: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    if ip.is_none() && mac.is_none() {
        return Err(AdminError::NoClient);
    }
    let mac = mac.map(str::parse::<MacAddr>).transpose()?;
    let client = ClientId::new(ip.unwrap_or(NO_IP), mac);
    let mut chosen = false;
    for c in tree.candidates(&client) {
        let verdict = match tree.resolve(&c.entry) {
            Ok(r) if !chosen => {
                chosen = true;
                let t = r
                    .path
                    .strip_prefix(tree.root())
                    .unwrap_or(&r.path)
                    .display()
                    .to_string();
                format!("BOOTS  -> {t}")
            }
            Ok(_) => "shadowed".to_string(),
            Err(e) => format!("skipped: {e}"),
        };
        writeln!(out, "{:<14} {:<32} {verdict}", c.rule.as_str(), c.entry)?;
    }
    if !chosen {
        writeln!(out, "no-default     -                                the client gets a script sending it to its next boot device")?;
    }
    Ok(())
}

pub fn history(tree: &BootTree, out: &mut dyn Write) -> Result<(), AdminError> {
    for r in tree.consumed() {
        let target = r
            .target
            .map(|t| t.display().to_string())
            .unwrap_or_else(|| "?".into());
        writeln!(out, "{}  once/{}  -> {target}", r.time, r.name)?;
    }
    Ok(())
}

pub fn undo(tree: &BootTree, client: &str, out: &mut dyn Write) -> Result<(), AdminError> {
    let name: EntryName = client.parse()?;
    match tree.undo_consume(&name)? {
        Some(r) => {
            writeln!(out, "restored once/{} (consumed {})", name, r.time)?;
            Ok(())
        }
        None => Err(AdminError::NothingToUndo(name.to_string())),
    }
}

/// HEAD /redirect on the server's own listener: the health of the server, not of the tree.
pub fn healthcheck(
    listen: &[std::net::SocketAddr],
    timeout: std::time::Duration,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    use std::io::Read;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let first = listen.first().copied().unwrap_or(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        crate::config::DEFAULT_PORT,
    ));
    let addr = match first.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), first.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), first.port())
        }
        _ => first,
    };
    let unhealthy = |why: String| AdminError::Unhealthy { addr, why };
    let mut conn =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| unhealthy(e.to_string()))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| unhealthy(e.to_string()))?;
    conn.write_all(b"HEAD /redirect HTTP/1.1\r\nHost: localhost\r\nUser-Agent: pxesrv-healthcheck\r\nConnection: close\r\n\r\n")
        .map_err(|e| unhealthy(e.to_string()))?;
    let mut head = Vec::new();
    conn.take(4096)
        .read_to_end(&mut head)
        .map_err(|e| unhealthy(e.to_string()))?;
    let status_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    match status_line.split_whitespace().nth(1) {
        Some("200") => {
            writeln!(out, "ok: {addr} answers /redirect")?;
            Ok(())
        }
        // The server is up and refusing loopback by --allow: alive all the same.
        Some("403") => {
            writeln!(out, "ok: {addr} answers (403: loopback is not in --allow)")?;
            Ok(())
        }
        _ => Err(unhealthy(format!(
            "HEAD /redirect answered {status_line:?}"
        ))),
    }
}
