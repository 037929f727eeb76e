//! A boot tree in a test's directory: plain files, symlinked entries and marker targets.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::marker;

pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// An empty boot tree at `root` (created), with the `once/` and `static/` directories.
    pub fn new(root: &Path) -> Tree {
        for dir in ["once", "static"] {
            fs::create_dir_all(root.join(dir)).expect("create boot tree directories");
        }
        Tree {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes a plain file at `rel`, creating its directory.
    pub fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).expect("create directory in boot tree");
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Makes `rel` a symlink to `target` (as written: relative to `rel`'s directory or
    /// absolute), the way an operator sets an entry with `ln -s`.
    pub fn link(&self, rel: &str, target: &str) -> &Self {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).expect("create directory in boot tree");
        symlink(target, &path).unwrap_or_else(|e| panic!("ln -s {target} {}: {e}", path.display()));
        self
    }

    /// Re-points `rel` at `target` atomically (a new link renamed over the old one, as
    /// `ln -s T .tmp && mv -T .tmp NAME` does): a reader sees the old or the new link, never none.
    pub fn relink(&self, rel: &str, target: &str) -> &Self {
        let path = self.path(rel);
        let tmp = path.with_file_name(format!(
            ".relink-{}",
            path.file_name().unwrap().to_string_lossy()
        ));
        symlink(target, &tmp).unwrap_or_else(|e| panic!("ln -s {target} {}: {e}", tmp.display()));
        fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("mv -T {} {}: {e}", tmp.display(), path.display()));
        self
    }

    /// Writes the marker sector `markers/NAME.bin` and a boot script `targets/NAME.ipxe`
    /// that chains it by absolute path; returns the script's path relative to the root,
    /// which is what pxesrv logs as the boot's `target`.
    pub fn marker_target(&self, name: &str) -> String {
        let script = format!("targets/{name}.ipxe");
        self.marker_script(&script, name);
        script
    }

    /// Writes the marker sector `markers/NAME.bin` and, as a plain file at `rel` (an entry
    /// itself, such as `default` or `static/NAME`, or a target), a script chaining it.
    pub fn marker_script(&self, rel: &str, name: &str) -> &Self {
        self.file(&format!("markers/{name}.bin"), marker::sector(name));
        self.file(
            rel,
            format!("#!ipxe\necho pxesrv-e2e target {name}\nchain /markers/{name}.bin\n"),
        )
    }

    /// A sparse disk image at `rel` whose first sector is the marker sector `name`, `size`
    /// bytes long. iPXE's SAN boot guesses a 255x63 CHS geometry, so a disk under about
    /// 8 MiB without a partition table fails to boot: use 64 MiB.
    pub fn marker_disk(&self, rel: &str, name: &str, size: u64) -> &Self {
        self.file(rel, marker::sector(name));
        fs::OpenOptions::new()
            .write(true)
            .open(self.path(rel))
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("extend {rel} to {size} bytes: {e}"));
        self
    }

    /// Whether `rel` exists as a name (a dangling symlink counts).
    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    /// The names in directory `rel` (empty if it does not exist), sorted.
    pub fn names(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A listing of the whole tree (`path -> link target` for symlinks), for failure reports.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        list(&self.root, &self.root, &mut out);
        out
    }
}

fn list(root: &Path, dir: &Path, out: &mut String) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        match fs::read_link(&path) {
            Ok(target) => out.push_str(&format!("  {rel} -> {}\n", target.display())),
            Err(_) if path.is_dir() => {
                out.push_str(&format!("  {rel}/\n"));
                list(root, &path, out);
            }
            Err(_) => out.push_str(&format!("  {rel}\n")),
        }
    }
}
