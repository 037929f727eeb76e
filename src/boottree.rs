//! The boot tree on disk: `default`, `once/NAME`, `static/NAME` and the plain files beside them.
//!
//! Every rule about links lives here: how a link resolves (against its own directory, as the
//! kernel does), that the file finally reached lies inside the root, how an entry is set or
//! cleared atomically, and how a once link is consumed exactly once, across threads and
//! processes (one `rename(2)` wins).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::identity::{ClientId, EntryName, NameParseError};

/// Where consumed once links are kept, inside `once/`. Moving one back undoes the boot.
pub const CONSUMED_DIR: &str = ".consumed";

/// The two kinds of per-client entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Once,
    Static,
}

impl Slot {
    pub fn dir_name(self) -> &'static str {
        match self {
            Slot::Once => "once",
            Slot::Static => "static",
        }
    }
}

impl std::str::FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "once" => Ok(Slot::Once),
            "static" => Ok(Slot::Static),
            _ => Err(format!("{s:?} is not a slot: use once or static")),
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Why a link or file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{entry} is dangling: {target:?} does not exist")]
    Dangling { entry: String, target: String },
    #[error("{entry} is a symlink loop ({target:?})")]
    Loop { entry: String, target: String },
    #[error("{entry} escapes the boot root: it leads to {resolved}")]
    Escapes { entry: String, resolved: PathBuf },
    #[error("{entry} leads to {resolved}, which is not a regular file")]
    NotAFile { entry: String, resolved: PathBuf },
    #[error("{entry} cannot be read: {source}")]
    Unreadable { entry: String, source: io::Error },
}

/// Errors of the tree's write operations and of opening the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "boot root {path}: {source} (create it, or point --root / PXESRV_ROOT at the boot tree)"
    )]
    Root { path: PathBuf, source: io::Error },
    #[error("boot root {0} is not a directory")]
    RootNotDir(PathBuf),
    #[error("target {target}: {source}")]
    Target { target: PathBuf, source: io::Error },
    #[error(
        "target {target} is outside the boot root {root}: copy or link it into the tree first"
    )]
    TargetOutside { target: PathBuf, root: PathBuf },
    #[error("target {0} lies in once/ or static/: point entries at files elsewhere in the tree")]
    TargetInEntryDir(PathBuf),
    #[error("target {0} is not a regular file")]
    TargetNotFile(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TreeError + 'a {
    move |source| TreeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One name found in `once/` or `static/`.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub slot: Slot,
    /// The name as it is on disk.
    pub file_name: String,
    /// What it means, or why it means nothing.
    pub name: Result<EntryName, NameParseError>,
}

impl DirEntry {
    pub fn rel_path(&self) -> String {
        format!("{}/{}", self.slot.dir_name(), self.file_name)
    }
}

/// A resolved, opened file ready to be served.
#[derive(Debug)]
pub struct Resolved {
    /// The final path, every symlink followed; inside the root.
    pub path: PathBuf,
    pub file: File,
    pub meta: fs::Metadata,
}

/// Names that live in `once/` and `static/` but are not entries: hidden files and READMEs.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("README")
}

/// A snapshot of one entry directory, reused while the directory does not change.
#[derive(Default)]
struct DirIndex {
    /// (mtime, inode) of the directory when it was read; None if it did not exist.
    stamp: Option<(SystemTime, u64)>,
    /// Whether a later change is certain to change the stamp (see `IndexCache::get`).
    trusted: bool,
    by_name: HashMap<EntryName, String>,
    /// Subnet entries, longest prefix first.
    subnets: Vec<(IpNet, String)>,
    has_mac: bool,
}

struct IndexCache {
    dir: PathBuf,
    slot: Slot,
    cur: RwLock<Arc<DirIndex>>,
}

/// Whether something read at `read_at` must show every change made up to then, given that it
/// last changed at `changed`. File times come from the kernel's coarse clock, which ticks at
/// most every 10 ms (HZ >= 100): two changes within one tick leave the same time, so a read
/// in that tick may have seen only the first. Twice the tick later the time is proof. A
/// filesystem that keeps whole seconds only (nanoseconds 0) needs a second.
pub fn settled(changed: SystemTime, read_at: SystemTime) -> bool {
    let coarse = changed
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_nanos() == 0);
    let window = if coarse {
        Duration::from_millis(1100)
    } else {
        Duration::from_millis(20)
    };
    read_at
        .duration_since(changed)
        .is_ok_and(|age| age > window)
}

impl IndexCache {
    fn new(dir: PathBuf, slot: Slot) -> Self {
        IndexCache {
            dir,
            slot,
            cur: RwLock::new(Arc::new(DirIndex::default())),
        }
    }

    /// The current index. Costs one `stat` when nothing changed, so a link created a moment
    /// before a request is seen by it.
    fn get(&self) -> Arc<DirIndex> {
        let stamp = fs::metadata(&self.dir)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.ino())));
        {
            let cur = self.cur.read().unwrap_or_else(|e| e.into_inner());
            if cur.trusted && cur.stamp == stamp {
                return cur.clone();
            }
        }
        let read_at = SystemTime::now();
        let mut index = DirIndex {
            stamp,
            trusted: stamp.is_none_or(|(mtime, _)| settled(mtime, read_at)),
            ..DirIndex::default()
        };
        for entry in list_dir(&self.dir, self.slot) {
            let Ok(name) = entry.name else { continue };
            // Two spellings of one client: the canonical one wins, else the first in order.
            if name.file_name() != entry.file_name && index.by_name.contains_key(&name) {
                continue;
            }
            index.by_name.insert(name, entry.file_name.clone());
        }
        index.subnets = index
            .by_name
            .iter()
            .filter_map(|(name, file)| match name {
                EntryName::Subnet(net) => Some((*net, file.clone())),
                _ => None,
            })
            .collect();
        index.has_mac = index.by_name.keys().any(|n| matches!(n, EntryName::Mac(_)));
        index
            .subnets
            .sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.1.cmp(&b.1)));
        let index = Arc::new(index);
        *self.cur.write().unwrap_or_else(|e| e.into_inner()) = index.clone();
        index
    }
}

/// Every name in an entry directory, sorted, without hidden files and READMEs.
fn list_dir(dir: &Path, slot: Slot) -> Vec<DirEntry> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<DirEntry> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !is_ignored_name(n))
        .map(|file_name| DirEntry {
            slot,
            name: file_name.parse(),
            file_name,
        })
        .collect();
    out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    out
}

/// The boot tree. Cheap to share: the server holds one in an `Arc`.
pub struct BootTree {
    root: PathBuf,
    once: IndexCache,
    statics: IndexCache,
}

/// Which rule answered a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    OnceMac,
    OnceIp,
    StaticMac,
    StaticIp,
    StaticSubnet,
    Default,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::OnceMac => "once-mac",
            Rule::OnceIp => "once-ip",
            Rule::StaticMac => "static-mac",
            Rule::StaticIp => "static-ip",
            Rule::StaticSubnet => "static-subnet",
            Rule::Default => "default",
        }
    }

    pub fn slot(self) -> Option<Slot> {
        match self {
            Rule::OnceMac | Rule::OnceIp => Some(Slot::Once),
            Rule::StaticMac | Rule::StaticIp | Rule::StaticSubnet => Some(Slot::Static),
            Rule::Default => None,
        }
    }
}

/// A candidate answer for a client, in the order they are tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub rule: Rule,
    /// Path relative to the root: `once/10.1.2.3`, `default`.
    pub entry: String,
}

impl BootTree {
    /// Opens the tree at `root` (which must exist). The root is canonicalised once, so a root
    /// that is itself a symlink works.
    pub fn open(root: &Path) -> Result<Self, TreeError> {
        let root = fs::canonicalize(root).map_err(|source| TreeError::Root {
            path: root.to_owned(),
            source,
        })?;
        if !root.is_dir() {
            return Err(TreeError::RootNotDir(root));
        }
        Ok(BootTree {
            once: IndexCache::new(root.join("once"), Slot::Once),
            statics: IndexCache::new(root.join("static"), Slot::Static),
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join(slot.dir_name())
    }

    /// Every name in `slot`, valid or not.
    pub fn list(&self, slot: Slot) -> Vec<DirEntry> {
        list_dir(&self.slot_dir(slot), slot)
    }

    /// The answers for `client`, most specific first, as names that exist in the tree now.
    /// Nothing is resolved or consumed.
    pub fn candidates(&self, client: &ClientId) -> Vec<Candidate> {
        let once = self.once.get();
        let statics = self.statics.get();
        let mut out = Vec::with_capacity(3);
        let mut push = |rule: Rule, file: Option<&String>| {
            if let (Some(file), Some(slot)) = (file, rule.slot()) {
                out.push(Candidate {
                    rule,
                    entry: format!("{}/{file}", slot.dir_name()),
                });
            }
        };
        let mac = client.mac.map(EntryName::Mac);
        let ip = EntryName::Ip(client.ip);
        push(
            Rule::OnceMac,
            mac.as_ref().and_then(|m| once.by_name.get(m)),
        );
        push(Rule::OnceIp, once.by_name.get(&ip));
        push(
            Rule::StaticMac,
            mac.as_ref().and_then(|m| statics.by_name.get(m)),
        );
        push(Rule::StaticIp, statics.by_name.get(&ip));
        let subnet = statics
            .subnets
            .iter()
            .find(|(net, _)| net.contains(&client.ip))
            .map(|(_, f)| f);
        push(Rule::StaticSubnet, subnet);
        out.push(Candidate {
            rule: Rule::Default,
            entry: "default".into(),
        });
        out
    }

    /// Whether any once or static entry is named by MAC (then a MAC-less iPXE client is worth
    /// asking for its MAC).
    pub fn has_mac_entries(&self) -> bool {
        self.once.get().has_mac || self.statics.get().has_mac
    }

    /// Follows `rel` (a path relative to the root, possibly a chain of symlinks, each resolved
    /// against its own directory) to a regular file inside the root and opens it.
    pub fn resolve(&self, rel: &str) -> Result<Resolved, LinkError> {
        let full = self.root.join(rel);
        let entry = rel.to_string();
        let target = || {
            fs::read_link(&full)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| rel.to_string())
        };
        let path = fs::canonicalize(&full).map_err(|e| match e.raw_os_error() {
            Some(ELOOP) => LinkError::Loop {
                entry: entry.clone(),
                target: target(),
            },
            _ if e.kind() == io::ErrorKind::NotFound => LinkError::Dangling {
                entry: entry.clone(),
                target: target(),
            },
            _ => LinkError::Unreadable {
                entry: entry.clone(),
                source: e,
            },
        })?;
        if !path.starts_with(&self.root) {
            return Err(LinkError::Escapes {
                entry,
                resolved: path,
            });
        }
        let file = File::open(&path).map_err(|source| LinkError::Unreadable {
            entry: entry.clone(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| LinkError::Unreadable {
            entry: entry.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(LinkError::NotAFile {
                entry,
                resolved: path,
            });
        }
        Ok(Resolved { path, file, meta })
    }

    /// Whether an entry is usable: `Ok(target relative to the root)` or what is wrong with it.
    pub fn health(&self, e: &DirEntry) -> Result<String, String> {
        let name = e
            .name
            .as_ref()
            .map_err(|err| format!("{}: {err}; rename or remove it", e.rel_path()))?;
        if e.slot == Slot::Once && matches!(name, EntryName::Subnet(_)) {
            return Err(format!(
                "{}: a subnet in once/ would be used up by the first client of the subnet; \
                 put subnet entries in static/",
                e.rel_path()
            ));
        }
        let resolved = self.resolve(&e.rel_path()).map_err(|err| err.to_string())?;
        Ok(resolved
            .path
            .strip_prefix(&self.root)
            .unwrap_or(&resolved.path)
            .display()
            .to_string())
    }

    /// Every problem of the tree, each a sentence that says what to do.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.resolve("default") {
            Ok(_) => {}
            Err(LinkError::Dangling { .. })
                if fs::symlink_metadata(self.root.join("default")).is_err() =>
            {
                out.push(format!(
                    "default is missing: clients without an entry get a script that sends them \
                     to their next boot device; create {}/default",
                    self.root.display()
                ))
            }
            Err(e) => out.push(e.to_string()),
        }
        let consumed = self.slot_dir(Slot::Once).join(CONSUMED_DIR);
        if fs::symlink_metadata(&consumed).is_ok() && !consumed.is_dir() {
            out.push(format!(
                "{} is not a directory: once entries cannot be consumed, so none is served; \
                 remove it",
                consumed.display()
            ));
        }
        for slot in [Slot::Once, Slot::Static] {
            let entries = self.list(slot);
            let mut seen: HashMap<EntryName, &str> = HashMap::new();
            for e in &entries {
                if let Err(p) = self.health(e) {
                    out.push(p);
                }
                if let Ok(name) = &e.name {
                    if let Some(first) = seen.insert(*name, &e.file_name) {
                        out.push(format!(
                            "{slot}/{first} and {slot}/{} name the same client; remove one",
                            e.file_name
                        ));
                    }
                }
            }
        }
        out
    }

    /// Consumes the once link `entry` (`once/NAME`): moves it to `once/.consumed/` under a
    /// name that records the time and the entry. Exactly one caller wins; the others get
    /// `Ok(None)`. An error means the link could not be consumed (read-only tree, ...), and
    /// then it must not be served either.
    pub fn consume_once(&self, entry: &str) -> Result<Option<PathBuf>, TreeError> {
        let file_name = entry
            .strip_prefix("once/")
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| TreeError::Io {
                what: "consume",
                path: entry.into(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a once entry"),
            })?;
        let once_dir = self.slot_dir(Slot::Once);
        let consumed_dir = once_dir.join(CONSUMED_DIR);
        match fs::create_dir(&consumed_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &consumed_dir)(e)),
        }
        let stamp = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let record = consumed_dir.join(format!("{stamp}_{file_name}"));
        match fs::rename(once_dir.join(file_name), &record) {
            Ok(()) => {
                // The claim is made. The record sits one directory deeper than the entry did:
                // re-point a relative link so the record still leads to its target.
                if let Ok(text) = fs::read_link(&record) {
                    if text.is_relative() {
                        let _ = replace_link(&record, &Path::new("..").join(text));
                    }
                }
                Ok(Some(record))
            }
            // NotFound: another request took it -- unless the link is still there, and the
            // record's directory is what is missing (a dangling once/.consumed link).
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && fs::symlink_metadata(once_dir.join(file_name)).is_err() =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err("consume into", &record)(e)),
        }
    }

    /// Consumed once links, oldest first: (record path, time text, entry name, link target).
    pub fn consumed(&self) -> Vec<ConsumedRecord> {
        let dir = self.slot_dir(Slot::Once).join(CONSUMED_DIR);
        let Ok(rd) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<ConsumedRecord> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let file_name = e.file_name().into_string().ok()?;
                let (time, name) = file_name.split_once('_')?;
                Some(ConsumedRecord {
                    time: time.to_string(),
                    name: name.to_string(),
                    target: fs::read_link(e.path()).ok().map(|t| entry_link_text(&t)),
                    path: e.path(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.time.cmp(&b.time));
        out
    }

    /// Puts the most recently consumed once link of `name` back in `once/`.
    pub fn undo_consume(&self, name: &EntryName) -> Result<Option<ConsumedRecord>, TreeError> {
        let Some(record) = self
            .consumed()
            .into_iter()
            .rev()
            .find(|r| r.name.parse::<EntryName>().ok().as_ref() == Some(name))
        else {
            return Ok(None);
        };
        let dest = self.slot_dir(Slot::Once).join(name.file_name());
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(TreeError::Io {
                what: "restore over",
                path: dest,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "a once entry is set"),
            });
        }
        if let Some(text) = &record.target {
            replace_link(&record.path, text).map_err(io_err("restore", &record.path))?;
        }
        fs::rename(&record.path, &dest).map_err(io_err("restore", &record.path))?;
        Ok(Some(record))
    }

    /// Checks that `target` can be the target of an entry: an existing regular file inside
    /// the root and outside `once/` and `static/`. Returns its path relative to the root.
    /// A relative `target` is taken relative to the root.
    pub fn validate_target(&self, target: &Path) -> Result<PathBuf, TreeError> {
        let full = if target.is_absolute() {
            target.to_owned()
        } else {
            self.root.join(target)
        };
        let in_entry_dir = |rel: &Path| {
            matches!(rel.components().next(),
                Some(Component::Normal(c)) if c == "once" || c == "static")
        };
        if full.strip_prefix(&self.root).is_ok_and(in_entry_dir) {
            return Err(TreeError::TargetInEntryDir(full));
        }
        let canon = fs::canonicalize(&full).map_err(|source| TreeError::Target {
            target: full.clone(),
            source,
        })?;
        let rel = canon
            .strip_prefix(&self.root)
            .map_err(|_| TreeError::TargetOutside {
                target: canon.clone(),
                root: self.root.clone(),
            })?
            .to_owned();
        if in_entry_dir(&rel) {
            return Err(TreeError::TargetInEntryDir(canon));
        }
        if !canon.is_file() {
            return Err(TreeError::TargetNotFile(canon));
        }
        Ok(rel)
    }

    /// Points `slot/NAME` at `target` (see `validate_target`): a relative symlink, created
    /// beside and renamed over the old entry, so a client sees either the old or the new
    /// entry, never none. Other spellings of the same name are removed.
    pub fn set_link(
        &self,
        slot: Slot,
        name: &EntryName,
        target: &Path,
    ) -> Result<PathBuf, TreeError> {
        let rel = self.validate_target(target)?;
        let dir = self.ensure_slot_dir(slot)?;
        let link_text = Path::new("..").join(&rel);
        let tmp = dir.join(tmp_name(name));
        std::os::unix::fs::symlink(&link_text, &tmp).map_err(io_err("create link", &tmp))?;
        self.install(slot, name, &tmp)?;
        Ok(rel)
    }

    /// Writes `content` as the regular file `slot/NAME` (temp file, fsync, rename).
    pub fn write_script(
        &self,
        slot: Slot,
        name: &EntryName,
        content: &[u8],
    ) -> Result<(), TreeError> {
        let dir = self.ensure_slot_dir(slot)?;
        let tmp = dir.join(tmp_name(name));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(content)?;
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", &tmp)(e));
        }
        self.install(slot, name, &tmp)
    }

    fn ensure_slot_dir(&self, slot: Slot) -> Result<PathBuf, TreeError> {
        let dir = self.slot_dir(slot);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(io_err("create", &dir)(e)),
        }
    }

    fn install(&self, slot: Slot, name: &EntryName, tmp: &Path) -> Result<(), TreeError> {
        let dest = self.slot_dir(slot).join(name.file_name());
        if let Err(e) = fs::rename(tmp, &dest) {
            let _ = fs::remove_file(tmp);
            return Err(io_err("install", &dest)(e));
        }
        sync_dir(&self.slot_dir(slot));
        for other in self.spellings(slot, name) {
            if other != name.file_name() {
                let _ = fs::remove_file(self.slot_dir(slot).join(other));
            }
        }
        Ok(())
    }

    /// Removes `slot/NAME` in every spelling. Returns the names removed.
    pub fn clear(&self, slot: Slot, name: &EntryName) -> Result<Vec<String>, TreeError> {
        let mut removed = Vec::new();
        for file in self.spellings(slot, name) {
            let path = self.slot_dir(slot).join(&file);
            match fs::remove_file(&path) {
                Ok(()) => removed.push(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        sync_dir(&self.slot_dir(slot));
        Ok(removed)
    }

    /// The file names in `slot` that mean `name`.
    pub fn spellings(&self, slot: Slot, name: &EntryName) -> Vec<String> {
        self.list(slot)
            .into_iter()
            .filter(|e| e.name.as_ref().ok() == Some(name))
            .map(|e| e.file_name)
            .collect()
    }

    /// Maps a request path (still percent-encoded, starting with `/`) to a plain file or
    /// directory of the tree. `None` for anything that must not be served: `..`, encoded
    /// slashes, NUL, hidden names, and anything inside `once/` or `static/` however reached.
    pub fn public_path(&self, raw_path: &str) -> Option<PathBuf> {
        let mut rel = PathBuf::new();
        for seg in raw_path.split('/').filter(|s| !s.is_empty()) {
            let seg = percent_encoding::percent_decode_str(seg)
                .decode_utf8()
                .ok()?;
            if seg.starts_with('.') || seg.contains(['/', '\\', '\0']) {
                return None;
            }
            // Entry directories are private by name and by what they lead to (below).
            if rel.as_os_str().is_empty() && (seg == "once" || seg == "static") {
                return None;
            }
            rel.push(seg.as_ref());
        }
        // Both the directory the path goes through and the file it finally reaches must be
        // public: `peek -> static` must not expose static/NAME.
        let public = |p: &Path| -> Option<PathBuf> {
            let canon = fs::canonicalize(p).ok()?;
            let inside = canon.strip_prefix(&self.root).ok()?;
            match inside.components().next() {
                Some(Component::Normal(c))
                    if c == OsStr::new("once") || c == OsStr::new("static") =>
                {
                    None
                }
                _ => Some(canon),
            }
        };
        let full = self.root.join(&rel);
        if let Some(parent) = full.parent().filter(|_| !rel.as_os_str().is_empty()) {
            public(parent)?;
        }
        public(&full)
    }
}

/// A consumed once link, as kept in `once/.consumed/`.
#[derive(Clone, Debug)]
pub struct ConsumedRecord {
    pub time: String,
    pub name: String,
    pub target: Option<PathBuf>,
    pub path: PathBuf,
}

const ELOOP: i32 = 40;

/// The link text a consumed record had as an entry of `once/` (records are one level deeper).
fn entry_link_text(record_text: &Path) -> PathBuf {
    match record_text.strip_prefix("..") {
        Ok(rest) if record_text.is_relative() => rest.to_owned(),
        _ => record_text.to_owned(),
    }
}

/// Atomically replaces the symlink `path` with one whose text is `text`.
fn replace_link(path: &Path, text: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-relink-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(text, &tmp)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn tmp_name(name: &EntryName) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        name.file_name()
    )
}

/// Makes a rename durable; best effort, a tree on a filesystem without directory fsync still
/// works.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, BootTree) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["once", "static", "menus/sub", "outside-not"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("default"), "#!ipxe\necho default\n").unwrap();
        fs::write(r.join("menus/install.ipxe"), "#!ipxe\necho install\n").unwrap();
        fs::write(r.join("menus/sub/deep.ipxe"), "#!ipxe\necho deep\n").unwrap();
        let t = BootTree::open(r).unwrap();
        (dir, t)
    }

    fn ip_client(ip: &str) -> ClientId {
        ClientId::new(ip.parse().unwrap(), None)
    }

    #[test]
    fn containment_table() {
        let (dir, t) = tree();
        let r = dir.path();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "x").unwrap();
        // (link name in static/, link text, expected outcome)
        let cases: &[(&str, String, &str)] = &[
            ("10.0.0.1", "../menus/install.ipxe".into(), "ok"),
            ("10.0.0.2", "../menus/sub/../install.ipxe".into(), "ok"),
            (
                "10.0.0.3",
                r.join("menus/install.ipxe").display().to_string(),
                "ok",
            ),
            ("10.0.0.4", "../../../../../../etc/passwd".into(), "escapes"),
            ("10.0.0.5", "/etc/passwd".into(), "escapes"),
            (
                "10.0.0.6",
                outside.path().join("secret").display().to_string(),
                "escapes",
            ),
            ("10.0.0.7", "../menus/missing.ipxe".into(), "dangling"),
            ("10.0.0.8", "10.0.0.8".into(), "loop"),
            ("10.0.0.9", "../menus".into(), "notfile"),
            ("10.0.0.10", "10.0.0.1".into(), "ok"), // chain of links
            ("10.0.0.11", "10.0.0.12".into(), "loop"),
            ("10.0.0.12", "10.0.0.11".into(), "loop"),
            ("10.0.0.13", "10.0.0.4".into(), "escapes"), // chain that escapes
            ("10.0.0.14", "../menus/install.ipxe/".into(), "unreadable"),
        ];
        for (name, text, _) in cases {
            symlink(text, r.join("static").join(name)).unwrap();
        }
        for (name, text, want) in cases {
            let got = match t.resolve(&format!("static/{name}")) {
                Ok(res) => {
                    assert!(res.path.starts_with(t.root()));
                    "ok"
                }
                Err(LinkError::Escapes { .. }) => "escapes",
                Err(LinkError::Dangling { .. }) => "dangling",
                Err(LinkError::Loop { .. }) => "loop",
                Err(LinkError::NotAFile { .. }) => "notfile",
                Err(LinkError::Unreadable { .. }) => "unreadable",
            };
            assert_eq!(got, *want, "static/{name} -> {text}");
        }
    }

    #[test]
    fn relative_link_resolves_against_its_own_directory() {
        let (dir, t) = tree();
        // Resolved against the server's working directory this would name ./menus/...
        symlink("../menus/install.ipxe", dir.path().join("once/10.0.0.1")).unwrap();
        let res = t.resolve("once/10.0.0.1").unwrap();
        assert_eq!(res.path, t.root().join("menus/install.ipxe"));
    }

    #[test]
    fn public_path_table() {
        let (dir, t) = tree();
        let r = dir.path();
        fs::write(r.join("static/10.0.0.1"), "#!ipxe\n").unwrap();
        symlink("../menus/install.ipxe", r.join("static/10.0.0.2")).unwrap();
        symlink("static", r.join("peek")).unwrap();
        symlink("/etc", r.join("etc")).unwrap();
        let ok = |p: &str| t.public_path(p).is_some();
        assert!(ok("/menus/install.ipxe"));
        assert!(ok("/menus/sub/deep.ipxe"));
        assert!(!ok("/menus%2Finstall.ipxe"), "encoded slash");
        for bad in [
            "/../etc/passwd",
            "/menus/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/menus/%2e%2e/%2e%2e/etc/passwd",
            "/menus%2F..%2F..%2Fetc%2Fpasswd",
            "/static/10.0.0.1",
            "/static/10.0.0.2",
            "/static/",
            "/%73tatic/10.0.0.2",
            "/once",
            "/peek/10.0.0.1",
            "/etc/passwd",
            "/menus/install.ipxe%00",
            "/.hidden",
            "/%ff%fe",
        ] {
            assert!(t.public_path(bad).is_none(), "{bad} must not be served");
        }
    }

    #[test]
    fn candidate_order_and_longest_subnet() {
        let (dir, t) = tree();
        let s = dir.path().join("static");
        let o = dir.path().join("once");
        for n in ["10.1.0.0_16", "10.1.2.0_24", "10.0.0.0_8"] {
            symlink("../menus/install.ipxe", s.join(n)).unwrap();
        }
        let c = t.candidates(&ip_client("10.1.2.3"));
        assert_eq!(c[0].entry, "static/10.1.2.0_24");
        assert_eq!(c[1].entry, "default");
        let c = t.candidates(&ip_client("10.9.9.9"));
        assert_eq!(c[0].entry, "static/10.0.0.0_8");

        symlink("../menus/install.ipxe", s.join("10.1.2.3")).unwrap();
        symlink("../menus/install.ipxe", s.join("AA:BB:CC:DD:EE:FF")).unwrap();
        symlink("../menus/install.ipxe", o.join("10.1.2.3")).unwrap();
        symlink("../menus/install.ipxe", o.join("aabbccddeeff")).unwrap();
        let client = ClientId::new(
            "10.1.2.3".parse().unwrap(),
            Some("aa-bb-cc-dd-ee-ff".parse().unwrap()),
        );
        let rules: Vec<Rule> = t.candidates(&client).iter().map(|c| c.rule).collect();
        assert_eq!(
            rules,
            [
                Rule::OnceMac,
                Rule::OnceIp,
                Rule::StaticMac,
                Rule::StaticIp,
                Rule::StaticSubnet,
                Rule::Default
            ]
        );
        assert_eq!(t.candidates(&client)[0].entry, "once/aabbccddeeff");
    }

    #[test]
    fn settled_after_two_ticks_or_a_second_on_coarse_filesystems() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert!(!settled(t, t + Duration::from_millis(5)));
        assert!(settled(t, t + Duration::from_millis(25)));
        assert!(
            !settled(t, t - Duration::from_millis(25)),
            "a clock step back is not proof"
        );
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(!settled(whole, whole + Duration::from_millis(500)));
        assert!(settled(whole, whole + Duration::from_millis(1200)));
    }

    #[test]
    fn link_created_just_now_is_seen() {
        let (dir, t) = tree();
        let c = ip_client("10.5.5.5");
        for i in 0..50 {
            assert_eq!(t.candidates(&c)[0].rule, Rule::Default);
            let link = dir.path().join("once/10.5.5.5");
            symlink("../menus/install.ipxe", &link).unwrap();
            assert_eq!(t.candidates(&c)[0].rule, Rule::OnceIp, "round {i}");
            fs::remove_file(&link).unwrap();
        }
    }

    #[test]
    fn consume_exactly_once_with_threads() {
        let (dir, t) = tree();
        let t = Arc::new(t);
        for round in 0..20 {
            symlink("../menus/install.ipxe", dir.path().join("once/10.0.0.1")).unwrap();
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let t = t.clone();
                    std::thread::spawn(move || t.consume_once("once/10.0.0.1").unwrap().is_some())
                })
                .collect();
            let wins = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|w| *w)
                .count();
            assert_eq!(wins, 1, "round {round}");
        }
        assert_eq!(t.consumed().len(), 20);
    }

    #[test]
    fn a_broken_consumed_dir_is_an_error_not_a_lost_race() {
        let (dir, t) = tree();
        symlink("../menus/install.ipxe", dir.path().join("once/10.0.0.1")).unwrap();
        symlink("/nonexistent", dir.path().join("once/.consumed")).unwrap();
        assert!(t.consume_once("once/10.0.0.1").is_err());
        assert!(t
            .problems()
            .iter()
            .any(|p| p.contains(".consumed is not a directory")));
        assert!(dir.path().join("once/10.0.0.1").symlink_metadata().is_ok());
    }

    #[test]
    fn set_clear_and_undo() {
        let (dir, t) = tree();
        let name: EntryName = "AA:BB:CC:DD:EE:01".parse().unwrap();
        symlink("../default", dir.path().join("static/aabbccddee01")).unwrap();
        t.set_link(Slot::Static, &name, Path::new("menus/install.ipxe"))
            .unwrap();
        assert_eq!(t.spellings(Slot::Static, &name), ["aa-bb-cc-dd-ee-01"]);
        assert_eq!(
            fs::read_link(dir.path().join("static/aa-bb-cc-dd-ee-01")).unwrap(),
            Path::new("../menus/install.ipxe")
        );
        assert!(matches!(
            t.set_link(Slot::Static, &name, Path::new("/etc/passwd")),
            Err(TreeError::TargetOutside { .. })
        ));
        assert!(matches!(
            t.set_link(Slot::Static, &name, Path::new("menus")),
            Err(TreeError::TargetNotFile(_))
        ));
        assert!(matches!(
            t.set_link(Slot::Static, &name, Path::new("static/aa-bb-cc-dd-ee-01")),
            Err(TreeError::TargetInEntryDir(_))
        ));
        assert_eq!(t.clear(Slot::Static, &name).unwrap(), ["aa-bb-cc-dd-ee-01"]);
        assert!(t.list(Slot::Static).is_empty());

        t.set_link(Slot::Once, &name, Path::new("menus/install.ipxe"))
            .unwrap();
        assert!(t.consume_once("once/aa-bb-cc-dd-ee-01").unwrap().is_some());
        assert!(t.list(Slot::Once).is_empty());
        let record = &t.consumed()[0];
        assert!(
            fs::metadata(&record.path).is_ok(),
            "a consumed record still leads to its target"
        );
        let rec = t.undo_consume(&name).unwrap().unwrap();
        assert_eq!(
            rec.target.as_deref(),
            Some(Path::new("../menus/install.ipxe"))
        );
        assert!(t.resolve("once/aa-bb-cc-dd-ee-01").is_ok());
    }
}
