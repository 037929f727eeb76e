//! The configuration file (`/etc/pxesrv/storage.toml`): where the boot tree is, which
//! portal clients are told, the IQN prefix, and the two backends.
//!
//! ```toml
//! root = "/srv/pxesrv"                  # the pxesrv boot tree
//! state_dir = "/var/lib/pxesrv-storage" # state.json and its lock
//! portal = "192.0.2.10:3260"            # what clients are told (port defaults to 3260)
//! iqn_prefix = "iqn.2024-01.org.example.pxesrv"
//! command_timeout = "60s"
//!
//! [disk]
//! backend = "reflink"                   # or "lvm"
//! dir = "/srv/pxesrv-disks"             # reflink: btrfs or xfs with reflink=1
//! # vg = "vg0"                          # lvm: the volume group
//! # snapshot_size = "8G"                # lvm, classic snapshots only (default: origin size)
//!
//! [target]
//! backend = "tgt"                       # or "lio"
//! control_port = 0                      # tgt: tgtadm -C N
//! # configfs = "/sys/kernel/config/target"  # lio
//! # listen = "0.0.0.0:3260"             # lio: the portal to open (default: portal)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::names::{Iqn, VgName};
use super::StorageError;

pub const DEFAULT_CONFIG: &str = "/etc/pxesrv/storage.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pxesrv-storage";
pub const DEFAULT_CONFIGFS: &str = "/sys/kernel/config/target";
pub const ISCSI_PORT: u16 = 3260;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    root: PathBuf,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    portal: String,
    iqn_prefix: Iqn,
    #[serde(default)]
    command_timeout: Option<String>,
    disk: DiskFile,
    target: TargetFile,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
enum DiskFile {
    Reflink {
        dir: PathBuf,
    },
    Lvm {
        vg: VgName,
        #[serde(default)]
        snapshot_size: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
enum TargetFile {
    Tgt {
        #[serde(default)]
        control_port: Option<u16>,
    },
    Lio {
        #[serde(default)]
        configfs: Option<PathBuf>,
        #[serde(default)]
        listen: Option<String>,
    },
}

/// Where client disks live and how they are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskConfig {
    Reflink {
        dir: PathBuf,
    },
    Lvm {
        vg: VgName,
        /// Size of classic (non-thin) snapshots in bytes; `None`: the origin's size.
        snapshot_size: Option<u64>,
    },
}

/// How disks are exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetConfig {
    Tgt {
        control_port: u16,
    },
    Lio {
        configfs: PathBuf,
        listen: SocketAddr,
    },
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub portal: SocketAddr,
    pub iqn_prefix: Iqn,
    pub command_timeout: Duration,
    pub disk: DiskConfig,
    pub target: TargetConfig,
}

/// `IP`, `IP:PORT`, `[v6]:PORT`.
pub fn parse_portal(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, ISCSI_PORT));
    }
    Err(format!(
        "{s:?} is not an address: write IP or IP:PORT (192.0.2.10:3260, [2001:db8::1]:3260)"
    ))
}

/// `8G`, `512M`, `1T`, `4096` (bytes); binary units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: the unit must be B, K, M, G or T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: write 8G, 512M, 1T or a number of bytes"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, StorageError> {
        let text = std::fs::read_to_string(path).map_err(|err| StorageError::ConfigRead {
            path: path.to_owned(),
            err,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, StorageError> {
        let bad = |message: String| StorageError::Config {
            path: path.to_owned(),
            message,
        };
        let f: ConfigFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let portal = parse_portal(&f.portal).map_err(|e| bad(format!("portal: {e}")))?;
        let command_timeout = match f.command_timeout {
            Some(t) => humantime::parse_duration(&t)
                .map_err(|e| bad(format!("command_timeout {t:?}: {e} (write 60s, 2m)")))?,
            None => Duration::from_secs(60),
        };
        let disk = match f.disk {
            DiskFile::Reflink { dir } => {
                if !dir.is_absolute() {
                    return Err(bad(format!("disk.dir {dir:?} must be an absolute path")));
                }
                DiskConfig::Reflink { dir }
            }
            DiskFile::Lvm { vg, snapshot_size } => DiskConfig::Lvm {
                vg,
                snapshot_size: snapshot_size
                    .map(|s| parse_size(&s).map_err(|e| bad(format!("disk.snapshot_size: {e}"))))
                    .transpose()?,
            },
        };
        let target = match f.target {
            TargetFile::Tgt { control_port } => TargetConfig::Tgt {
                control_port: control_port.unwrap_or(0),
            },
            TargetFile::Lio { configfs, listen } => TargetConfig::Lio {
                configfs: configfs.unwrap_or_else(|| DEFAULT_CONFIGFS.into()),
                listen: match listen {
                    Some(l) => parse_portal(&l).map_err(|e| bad(format!("target.listen: {e}")))?,
                    None => portal,
                },
            },
        };
        for (what, p) in [
            ("root", &f.root),
            ("state_dir", &f.state_dir.clone().unwrap_or_default()),
        ] {
            if !p.as_os_str().is_empty() && !p.is_absolute() {
                return Err(bad(format!("{what} {p:?} must be an absolute path")));
            }
        }
        Ok(Config {
            root: f.root,
            state_dir: f.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            portal,
            iqn_prefix: f.iqn_prefix,
            command_timeout,
            disk,
            target,
        })
    }

    /// The iSCSI LUN carrying the disk: tgt keeps LUN 0 for its controller.
    pub fn lun(&self) -> u32 {
        match self.target {
            TargetConfig::Tgt { .. } => 1,
            TargetConfig::Lio { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, String> {
        Config::parse(t, Path::new("/etc/x.toml")).map_err(|e| e.to_string())
    }

    const BASE: &str = r#"
root = "/srv/pxesrv"
portal = "192.0.2.10"
iqn_prefix = "iqn.2024-01.org.example.pxesrv"
"#;

    #[test]
    fn reflink_tgt() {
        let c = parse(&format!(
            "{BASE}[disk]\nbackend = \"reflink\"\ndir = \"/srv/disks\"\n[target]\nbackend = \"tgt\"\ncontrol_port = 7\n"
        ))
        .unwrap();
        assert_eq!(c.portal, "192.0.2.10:3260".parse().unwrap());
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.target, TargetConfig::Tgt { control_port: 7 });
        assert_eq!(c.lun(), 1);
        assert_eq!(c.command_timeout, Duration::from_secs(60));
    }

    #[test]
    fn lvm_lio() {
        let c = parse(&format!(
            "{BASE}command_timeout = \"5s\"\n[disk]\nbackend = \"lvm\"\nvg = \"vg0\"\nsnapshot_size = \"2G\"\n[target]\nbackend = \"lio\"\nlisten = \"0.0.0.0:3260\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.disk,
            DiskConfig::Lvm {
                vg: "vg0".parse().unwrap(),
                snapshot_size: Some(2 << 30)
            }
        );
        assert_eq!(c.lun(), 0);
        assert!(
            matches!(c.target, TargetConfig::Lio { ref configfs, .. } if configfs == Path::new(DEFAULT_CONFIGFS))
        );
    }

    #[test]
    fn mistakes_are_named() {
        let tail = "[disk]\nbackend = \"reflink\"\ndir = \"/d\"\n[target]\nbackend = \"tgt\"\n";
        for (text, want) in [
            (format!("{BASE}colour = 1\n{tail}"), "unknown field `colour`"),
            (format!("{BASE}[disk]\nbackend = \"zfs\"\n[target]\nbackend = \"tgt\"\n"), "zfs"),
            (format!("{BASE}[disk]\nbackend = \"lvm\"\nvg = \"-x\"\n[target]\nbackend = \"tgt\"\n"), "starts with '-'"),
            (format!("{BASE}[disk]\nbackend = \"reflink\"\ndir = \"rel\"\n[target]\nbackend = \"tgt\"\n"), "absolute"),
            (format!("{BASE}[disk]\nbackend = \"reflink\"\ndir = \"/d\"\nvg = \"x\"\n[target]\nbackend = \"tgt\"\n"), "unknown field `vg`"),
            (tail.replace("[disk]", "root = \"/r\"\nportal = \"nowhere\"\niqn_prefix = \"iqn.2024-01.a.b\"\n[disk]"), "not an address"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
    }
}
