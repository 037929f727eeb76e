//! The operations: images, clients, restore and the boot hook, each run under the state
//! lock, journalled before it acts, and undone (attach) or finished (reset, detach) if it
//! fails or the process dies half-way.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::boottree::{BootTree, Slot};
use crate::identity::{EntryName, MacAddr};

use super::config::{Config, DiskConfig, TargetConfig};
use super::exec::{Action, Exec};
use super::lio::Lio;
use super::lvm::Lvm;
use super::names::{ImageName, Iqn, LvName};
use super::reflink::Reflink;
use super::state::{
    Chap, ClientRec, DiskRef, ImageRec, ImageSource, Mode, Op, Pending, State, StateLock,
};
use super::tgt::Tgt;
use super::{Export, StorageError};

/// The first lines of every boot script this tool writes; only such entries are ever
/// replaced or removed.
pub const SCRIPT_MARK: &str = "# Written by pxesrv-storage";

pub enum Disks {
    Reflink(Reflink),
    Lvm(Lvm),
}

pub enum Targets {
    Tgt(Tgt),
    Lio(Lio),
}

/// Where a new golden image comes from, as the operator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewImage {
    File(PathBuf),
    Lv(LvName),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachOpts {
    pub image: ImageName,
    pub mode: Mode,
    pub initiator: Option<Iqn>,
    pub chap: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    pub name: String,
    pub source: String,
    pub size: u64,
    pub clients: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientInfo {
    pub mac: String,
    pub image: String,
    pub mode: String,
    pub initiator: String,
    pub target: String,
    pub disk: String,
    /// "ready", "not exported", "disk missing", "daemon down" ...
    pub state: String,
    /// Bytes of the client's own data: reflink, the extents it does not share with the
    /// golden image; LVM, the snapshot's data.
    pub used: Option<u64>,
    /// Bytes the disk occupies as the filesystem counts them, shared blocks included
    /// (reflink), or the snapshot's size (LVM).
    pub allocated: Option<u64>,
}

/// What the boot hook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    Reset(String),
    Skipped(String),
}

pub struct Engine {
    pub cfg: Config,
    pub ex: Exec,
    pub disks: Disks,
    pub targets: Targets,
}

fn random_secret() -> Result<String, StorageError> {
    let path = std::path::Path::new("/dev/urandom");
    let mut b = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(StorageError::io("read", path))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// `iscsi:IP::PORT:LUN:IQN`, brackets around an IPv6 address.
pub fn sanboot_uri(portal: &SocketAddr, lun: u32, target: &Iqn) -> String {
    let host = match portal {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!("iscsi:{host}::{}:{lun}:{target}", portal.port())
}

/// The client's iPXE script: its initiator name (and CHAP credentials), then `sanboot`.
pub fn boot_script(cfg: &Config, c: &ClientRec) -> String {
    let mut s = format!(
        "#!ipxe\n{SCRIPT_MARK} for client {mac}: image {image}, {mode}.\n\
         # Change it with pxesrv-storage (client detach/attach), not by hand.\n\
         set initiator-iqn {ini}\n",
        mac = c.mac,
        image = c.image,
        mode = c.mode,
        ini = c.initiator
    );
    if let Some(chap) = &c.chap {
        s.push_str(&format!(
            "set username {}\nset password {}\n",
            chap.user, chap.secret
        ));
    }
    s.push_str(&format!(
        "sanboot {} || goto failed\nexit\n:failed\necho pxesrv-storage: sanboot of {} failed\nexit 1\n",
        sanboot_uri(&cfg.portal, cfg.lun(), &c.target),
        c.target
    ));
    s
}

/// Undoes a client's partial creation unless committed.
struct Rollback<'a> {
    eng: &'a Engine,
    client: &'a ClientRec,
    armed: bool,
}

impl Rollback<'_> {
    fn commit(mut self) {
        self.armed = false;
    }
    fn undo(mut self) -> Result<(), StorageError> {
        self.armed = false;
        self.eng.teardown(self.client)
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.eng.teardown(self.client) {
                tracing::error!(client = %self.client.mac, error = %e, "rollback failed");
            }
        }
    }
}

impl Engine {
    pub fn new(cfg: Config, dry_run: bool) -> Result<Engine, StorageError> {
        let ex = Exec::new(dry_run, cfg.command_timeout)?;
        Ok(Engine::with_exec(cfg, ex))
    }

    pub fn with_exec(cfg: Config, ex: Exec) -> Engine {
        let disks = match &cfg.disk {
            DiskConfig::Reflink { dir } => Disks::Reflink(Reflink::new(dir.clone())),
            DiskConfig::Lvm { vg, snapshot_size } => {
                Disks::Lvm(Lvm::new(vg.clone(), *snapshot_size))
            }
        };
        let targets = match &cfg.target {
            TargetConfig::Tgt { control_port } => Targets::Tgt(Tgt::new(*control_port)),
            TargetConfig::Lio { configfs, listen } => {
                Targets::Lio(Lio::new(configfs.clone(), *listen))
            }
        };
        Engine {
            cfg,
            ex,
            disks,
            targets,
        }
    }

    // ---- plumbing -------------------------------------------------------------------

    /// Takes the lock, loads the state and finishes or undoes an interrupted change.
    pub(crate) fn begin(
        &self,
        skip_reset_of: Option<&str>,
    ) -> Result<(StateLock, State), StorageError> {
        self.begin_with(skip_reset_of).map(|(l, s, _)| (l, s))
    }

    /// Like `begin`, and also returns the interrupted change it finished, if any.
    fn begin_with(
        &self,
        skip_reset_of: Option<&str>,
    ) -> Result<(StateLock, State, Option<Pending>), StorageError> {
        let lock = StateLock::acquire(&self.cfg.state_dir)?;
        let mut st = State::load(&self.cfg.state_dir)?;
        let finished = st.pending.clone();
        self.recover(&mut st, skip_reset_of)?;
        Ok((lock, st, finished))
    }

    fn save(&self, st: &State) -> Result<(), StorageError> {
        if self.ex.dry_run() {
            return Ok(());
        }
        st.save(&self.cfg.state_dir)
    }

    fn tree(&self) -> Result<BootTree, StorageError> {
        Ok(BootTree::open(&self.cfg.root)?)
    }

    fn image_of<'s>(&self, st: &'s State, c: &ClientRec) -> Result<&'s ImageRec, StorageError> {
        st.images
            .get(&c.image)
            .ok_or_else(|| StorageError::ImageNotFound(c.image.to_string()))
    }

    fn mac_of(c: &ClientRec) -> MacAddr {
        c.mac.parse().expect("state holds canonical MACs")
    }

    fn recover(&self, st: &mut State, skip_reset_of: Option<&str>) -> Result<(), StorageError> {
        let Some(p) = st.pending.clone() else {
            return Ok(());
        };
        tracing::warn!(op = ?p.op, client = %p.client.mac, "finishing an interrupted change");
        let r = match p.op {
            Op::Attach | Op::Detach => self.teardown(&p.client).map(|()| {
                st.clients.remove(&p.client.mac);
            }),
            Op::Reset if skip_reset_of == Some(p.client.mac.as_str()) => Ok(()),
            Op::Reset => self.rebuild(st, &p.client),
        };
        r.map_err(|e| StorageError::Recovery(Box::new(e)))?;
        st.pending = None;
        self.save(st)
    }

    // ---- disks and targets ------------------------------------------------------------

    fn disk_for(&self, mac: &MacAddr) -> DiskRef {
        match &self.disks {
            Disks::Reflink(r) => r.disk_for(mac),
            Disks::Lvm(l) => l.disk_for(mac),
        }
    }

    fn create_disk(&self, image: &ImageRec, disk: &DiskRef) -> Result<(), StorageError> {
        match (&self.disks, &image.source) {
            (Disks::Reflink(r), ImageSource::File { path }) => r.create(&self.ex, path, disk),
            (Disks::Lvm(l), ImageSource::Lv { lv, .. }) => l.create(&self.ex, lv, disk),
            (Disks::Reflink(_), ImageSource::Lv { .. }) => Err(StorageError::WrongImageKind {
                given: "logical volume",
                backend: "reflink",
            }),
            (Disks::Lvm(_), ImageSource::File { .. }) => Err(StorageError::WrongImageKind {
                given: "file",
                backend: "lvm",
            }),
        }
    }

    fn remove_disk(&self, disk: &DiskRef) -> Result<bool, StorageError> {
        match &self.disks {
            Disks::Reflink(r) => r.remove(&self.ex, disk),
            Disks::Lvm(l) => l.remove(&self.ex, disk),
        }
    }

    fn disk_exists(&self, disk: &DiskRef) -> Result<bool, StorageError> {
        match &self.disks {
            Disks::Reflink(r) => Ok(r.exists(disk)),
            Disks::Lvm(l) => l.exists(&self.ex, disk),
        }
    }

    fn check_targets(&self) -> Result<(), StorageError> {
        match &self.targets {
            Targets::Tgt(t) => t.check(&self.ex),
            Targets::Lio(l) => l.check(),
        }
    }

    /// The IQNs of the targets that exist now.
    fn exported(&self) -> Result<HashSet<String>, StorageError> {
        match &self.targets {
            Targets::Tgt(t) => Ok(t.targets(&self.ex)?.into_iter().map(|t| t.iqn).collect()),
            Targets::Lio(l) => {
                l.check()?;
                Ok(std::fs::read_dir(l.root.join("iscsi"))
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .filter(|e| e.path().join("tpgt_1").is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default())
            }
        }
    }

    fn export(&self, c: &ClientRec, image: &ImageRec) -> Result<(), StorageError> {
        let e = Export {
            iqn: &c.target,
            initiator: &c.initiator,
            device: c.disk.device(),
            size: image.size,
            name: format!("pxc-{}", c.mac),
            chap: c.chap.as_ref(),
        };
        match &self.targets {
            Targets::Tgt(t) => t.export(&self.ex, &e),
            Targets::Lio(l) => l.export(&self.ex, &e),
        }
    }

    fn unexport(&self, c: &ClientRec) -> Result<bool, StorageError> {
        match &self.targets {
            Targets::Tgt(t) => t.unexport(&self.ex, &c.target, c.chap.as_ref()),
            Targets::Lio(l) => l.unexport(&self.ex, &c.target, &format!("pxc-{}", c.mac)),
        }
    }

    // ---- boot entries -----------------------------------------------------------------

    /// The client's entry in `static/`, if any: (path, written by us, content).
    fn boot_entry(&self, mac: &MacAddr) -> Result<Option<(PathBuf, bool, String)>, StorageError> {
        let tree = self.tree()?;
        let name = EntryName::Mac(*mac);
        if let Some(file) = tree.spellings(Slot::Static, &name).into_iter().next() {
            let path = tree.slot_dir(Slot::Static).join(file);
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let ours = path.is_file()
                && !path.is_symlink()
                && content
                    .lines()
                    .nth(1)
                    .is_some_and(|l| l.starts_with(SCRIPT_MARK));
            return Ok(Some((path, ours, content)));
        }
        Ok(None)
    }

    fn write_boot_entry(&self, c: &ClientRec) -> Result<(), StorageError> {
        let script = boot_script(&self.cfg, c);
        let tree = self.tree()?;
        let mac = Self::mac_of(c);
        let path = tree.slot_dir(Slot::Static).join(mac.to_string());
        self.ex
            .note(Action::Write(path.display().to_string(), script.clone()));
        if self.ex.dry_run() {
            return Ok(());
        }
        tree.write_script(Slot::Static, &EntryName::Mac(mac), script.as_bytes())?;
        Ok(())
    }

    fn remove_boot_entry(&self, c: &ClientRec) -> Result<bool, StorageError> {
        let mac = Self::mac_of(c);
        match self.boot_entry(&mac)? {
            Some((path, true, _)) => {
                self.ex.note(Action::Remove(path.display().to_string()));
                if !self.ex.dry_run() {
                    self.tree()?.clear(Slot::Static, &EntryName::Mac(mac))?;
                }
                Ok(true)
            }
            Some((path, false, _)) => {
                tracing::warn!(entry = %path.display(), "boot entry not written by pxesrv-storage; left alone");
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Removes everything of a client that exists: boot entry, target, disk. Tries all
    /// three and reports the first failure.
    fn teardown(&self, c: &ClientRec) -> Result<(), StorageError> {
        let a = self
            .ex
            .step("boot-entry-remove", || self.remove_boot_entry(c));
        let b = self.ex.step("unexport", || self.unexport(c));
        let d = self.ex.step("disk-remove", || self.remove_disk(&c.disk));
        a?;
        b?;
        d?;
        Ok(())
    }

    /// Drops the client's disk and export and makes them again from the image.
    fn rebuild(&self, st: &State, c: &ClientRec) -> Result<(), StorageError> {
        let image = self.image_of(st, c)?;
        self.ex.step("unexport", || self.unexport(c))?;
        self.ex.step("disk-remove", || self.remove_disk(&c.disk))?;
        self.ex.step("disk", || self.create_disk(image, &c.disk))?;
        self.export(c, image)?;
        self.ex.step("boot-entry", || self.write_boot_entry(c))
    }

    // ---- images -------------------------------------------------------------------------

    pub fn image_add(&self, name: ImageName, src: NewImage) -> Result<ImageRec, StorageError> {
        let (_lock, mut st) = self.begin(None)?;
        let rec = self.image_add_locked(&mut st, name, src)?;
        self.save(&st)?;
        Ok(rec)
    }

    pub(crate) fn image_add_locked(
        &self,
        st: &mut State,
        name: ImageName,
        src: NewImage,
    ) -> Result<ImageRec, StorageError> {
        if st.images.contains_key(&name) {
            return Err(StorageError::ImageExists(name.to_string()));
        }
        let (source, size) = match (&self.disks, src) {
            (Disks::Reflink(r), NewImage::File(path)) => {
                let (path, size) = r.check_image(&self.ex, &path)?;
                (ImageSource::File { path }, size)
            }
            (Disks::Lvm(l), NewImage::Lv(lv)) => {
                let size = l.check_image(&self.ex, &lv)?;
                (
                    ImageSource::Lv {
                        vg: l.vg.clone(),
                        lv,
                    },
                    size,
                )
            }
            (Disks::Reflink(_), NewImage::Lv(_)) => {
                return Err(StorageError::WrongImageKind {
                    given: "logical volume (--lv)",
                    backend: "reflink: give --file",
                })
            }
            (Disks::Lvm(_), NewImage::File(_)) => {
                return Err(StorageError::WrongImageKind {
                    given: "file (--file)",
                    backend: "lvm: give --lv",
                })
            }
        };
        let rec = ImageRec {
            name: name.clone(),
            source,
            size,
        };
        st.images.insert(name, rec.clone());
        Ok(rec)
    }

    pub fn image_rm(&self, name: &ImageName) -> Result<(), StorageError> {
        let (_lock, mut st) = self.begin(None)?;
        self.image_rm_locked(&mut st, name)?;
        self.save(&st)
    }

    pub(crate) fn image_rm_locked(
        &self,
        st: &mut State,
        name: &ImageName,
    ) -> Result<(), StorageError> {
        if !st.images.contains_key(name) {
            return Err(StorageError::ImageNotFound(name.to_string()));
        }
        let users = st.clients_of(name);
        if !users.is_empty() {
            return Err(StorageError::ImageInUse {
                image: name.to_string(),
                clients: users.join(", "),
            });
        }
        st.images.remove(name);
        Ok(())
    }

    pub fn images(&self) -> Result<Vec<ImageInfo>, StorageError> {
        let st = State::load(&self.cfg.state_dir)?;
        Ok(st
            .images
            .values()
            .map(|i| ImageInfo {
                name: i.name.to_string(),
                source: i.source.to_string(),
                size: i.size,
                clients: st.clients_of(&i.name),
            })
            .collect())
    }

    // ---- clients ------------------------------------------------------------------------

    pub fn attach(&self, mac: MacAddr, opts: &AttachOpts) -> Result<ClientRec, StorageError> {
        let (_lock, mut st) = self.begin(None)?;
        self.attach_locked(&mut st, mac, opts)
    }

    /// The record `attach` would create, after every check that needs no change.
    fn plan_client(
        &self,
        st: &State,
        mac: MacAddr,
        opts: &AttachOpts,
    ) -> Result<ClientRec, StorageError> {
        let key = mac.to_string();
        if st.clients.contains_key(&key) {
            return Err(StorageError::ClientExists(key));
        }
        if !st.images.contains_key(&opts.image) {
            return Err(StorageError::ImageNotFound(opts.image.to_string()));
        }
        let initiator = match &opts.initiator {
            Some(i) => i.clone(),
            None => self.cfg.iqn_prefix.with_suffix(&format!("client-{mac}"))?,
        };
        if let Some(other) = st.clients.values().find(|c| c.initiator == initiator) {
            return Err(StorageError::InitiatorInUse {
                initiator: initiator.to_string(),
                mac: other.mac.clone(),
            });
        }
        let target = self.cfg.iqn_prefix.with_suffix(&format!("disk-{mac}"))?;
        if target == initiator {
            return Err(StorageError::InitiatorInUse {
                initiator: initiator.to_string(),
                mac: format!("{key} (it is that client's own target name)"),
            });
        }
        if let Some((path, false, _)) = self.boot_entry(&mac)? {
            return Err(StorageError::BootEntryExists { path });
        }
        let chap = if opts.chap {
            Some(Chap {
                user: format!("pxc-{mac}"),
                secret: random_secret()?,
            })
        } else {
            None
        };
        Ok(ClientRec {
            mac: key,
            image: opts.image.clone(),
            mode: opts.mode,
            initiator,
            target,
            disk: self.disk_for(&mac),
            chap,
        })
    }

    pub(crate) fn attach_locked(
        &self,
        st: &mut State,
        mac: MacAddr,
        opts: &AttachOpts,
    ) -> Result<ClientRec, StorageError> {
        let rec = self.plan_client(st, mac, opts)?;
        self.check_targets()?;
        let image = self.image_of(st, &rec)?.clone();
        self.ex.step("journal", || {
            st.pending = Some(Pending {
                op: Op::Attach,
                client: rec.clone(),
            });
            self.save(st)
        })?;
        let guard = Rollback {
            eng: self,
            client: &rec,
            armed: true,
        };
        let made = (|| {
            self.ex
                .step("disk", || self.create_disk(&image, &rec.disk))?;
            self.export(&rec, &image)?;
            self.ex.step("boot-entry", || self.write_boot_entry(&rec))
        })();
        if let Err(e) = made {
            return match guard.undo() {
                Ok(()) => {
                    st.pending = None;
                    self.save(st)?;
                    Err(e)
                }
                Err(undo) => {
                    tracing::error!(client = %rec.mac, error = %undo, "rollback failed; the next run will retry it");
                    Err(e)
                }
            };
        }
        st.clients.insert(rec.mac.clone(), rec.clone());
        st.pending = None;
        self.ex.step("commit", || self.save(st))?;
        guard.commit();
        Ok(rec)
    }

    pub fn detach(&self, mac: MacAddr) -> Result<(), StorageError> {
        let key = mac.to_string();
        let (_lock, mut st, finished) = self.begin_with(Some(&key))?;
        if finished.is_some_and(|p| p.op == Op::Detach && p.client.mac == key) {
            // The interrupted run was this very detach; recovery just finished it.
            return Ok(());
        }
        self.detach_locked(&mut st, &key)
    }

    pub(crate) fn detach_locked(&self, st: &mut State, key: &str) -> Result<(), StorageError> {
        let rec = match (st.clients.get(key), &st.pending) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) if p.client.mac == key => p.client.clone(),
            (None, _) => return Err(StorageError::ClientNotFound(key.to_string())),
        };
        self.ex.step("journal", || {
            st.pending = Some(Pending {
                op: Op::Detach,
                client: rec.clone(),
            });
            self.save(st)
        })?;
        self.teardown(&rec)?;
        st.clients.remove(key);
        st.pending = None;
        self.ex.step("commit", || self.save(st))
    }

    pub fn reset(&self, mac: MacAddr) -> Result<(), StorageError> {
        let (_lock, mut st) = self.begin(None)?;
        self.reset_locked(&mut st, &mac.to_string())
    }

    pub(crate) fn reset_locked(&self, st: &mut State, key: &str) -> Result<(), StorageError> {
        let rec = st
            .clients
            .get(key)
            .cloned()
            .ok_or_else(|| StorageError::ClientNotFound(key.to_string()))?;
        self.image_of(st, &rec)?;
        self.check_targets()?;
        self.ex.step("journal", || {
            st.pending = Some(Pending {
                op: Op::Reset,
                client: rec.clone(),
            });
            self.save(st)
        })?;
        // On failure the journal stays: the next run finishes the reset.
        self.rebuild(st, &rec)?;
        st.pending = None;
        self.ex.step("commit", || self.save(st))
    }

    pub fn clients(&self) -> Result<Vec<ClientInfo>, StorageError> {
        let st = State::load(&self.cfg.state_dir)?;
        let exported = self.exported();
        let lvs = match &self.disks {
            Disks::Lvm(l) => l.list(&self.ex).ok(),
            Disks::Reflink(_) => None,
        };
        let mut out = Vec::new();
        for c in st.clients.values() {
            let disk_ok = match (&self.disks, &lvs) {
                (Disks::Lvm(_), Some(list)) => match &c.disk {
                    DiskRef::Lv { lv, .. } => list.iter().any(|l| l.lv_name == lv.as_str()),
                    _ => false,
                },
                _ => self.disk_exists(&c.disk).unwrap_or(false),
            };
            let (used, allocated) = match (&self.disks, &c.disk, &lvs) {
                (Disks::Reflink(r), d, _) => (r.exclusive(&self.ex, d), r.allocated(d)),
                (Disks::Lvm(_), DiskRef::Lv { lv, .. }, Some(list)) => {
                    let l = list.iter().find(|l| l.lv_name == lv.as_str());
                    (l.map(|l| l.used()), l.map(|l| l.lv_size))
                }
                _ => (None, None),
            };
            let state = match (&exported, disk_ok) {
                (_, false) => "disk missing".to_string(),
                (Err(e), _) => format!("target unknown: {e}"),
                (Ok(set), true) if set.contains(c.target.as_str()) => "ready".to_string(),
                (Ok(_), true) => "not exported (run restore)".to_string(),
            };
            out.push(ClientInfo {
                mac: c.mac.clone(),
                image: c.image.to_string(),
                mode: c.mode.to_string(),
                initiator: c.initiator.to_string(),
                target: c.target.to_string(),
                disk: c.disk.to_string(),
                state,
                used,
                allocated,
            });
        }
        Ok(out)
    }

    /// The interrupted change, if one is journalled.
    pub fn pending(&self) -> Result<Option<Pending>, StorageError> {
        Ok(State::load(&self.cfg.state_dir)?.pending)
    }

    // ---- restore and hook -------------------------------------------------------------

    /// Re-creates every export (and a missing boot entry or inactive volume) from the
    /// state. Returns what it changed.
    pub fn restore(&self) -> Result<Vec<String>, StorageError> {
        let _lock = StateLock::acquire(&self.cfg.state_dir)?;
        let mut st = State::load(&self.cfg.state_dir)?;
        // An interrupted change that cannot be finished now (a reset on a full disk, say) must
        // not leave every other client unexported after a reboot: export the others first,
        // then report it. It stays journalled, for the next run to finish.
        let recovery = self.recover(&mut st, None);
        let restored = self.restore_locked(&st);
        match (recovery, restored) {
            (Ok(()), restored) => restored,
            (Err(e), restored) => {
                if let Err(other) = &restored {
                    tracing::error!(error = %other, "restore");
                }
                Err(e)
            }
        }
    }

    pub(crate) fn restore_locked(&self, st: &State) -> Result<Vec<String>, StorageError> {
        self.check_targets()?;
        let exported = self.exported()?;
        let mut changes = Vec::new();
        let mut failures = Vec::new();
        for c in st.clients.values() {
            match self.ensure_client(st, c, &exported) {
                Ok(mut ch) => changes.append(&mut ch),
                Err(e) => failures.push(format!("{}: {e}", c.mac)),
            }
        }
        if failures.is_empty() {
            Ok(changes)
        } else {
            Err(StorageError::Restore {
                failed: failures.len(),
                total: st.clients.len(),
                details: failures.join("; "),
            })
        }
    }

    fn ensure_client(
        &self,
        st: &State,
        c: &ClientRec,
        exported: &HashSet<String>,
    ) -> Result<Vec<String>, StorageError> {
        let mut changes = Vec::new();
        let image = self.image_of(st, c)?;
        if let Disks::Lvm(l) = &self.disks {
            if l.activate(&self.ex, &c.disk)? {
                changes.push(format!("{}: activated {}", c.mac, c.disk));
            }
        }
        let mut rebuilt = false;
        if !self.disk_exists(&c.disk)? {
            tracing::warn!(client = %c.mac, disk = %c.disk, "disk missing: re-created from the golden image");
            self.ex.step("unexport", || self.unexport(c))?;
            self.ex.step("disk", || self.create_disk(image, &c.disk))?;
            changes.push(format!(
                "{}: disk {} was missing, re-created from image {}",
                c.mac, c.disk, c.image
            ));
            rebuilt = true;
        }
        if rebuilt || !exported.contains(c.target.as_str()) {
            if let Err(e) = self.export(c, image) {
                let _ = self.unexport(c);
                return Err(e);
            }
            changes.push(format!("{}: exported {}", c.mac, c.target));
        }
        let want = boot_script(&self.cfg, c);
        match self.boot_entry(&Self::mac_of(c))? {
            Some((_, true, content)) if content == want => {}
            Some((path, false, _)) => {
                return Err(StorageError::BootEntryExists { path });
            }
            _ => {
                self.ex.step("boot-entry", || self.write_boot_entry(c))?;
                changes.push(format!("{}: wrote boot entry static/{}", c.mac, c.mac));
            }
        }
        Ok(changes)
    }

    /// Rewrites the client's boot entry if it differs from what it should be.
    pub(crate) fn restore_boot_entry(&self, c: &ClientRec) -> Result<(), StorageError> {
        self.ex.step("boot-entry", || self.write_boot_entry(c))
    }

    /// For `pxesrv --boot-hook`: resets a reset-on-boot client before it logs in; anyone
    /// else passes straight through.
    pub fn hook(&self, mac: Option<&str>) -> Result<HookOutcome, StorageError> {
        let Some(raw) = mac.filter(|m| !m.is_empty()) else {
            return Ok(HookOutcome::Skipped("no MAC given".into()));
        };
        let Ok(mac) = raw.parse::<MacAddr>() else {
            return Ok(HookOutcome::Skipped(format!("{raw:?} is not a MAC")));
        };
        let key = mac.to_string();
        // Quick look without the lock: the file is replaced atomically.
        let st = State::load(&self.cfg.state_dir)?;
        match st.clients.get(&key) {
            None => {
                return Ok(HookOutcome::Skipped(format!(
                    "{key} is not a storage client"
                )))
            }
            Some(c) if c.mode == Mode::Persistent => {
                return Ok(HookOutcome::Skipped(format!("{key} is persistent")))
            }
            Some(_) => {}
        }
        let (_lock, mut st) = self.begin(None)?;
        match st.clients.get(&key) {
            Some(c) if c.mode == Mode::ResetOnBoot => {}
            _ => return Ok(HookOutcome::Skipped(format!("{key} changed meanwhile"))),
        }
        self.reset_locked(&mut st, &key)?;
        Ok(HookOutcome::Reset(key))
    }
}
