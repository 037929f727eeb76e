//! `pxesrv-storage`: golden images and per-client copy-on-write iSCSI disks for diskless
//! clients, with the client's `sanboot` script written into the pxesrv boot tree.
//!
//! - `config`: the TOML configuration; `names`: validated names; `state`: the state file,
//!   its journal and the lock.
//! - Disk backends: `reflink` (FICLONE clones of a file) and `lvm` (snapshots of an LV).
//! - Target backends: `tgt` (userspace tgtd through tgtadm) and `lio` (kernel target through
//!   configfs).
//! - `engine`: the operations (image add/rm, client attach/reset/detach, restore, hook) with
//!   their journal and rollback; `apply`: the declarative file.

pub mod apply;
pub mod cli;
pub mod config;
pub mod engine;
pub mod exec;
pub mod hook;
pub mod lio;
pub mod lvm;
pub mod names;
pub mod reflink;
pub mod state;
pub mod tgt;

use std::io;
use std::path::{Path, PathBuf};

use crate::boottree::TreeError;
use crate::process::ProcessError;

pub use config::Config;
pub use engine::Engine;

/// Everything that can go wrong, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("step {step} failed: {cause}")]
    Step {
        step: &'static str,
        cause: Box<StorageError>,
    },
    #[error("config {path}: {err} (pass --config or set PXESRV_STORAGE_CONFIG)")]
    ConfigRead { path: PathBuf, err: io::Error },
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    ApplyFile { path: PathBuf, message: String },
    #[error("boot hook service {socket}: {message}")]
    Hook { socket: PathBuf, message: String },
    #[error(transparent)]
    Name(#[from] names::NameError),
    #[error(transparent)]
    Mac(#[from] crate::identity::MacParseError),
    #[error(
        "state file {path}: {message} (fix or restore it from backup; the tool will not guess)"
    )]
    State { path: PathBuf, message: String },
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("image {0} is already registered (image rm it first, or pick another name)")]
    ImageExists(String),
    #[error("no image named {0} (see `pxesrv-storage image list`)")]
    ImageNotFound(String),
    #[error("image {image} still has clients attached: {clients} (detach them first)")]
    ImageInUse { image: String, clients: String },
    #[error("image file {0} does not exist")]
    ImageFileMissing(PathBuf),
    #[error("image file {path} is not on the disk filesystem {dir} (reflink clones cannot cross filesystems: move the image into {dir})")]
    ImageOtherFs { path: PathBuf, dir: PathBuf },
    #[error("this image is a {given}, but the configured disk backend is {backend}")]
    WrongImageKind {
        given: &'static str,
        backend: &'static str,
    },
    #[error("client {0} is already attached (detach it first, or use reset to start over)")]
    ClientExists(String),
    #[error("no client {0} is attached (see `pxesrv-storage client list`)")]
    ClientNotFound(String),
    #[error(
        "initiator name {initiator} is already used by client {mac}: every client needs its own"
    )]
    InitiatorInUse { initiator: String, mac: String },
    #[error("{path} already exists and was not written by pxesrv-storage: remove it (or move it aside) before attaching this client")]
    BootEntryExists { path: PathBuf },
    #[error("volume group {vg} not found: {detail} (create it, or fix disk.vg in the config)")]
    VgMissing { vg: String, detail: String },
    #[error("logical volume {vg}/{lv} not found: {detail}")]
    LvMissing {
        vg: String,
        lv: String,
        detail: String,
    },
    #[error("{dir} does not support reflink copies ({detail}): put disk.dir on btrfs or on xfs made with `mkfs.xfs -m reflink=1`; pxesrv-storage never falls back to a full copy")]
    ReflinkUnsupported { dir: PathBuf, detail: String },
    #[error("no space left for {what}: {detail}")]
    NoSpace { what: String, detail: String },
    #[error("the tgt daemon is not answering on control port {port}: {detail} (start it: `systemctl start tgt`, or `tgtd -C {port}`)")]
    TgtdDown { port: u16, detail: String },
    #[error("the kernel iSCSI target is not available: {path} does not exist (load the target_core_mod and iscsi_target_mod modules and mount configfs on /sys/kernel/config)")]
    LioMissing { path: PathBuf },
    #[error("unexpected output from `{command}`: {detail}")]
    Parse { command: String, detail: String },
    #[error("PXESRV_STORAGE_FAULT={0:?}: write after:STEP or fail:STEP")]
    BadFaultSpec(String),
    #[error("fault injected by PXESRV_STORAGE_FAULT=fail:{0}")]
    FaultInjected(&'static str),
    #[error("{failed} of {total} clients could not be restored (the others were): {details}")]
    Restore {
        failed: usize,
        total: usize,
        details: String,
    },
    #[error("the previous run was interrupted and its cleanup failed: {0}")]
    Recovery(Box<StorageError>),
}

impl StorageError {
    pub fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> StorageError + 'a {
        move |err| StorageError::Io {
            what,
            path: path.to_owned(),
            err,
        }
    }
}

/// What a target backend exports for one client.
#[derive(Clone, Debug)]
pub struct Export<'a> {
    pub iqn: &'a names::Iqn,
    pub initiator: &'a names::Iqn,
    /// The client's disk: a file (reflink) or a block device (LVM).
    pub device: PathBuf,
    pub size: u64,
    /// A short name for the backing store (LIO), `pxc-MAC`.
    pub name: String,
    pub chap: Option<&'a state::Chap>,
}
