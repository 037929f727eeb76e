//! The tool's own record of images and clients (`STATE_DIR/state.json`), the journal entry
//! written before a change starts, and the lock that serialises invocations.
//!
//! The file is replaced atomically (temp file in the same directory, fsync, rename, fsync of
//! the directory), so a crash leaves either the old or the new state. A change first writes
//! its intent (`pending`); if the process dies half-way, the next run finds it and undoes
//! (attach) or finishes (reset, detach) the change before doing anything else.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::{ImageName, Iqn, LvName, VgName};
use super::StorageError;

pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";
const VERSION: u32 = 1;

/// Where a golden image is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageSource {
    File { path: PathBuf },
    Lv { vg: VgName, lv: LvName },
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::File { path } => write!(f, "{}", path.display()),
            ImageSource::Lv { vg, lv } => write!(f, "{vg}/{lv}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRec {
    pub name: ImageName,
    pub source: ImageSource,
    pub size: u64,
}

/// A client's own disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DiskRef {
    File { path: PathBuf },
    Lv { vg: VgName, lv: LvName },
}

impl DiskRef {
    /// The file or block device the target exports.
    pub fn device(&self) -> PathBuf {
        match self {
            DiskRef::File { path } => path.clone(),
            DiskRef::Lv { vg, lv } => Path::new("/dev").join(vg.as_str()).join(lv.as_str()),
        }
    }

    pub fn is_block(&self) -> bool {
        matches!(self, DiskRef::Lv { .. })
    }
}

impl std::fmt::Display for DiskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskRef::File { path } => write!(f, "{}", path.display()),
            DiskRef::Lv { vg, lv } => write!(f, "{vg}/{lv}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The client keeps its writes across boots until reset.
    #[default]
    Persistent,
    /// Every boot starts from the golden image (done by `pxesrv-storage hook`).
    ResetOnBoot,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "persistent" => Ok(Mode::Persistent),
            "reset-on-boot" => Ok(Mode::ResetOnBoot),
            _ => Err(format!(
                "{s:?} is not a mode: use persistent or reset-on-boot"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Persistent => "persistent",
            Mode::ResetOnBoot => "reset-on-boot",
        })
    }
}

/// CHAP credentials the target asks the client for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRec {
    /// Canonical `aa-bb-cc-dd-ee-ff`.
    pub mac: String,
    pub image: ImageName,
    pub mode: Mode,
    pub initiator: Iqn,
    pub target: Iqn,
    pub disk: DiskRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
}

/// A change in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Attach,
    Reset,
    Detach,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub op: Op,
    pub client: ClientRec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub images: BTreeMap<ImageName, ImageRec>,
    /// By canonical MAC.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientRec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: VERSION,
            images: BTreeMap::new(),
            clients: BTreeMap::new(),
            pending: None,
        }
    }
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(dir: &Path) -> Result<State, StorageError> {
        let path = State::path(dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(StorageError::io("read", &path)(e)),
        };
        let st: State = serde_json::from_str(&text).map_err(|e| StorageError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if st.version != VERSION {
            return Err(StorageError::State {
                path,
                message: format!(
                    "version {} is not the version {VERSION} this tool writes",
                    st.version
                ),
            });
        }
        Ok(st)
    }

    /// Replaces the state file atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StorageError> {
        let path = State::path(dir);
        let tmp = dir.join(format!(".{STATE_FILE}.tmp-{}", std::process::id()));
        let mut text = serde_json::to_vec_pretty(self).expect("state serialises");
        text.push(b'\n');
        let write = || -> std::io::Result<()> {
            // CHAP secrets live here: readable by root only.
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(StorageError::io("write", &tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(StorageError::io("replace", &path))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The clients of one image, by MAC.
    pub fn clients_of(&self, image: &ImageName) -> Vec<String> {
        self.clients
            .values()
            .filter(|c| &c.image == image)
            .map(|c| c.mac.clone())
            .collect()
    }
}

/// An exclusive lock on `STATE_DIR/lock`, held until dropped. Waits for another
/// invocation to finish.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub fn acquire(dir: &Path) -> Result<StateLock, StorageError> {
        fs::create_dir_all(dir).map_err(StorageError::io("create state directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StorageError::io("open lock", &path))?;
        file.lock().map_err(StorageError::io("lock", &path))?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), State::default());
        let mut st = State::default();
        let name: ImageName = "deb".parse().unwrap();
        st.images.insert(
            name.clone(),
            ImageRec {
                name: name.clone(),
                source: ImageSource::File {
                    path: "/d/deb.img".into(),
                },
                size: 1 << 26,
            },
        );
        let c = ClientRec {
            mac: "52-54-00-00-00-01".into(),
            image: name,
            mode: Mode::ResetOnBoot,
            initiator: "iqn.2024-01.a.b:client-52-54-00-00-00-01".parse().unwrap(),
            target: "iqn.2024-01.a.b:disk-52-54-00-00-00-01".parse().unwrap(),
            disk: DiskRef::Lv {
                vg: "vg0".parse().unwrap(),
                lv: "pxc-52-54-00-00-00-01".parse().unwrap(),
            },
            chap: None,
        };
        st.clients.insert(c.mac.clone(), c.clone());
        st.pending = Some(Pending {
            op: Op::Reset,
            client: c,
        });
        st.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), st);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![STATE_FILE.to_string()], "no temp file left");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(State::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "CHAP secrets are not world-readable");
        fs::write(State::path(dir.path()), "{\"version\": 1, \"colour\": 2}").unwrap();
        let e = State::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn lock_serialises() {
        let dir = tempfile::tempdir().unwrap();
        let l = StateLock::acquire(dir.path()).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(LOCK_FILE))
            .unwrap();
        assert!(f.try_lock().is_err(), "second lock must wait");
        drop(l);
        assert!(f.try_lock().is_ok());
    }
}
