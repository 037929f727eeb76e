//! `pxesrv-storage apply FILE`: the images and clients the operator wants, in TOML; one
//! run makes reality match and a second run changes nothing.
//!
//! ```toml
//! [[image]]
//! name = "debian12"
//! file = "/srv/pxesrv-disks/debian12.img"   # reflink backend
//! # lv = "golden-debian12"                  # lvm backend (in the configured VG)
//!
//! [[client]]
//! mac = "52:54:00:12:34:56"
//! image = "debian12"
//! mode = "reset-on-boot"                    # default: persistent
//! # initiator = "iqn.2024-01.org.example:lab-pc-7"   # default: PREFIX:client-MAC
//! # chap = true
//! ```
//!
//! Clients not in the file are detached, images not in the file are unregistered. A
//! client whose image, initiator or CHAP setting changed is detached and attached again
//! (its writes are dropped); a change of mode alone keeps the disk.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity::MacAddr;

use super::engine::{AttachOpts, Engine, NewImage};
use super::names::{ImageName, Iqn, LvName};
use super::state::{ImageSource, Mode, State};
use super::StorageError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyFile {
    #[serde(default)]
    image: Vec<ImageEntry>,
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageEntry {
    name: ImageName,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    lv: Option<LvName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    mac: String,
    image: ImageName,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    initiator: Option<Iqn>,
    #[serde(default)]
    chap: bool,
}

/// The wanted state, validated.
#[derive(Debug)]
pub struct Desired {
    pub images: BTreeMap<ImageName, NewImage>,
    pub clients: BTreeMap<String, (MacAddr, AttachOpts)>,
}

pub fn parse(text: &str, path: &Path) -> Result<Desired, StorageError> {
    let bad = |message: String| StorageError::ApplyFile {
        path: path.to_owned(),
        message,
    };
    let f: ApplyFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut images = BTreeMap::new();
    for i in f.image {
        let src = match (i.file, i.lv) {
            // A relative path means the same file wherever apply is run from: the file's
            // directory, not the working directory.
            (Some(f), None) => NewImage::File(match path.parent() {
                Some(dir) if f.is_relative() => dir.join(f),
                _ => f,
            }),
            (None, Some(lv)) => NewImage::Lv(lv),
            _ => {
                return Err(bad(format!(
                    "image {}: give exactly one of file = \"PATH\" or lv = \"NAME\"",
                    i.name
                )))
            }
        };
        if images.insert(i.name.clone(), src).is_some() {
            return Err(bad(format!("image {} is listed twice", i.name)));
        }
    }
    let mut clients = BTreeMap::new();
    let mut initiators = HashSet::new();
    for c in f.client {
        let mac: MacAddr = c.mac.parse().map_err(|e| bad(format!("client: {e}")))?;
        if !images.contains_key(&c.image) {
            return Err(bad(format!(
                "client {mac}: image {} is not listed in this file",
                c.image
            )));
        }
        if let Some(i) = &c.initiator {
            if !initiators.insert(i.clone()) {
                return Err(bad(format!(
                    "client {mac}: initiator {i} is used by another client"
                )));
            }
        }
        let opts = AttachOpts {
            image: c.image,
            mode: c.mode,
            initiator: c.initiator,
            chap: c.chap,
        };
        if clients.insert(mac.to_string(), (mac, opts)).is_some() {
            return Err(bad(format!("client {mac} is listed twice")));
        }
    }
    Ok(Desired { images, clients })
}

fn same_source(have: &ImageSource, want: &NewImage) -> bool {
    match (have, want) {
        (ImageSource::File { path }, NewImage::File(p)) => std::fs::canonicalize(p)
            .map(|p| &p == path)
            .unwrap_or(false),
        (ImageSource::Lv { lv, .. }, NewImage::Lv(l)) => lv == l,
        _ => false,
    }
}

impl Engine {
    /// Makes images and clients match `path`. Returns the changes made (empty: nothing to
    /// do).
    pub fn apply(&self, path: &Path) -> Result<Vec<String>, StorageError> {
        let text = std::fs::read_to_string(path).map_err(StorageError::io("read", path))?;
        let want = parse(&text, path)?;
        // Every golden file must be there before anything is changed: a file that cannot be
        // found must not read as "the image changed", which would detach (and delete the
        // disks of) every client of that image.
        for (name, src) in &want.images {
            if let NewImage::File(f) = src {
                if !std::fs::metadata(f).is_ok_and(|m| m.is_file()) {
                    return Err(StorageError::ApplyFile {
                        path: path.to_owned(),
                        message: format!(
                            "image {name}: {} is not a file; nothing was changed",
                            f.display()
                        ),
                    });
                }
            }
        }
        let (_lock, mut st) = self.begin(None)?;
        let mut changes = Vec::new();
        let st = &mut st;

        // Images whose source changed are replaced, which needs their clients gone.
        let replaced: HashSet<ImageName> = st
            .images
            .values()
            .filter(|i| {
                want.images
                    .get(&i.name)
                    .is_some_and(|w| !same_source(&i.source, w))
            })
            .map(|i| i.name.clone())
            .collect();

        // 1. Detach clients that are gone or whose disk must change.
        let to_detach: Vec<String> = st
            .clients
            .values()
            .filter(|c| match want.clients.get(&c.mac) {
                None => true,
                Some((_, o)) => {
                    o.image != c.image
                        || replaced.contains(&c.image)
                        || o.initiator.as_ref().is_some_and(|i| i != &c.initiator)
                        || (o.initiator.is_none()
                            && self
                                .cfg
                                .iqn_prefix
                                .with_suffix(&format!("client-{}", c.mac))
                                .ok()
                                .as_ref()
                                != Some(&c.initiator))
                        || o.chap != c.chap.is_some()
                }
            })
            .map(|c| c.mac.clone())
            .collect();
        for mac in to_detach {
            self.detach_locked(st, &mac)?;
            changes.push(format!("detached {mac}"));
        }
        // 2. Unregister images that are gone or replaced.
        let to_rm: Vec<ImageName> = st
            .images
            .keys()
            .filter(|n| !want.images.contains_key(*n) || replaced.contains(*n))
            .cloned()
            .collect();
        for name in to_rm {
            self.image_rm_locked(st, &name)?;
            self.save_state(st)?;
            changes.push(format!("removed image {name}"));
        }
        // 3. Register new images.
        for (name, src) in &want.images {
            if !st.images.contains_key(name) {
                self.image_add_locked(st, name.clone(), src.clone())?;
                self.save_state(st)?;
                changes.push(format!("added image {name}"));
            }
        }
        // 4. Mode changes keep the disk; 5. attach new clients.
        for (key, (mac, opts)) in &want.clients {
            match st.clients.get_mut(key) {
                Some(c) if c.mode != opts.mode => {
                    c.mode = opts.mode;
                    let c = c.clone();
                    self.save_state(st)?;
                    self.restore_boot_entry(&c)?;
                    changes.push(format!("{key}: mode {}", opts.mode));
                }
                Some(_) => {}
                None => {
                    self.attach_locked(st, *mac, opts)?;
                    changes.push(format!("attached {key} to {}", opts.image));
                }
            }
        }
        // 6. Whatever exists in the state also exists for real.
        changes.extend(self.restore_locked(st)?);
        Ok(changes)
    }

    fn save_state(&self, st: &State) -> Result<(), StorageError> {
        if self.ex.dry_run() {
            return Ok(());
        }
        st.save(&self.cfg.state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_golden_files_are_taken_from_the_apply_file_directory() {
        let d = parse(
            "[[image]]\nname = \"deb\"\nfile = \"images/deb.img\"\n",
            Path::new("/etc/pxesrv/want.toml"),
        )
        .unwrap();
        assert!(matches!(&d.images[&"deb".parse().unwrap()],
            NewImage::File(p) if p == Path::new("/etc/pxesrv/images/deb.img")));
    }

    #[test]
    fn parses_and_refuses_mistakes() {
        let ok = r#"
[[image]]
name = "deb"
file = "/d/deb.img"
[[client]]
mac = "52:54:00:AA:BB:01"
image = "deb"
mode = "reset-on-boot"
[[client]]
mac = "52-54-00-aa-bb-02"
image = "deb"
"#;
        let d = parse(ok, Path::new("x.toml")).unwrap();
        assert_eq!(d.images.len(), 1);
        assert_eq!(d.clients["52-54-00-aa-bb-01"].1.mode, Mode::ResetOnBoot);
        assert_eq!(d.clients["52-54-00-aa-bb-02"].1.mode, Mode::Persistent);
        for (text, want) in [
            (
                ok.replace("\"deb\"\nmode", "\"nope\"\nmode"),
                "image nope is not listed",
            ),
            (
                ok.replace("52-54-00-aa-bb-02", "52:54:00:aa:bb:01"),
                "listed twice",
            ),
            (ok.replace("file = ", "colour = "), "unknown field `colour`"),
            (
                ok.replace("mode = \"reset-on-boot\"", "mode = \"sometimes\""),
                "unknown variant",
            ),
            (ok.replace("52:54:00:AA:BB:01", "not-a-mac"), "not a MAC"),
            (ok.replace("name = \"deb\"", "name = \"a/x\""), "'/'"),
        ] {
            let e = parse(&text, Path::new("x.toml")).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
