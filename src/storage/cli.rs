//! The command line of `pxesrv-storage`. Clap types stop here: `run` turns them into
//! validated values and calls the engine.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::identity::MacAddr;

use super::config::{Config, DEFAULT_CONFIG};
use super::engine::{AttachOpts, Engine, HookOutcome, NewImage};
use super::names::{ImageName, Iqn, LvName};
use super::state::Mode;
use super::StorageError;

/// Copy-on-write iSCSI disks for diskless clients of pxesrv.
///
/// Register golden images, attach clients (by MAC) to them: each gets its own
/// copy-on-write disk, an iSCSI target only its initiator name may open, and a
/// `sanboot` script in the pxesrv boot tree (static/MAC).
#[derive(Debug, Parser)]
#[command(name = "pxesrv-storage", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, env = "PXESRV_STORAGE_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    /// Print every command and file change instead of doing it; change nothing.
    #[arg(long, env = "PXESRV_STORAGE_DRY_RUN", global = true)]
    pub dry_run: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Golden images: register, unregister, list.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Clients: attach to an image, reset, detach, list.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Re-create every export from the tool's state (run at boot, after the target daemon).
    Restore,
    /// Make images and clients match a TOML file; running it again changes nothing.
    Apply {
        /// The file: [[image]] name/file|lv, [[client]] mac/image/mode/initiator/chap.
        file: PathBuf,
    },
    /// For `pxesrv --boot-hook`: reset a reset-on-boot client before it boots.
    ///
    /// Reads PXESRV_CLIENT_MAC (aa-bb-cc-dd-ee-ff, or empty). Exits 0 at once for anyone
    /// who is not a reset-on-boot client; otherwise drops the client's session and writes,
    /// makes a fresh copy of its golden image and exports it again. Needs root; an
    /// unprivileged pxesrv uses --socket instead.
    Hook {
        /// Ask the root hook service on this socket (pxesrv-storage-hook.socket) instead of
        /// doing the work here; no configuration is read.
        #[arg(long, env = "PXESRV_STORAGE_HOOK_SOCKET")]
        socket: Option<PathBuf>,
        /// Seconds to wait for the hook service's answer.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// The root side of `hook --socket`: one request on stdin, the answer on stdout
    /// (started by pxesrv-storage-hook@.service for each connection).
    HookServe,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Register a golden image: a file (reflink backend) or a logical volume (lvm).
    Add {
        name: String,
        /// The image file; it must be on the reflink-capable filesystem of disk.dir.
        #[arg(long, conflicts_with = "lv", required_unless_present = "lv")]
        file: Option<PathBuf>,
        /// The logical volume, in the configured volume group.
        #[arg(long)]
        lv: Option<String>,
    },
    /// Unregister an image (refused while clients use it; the file or LV is kept).
    Rm { name: String },
    /// List images, their size and clients.
    List(ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Give a client its own copy of an image, export it and write its boot entry.
    Attach {
        /// The client's MAC (any spelling).
        mac: String,
        #[arg(long)]
        image: String,
        /// persistent (keeps its writes) or reset-on-boot (fresh at every boot).
        #[arg(long, default_value = "persistent")]
        mode: String,
        /// The client's initiator name (default: IQN_PREFIX:client-MAC).
        #[arg(long)]
        initiator: Option<String>,
        /// Require CHAP; a random secret is generated and put in the boot script.
        #[arg(long)]
        chap: bool,
    },
    /// Drop the client's writes: a fresh copy of the current golden image.
    Reset { mac: String },
    /// Remove the client's target, disk and boot entry.
    Detach { mac: String },
    /// List clients, their state and the space their disks use.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::Io {
        what: "write",
        path: "stdout".into(),
        err: e,
    }
}

/// Runs one invocation; what it reports goes to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), StorageError> {
    if let Command::Hook {
        socket: Some(socket),
        timeout,
    } = &cli.command
    {
        let mac = std::env::var("PXESRV_CLIENT_MAC").unwrap_or_default();
        let answer = super::hook::ask(socket, &mac, std::time::Duration::from_secs(*timeout))?;
        writeln!(out, "{answer}").map_err(io)?;
        return Ok(());
    }
    let cfg = Config::load(&cli.config)?;
    let dry_run = cli.dry_run;
    let eng = Engine::new(cfg, dry_run)?;
    let mac = |s: &str| -> Result<MacAddr, StorageError> { Ok(s.parse()?) };
    match cli.command {
        Command::Image(ImageCmd::Add { name, file, lv }) => {
            let name: ImageName = name.parse()?;
            let src = match (file, lv) {
                (Some(f), _) => NewImage::File(f),
                (None, Some(lv)) => NewImage::Lv(lv.parse::<LvName>()?),
                (None, None) => unreachable!("clap requires --file or --lv"),
            };
            let rec = eng.image_add(name, src)?;
            writeln!(
                out,
                "image {} registered: {} ({})",
                rec.name,
                rec.source,
                human(rec.size)
            )
            .map_err(io)?;
        }
        Command::Image(ImageCmd::Rm { name }) => {
            eng.image_rm(&name.parse()?)?;
            writeln!(out, "image {name} unregistered").map_err(io)?;
        }
        Command::Image(ImageCmd::List(a)) => {
            let list = eng.images()?;
            if a.json {
                print_json(out, &list)?;
            } else {
                writeln!(
                    out,
                    "{:<20} {:>10} {:>7}  SOURCE",
                    "IMAGE", "SIZE", "CLIENTS"
                )
                .map_err(io)?;
                for i in list {
                    writeln!(
                        out,
                        "{:<20} {:>10} {:>7}  {}",
                        i.name,
                        human(i.size),
                        i.clients.len(),
                        i.source
                    )
                    .map_err(io)?;
                }
            }
        }
        Command::Client(ClientCmd::Attach {
            mac: m,
            image,
            mode,
            initiator,
            chap,
        }) => {
            let opts = AttachOpts {
                image: image.parse()?,
                mode: mode.parse::<Mode>().map_err(|why| {
                    StorageError::Name(super::names::NameError {
                        kind: "mode",
                        input: mode.clone(),
                        why,
                    })
                })?,
                initiator: initiator.map(|i| i.parse::<Iqn>()).transpose()?,
                chap,
            };
            let rec = eng.attach(mac(&m)?, &opts)?;
            writeln!(
                out,
                "client {} attached to {} ({}): target {}, initiator {}",
                rec.mac, rec.image, rec.mode, rec.target, rec.initiator
            )
            .map_err(io)?;
        }
        Command::Client(ClientCmd::Reset { mac: m }) => {
            let m = mac(&m)?;
            eng.reset(m)?;
            writeln!(out, "client {m} reset to its golden image").map_err(io)?;
        }
        Command::Client(ClientCmd::Detach { mac: m }) => {
            let m = mac(&m)?;
            eng.detach(m)?;
            writeln!(out, "client {m} detached").map_err(io)?;
        }
        Command::Client(ClientCmd::List(a)) => {
            let list = eng.clients()?;
            if a.json {
                print_json(out, &list)?;
            } else {
                writeln!(
                    out,
                    "{:<18} {:<16} {:<14} {:>10}  {:<12} TARGET",
                    "CLIENT", "IMAGE", "MODE", "USED", "STATE"
                )
                .map_err(io)?;
                for c in list {
                    let used = c.used.map(human).unwrap_or_else(|| "-".into());
                    writeln!(
                        out,
                        "{:<18} {:<16} {:<14} {:>10}  {:<12} {}",
                        c.mac, c.image, c.mode, used, c.state, c.target
                    )
                    .map_err(io)?;
                }
            }
            if let Some(p) = eng.pending()? {
                writeln!(
                    out,
                    "interrupted: {:?} of {} (the next change finishes or undoes it)",
                    p.op, p.client.mac
                )
                .map_err(io)?;
            }
        }
        Command::Restore => {
            let changes = eng.restore()?;
            for c in &changes {
                writeln!(out, "{c}").map_err(io)?;
            }
            writeln!(out, "restore: {} change(s)", changes.len()).map_err(io)?;
        }
        Command::Apply { file } => {
            let changes = eng.apply(&file)?;
            for c in &changes {
                writeln!(out, "{c}").map_err(io)?;
            }
            writeln!(out, "apply: {} change(s)", changes.len()).map_err(io)?;
        }
        Command::HookServe => super::hook::serve(&eng, std::io::stdin().lock(), out)?,
        Command::Hook {
            socket: Some(_), ..
        } => unreachable!("answered before the config is read"),
        Command::Hook { socket: None, .. } => {
            let mac = std::env::var("PXESRV_CLIENT_MAC").ok();
            match eng.hook(mac.as_deref())? {
                HookOutcome::Reset(m) => tracing::info!(client = %m, "reset before boot"),
                HookOutcome::Skipped(why) => tracing::debug!(why = %why, "hook: nothing to do"),
            }
        }
    }
    if dry_run {
        writeln!(
            out,
            "dry run: nothing was changed; the lines above are what would be done"
        )
        .map_err(io)?;
    }
    Ok(())
}

/// A `list --json` answer: the records as one pretty-printed JSON array.
fn print_json<T: serde::Serialize>(out: &mut dyn Write, records: &T) -> Result<(), StorageError> {
    let text = serde_json::to_string_pretty(records).expect("state records serialise");
    writeln!(out, "{text}").map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "pxesrv-storage",
            "--dry-run",
            "client",
            "attach",
            "52:54:00:00:00:01",
            "--image",
            "deb",
        ])
        .unwrap();
        assert!(c.dry_run);
        assert!(Cli::try_parse_from(["pxesrv-storage", "image", "add", "x"]).is_err());
        assert!(Cli::try_parse_from([
            "pxesrv-storage",
            "image",
            "add",
            "x",
            "--file",
            "a",
            "--lv",
            "b"
        ])
        .is_err());
    }
}
