//! Client disks as reflink clones (FICLONE) of a golden image file, on btrfs or on xfs made
//! with `-m reflink=1`. A clone costs no space until the client writes; a filesystem that
//! cannot clone is refused, never silently copied.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::identity::MacAddr;
use crate::process::{Argv, ProcessError};

use super::exec::Exec;
use super::state::DiskRef;
use super::StorageError;

pub struct Reflink {
    pub dir: PathBuf,
}

impl Reflink {
    pub fn new(dir: PathBuf) -> Self {
        Reflink { dir }
    }

    /// Where client disks live: `DIR/clients/`.
    pub fn clients_dir(&self) -> PathBuf {
        self.dir.join("clients")
    }

    pub fn disk_for(&self, mac: &MacAddr) -> DiskRef {
        DiskRef::File {
            path: self.clients_dir().join(format!("{mac}.img")),
        }
    }

    fn dir_meta(&self) -> Result<std::fs::Metadata, StorageError> {
        std::fs::metadata(&self.dir).map_err(|e| StorageError::Io {
            what: "disk directory (disk.dir in the config)",
            path: self.dir.clone(),
            err: e,
        })
    }

    /// Checks a golden image file before it is registered: it exists, is a regular file on
    /// the same filesystem as the disk directory, and that filesystem can clone it.
    /// Returns the file's canonical path and size.
    pub fn check_image(&self, ex: &Exec, path: &Path) -> Result<(PathBuf, u64), StorageError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::ImageFileMissing(path.to_owned()))
            }
            Err(e) => return Err(StorageError::io("image file", path)(e)),
        };
        if !meta.is_file() {
            return Err(StorageError::ImageFileMissing(path.to_owned()));
        }
        let path = std::fs::canonicalize(path).map_err(StorageError::io("image file", path))?;
        if meta.dev() != self.dir_meta()?.dev() {
            return Err(StorageError::ImageOtherFs {
                path,
                dir: self.dir.clone(),
            });
        }
        // Prove the filesystem clones, with the real file, before anything depends on it.
        self.ensure_clients_dir(ex)?;
        let probe = self
            .clients_dir()
            .join(format!(".reflink-probe-{}", std::process::id()));
        let r = self.clone_file(ex, &path, &probe);
        let _ = std::fs::remove_file(&probe);
        r?;
        Ok((path, meta.len()))
    }

    fn ensure_clients_dir(&self, ex: &Exec) -> Result<(), StorageError> {
        self.dir_meta()?;
        let dir = self.clients_dir();
        if !dir.is_dir() {
            ex.mkdir(&dir)?;
        }
        Ok(())
    }

    fn clone_file(&self, ex: &Exec, src: &Path, dst: &Path) -> Result<(), StorageError> {
        let argv = Argv::new("cp")
            .args(["--reflink=always", "--"])
            .arg(src)
            .arg(dst);
        match ex.run(&argv) {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(dst);
                Err(map_cp_error(&self.dir, src, e))
            }
        }
    }

    /// Creates the client's disk as a clone of `image`.
    pub fn create(&self, ex: &Exec, image: &Path, disk: &DiskRef) -> Result<(), StorageError> {
        let DiskRef::File { path } = disk else {
            return Err(StorageError::WrongImageKind {
                given: "logical volume",
                backend: "reflink",
            });
        };
        if !image.is_file() {
            return Err(StorageError::ImageFileMissing(image.to_owned()));
        }
        self.ensure_clients_dir(ex)?;
        self.clone_file(ex, image, path)
    }

    /// Removes the client's disk if it exists. True if there was one.
    pub fn remove(&self, ex: &Exec, disk: &DiskRef) -> Result<bool, StorageError> {
        if !self.exists(disk) {
            return Ok(false);
        }
        ex.remove_file(&disk.device())?;
        Ok(true)
    }

    pub fn exists(&self, disk: &DiskRef) -> bool {
        std::fs::symlink_metadata(disk.device()).is_ok()
    }

    /// Bytes allocated to the disk file (blocks shared with the golden image included).
    pub fn allocated(&self, disk: &DiskRef) -> Option<u64> {
        std::fs::metadata(disk.device())
            .ok()
            .map(|m| m.blocks() * 512)
    }

    /// Bytes only this disk uses: its extents not shared with the golden image (or any
    /// other clone), from `filefrag -v` (FIEMAP's shared flag).
    pub fn exclusive(&self, ex: &Exec, disk: &DiskRef) -> Option<u64> {
        let out = ex
            .query(&Argv::new("filefrag").args(["-v", "--"]).arg(disk.device()))
            .ok()?;
        parse_filefrag_exclusive(&out.stdout)
    }
}

/// Sums the lengths of the extents without the `shared` flag, times the block size.
pub fn parse_filefrag_exclusive(out: &str) -> Option<u64> {
    let block: u64 = out
        .lines()
        .find_map(|l| l.split_once(" blocks of ").map(|(_, b)| b))
        .and_then(|b| b.split_whitespace().next())
        .and_then(|b| b.parse().ok())?;
    let mut blocks = 0u64;
    for line in out.lines() {
        let cols: Vec<&str> = line.split(':').collect();
        // " 1:  10..  12:  2082..  2084:  3:  34:" -> index, logical, physical, length, ...
        if cols.len() < 4 || cols[0].trim().parse::<u64>().is_err() {
            continue;
        }
        let len: u64 = cols[3].trim().parse().ok()?;
        let flags = cols.last().copied().unwrap_or("");
        if !flags.split(',').any(|f| f.trim() == "shared") {
            blocks += len;
        }
    }
    Some(blocks * block)
}

fn map_cp_error(dir: &Path, src: &Path, e: ProcessError) -> StorageError {
    let stderr = e.stderr().to_string();
    if stderr.contains("Operation not supported")
        || stderr.contains("Invalid cross-device link")
        || stderr.contains("Inappropriate ioctl")
    {
        StorageError::ReflinkUnsupported {
            dir: dir.to_owned(),
            detail: stderr,
        }
    } else if stderr.contains("No space left") || stderr.contains("Disk quota exceeded") {
        StorageError::NoSpace {
            what: format!("a clone of {} in {}", src.display(), dir.display()),
            detail: stderr,
        }
    } else if stderr.contains("No such file") && !src.exists() {
        StorageError::ImageFileMissing(src.to_owned())
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_argv_and_paths() {
        let r = Reflink::new("/srv/disks".into());
        let mac: MacAddr = "52:54:00:AA:BB:01".parse().unwrap();
        let disk = r.disk_for(&mac);
        assert_eq!(
            disk.device(),
            Path::new("/srv/disks/clients/52-54-00-aa-bb-01.img")
        );
        let ex = Exec::fake(&[]);
        let tmp = tempfile::tempdir().unwrap();
        let golden = tmp.path().join("g.img");
        std::fs::write(&golden, b"x").unwrap();
        let r = Reflink::new(tmp.path().to_owned());
        let disk = r.disk_for(&mac);
        r.create(&ex, &golden, &disk).unwrap();
        assert_eq!(
            ex.action_lines(),
            vec![
                format!("mkdir {}/clients", tmp.path().display()),
                format!(
                    "cp --reflink=always -- {}/g.img {}/clients/52-54-00-aa-bb-01.img",
                    tmp.path().display(),
                    tmp.path().display()
                ),
            ]
        );
    }

    #[test]
    fn exclusive_bytes_from_filefrag() {
        let out = "Filesystem type is: 58465342
File size of /m/c is 8388608 (2048 blocks of 4096 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:        0..       9:         24..        33:     10:             shared
   1:       10..      12:       2082..      2084:      3:         34:
   2:       13..    2047:         37..      2071:   2035:       2085: last,shared,eof
/m/c: 3 extents found
";
        assert_eq!(parse_filefrag_exclusive(out), Some(3 * 4096));
        assert_eq!(parse_filefrag_exclusive("garbage"), None);
    }

    #[test]
    fn refusals_are_clear() {
        let e = map_cp_error(
            Path::new("/tmp/d"),
            Path::new("/tmp/d/g.img"),
            ProcessError::Failed {
                argv: "cp".into(),
                status: "exit status: 1".into(),
                stdout: String::new(),
                stderr: "cp: failed to clone 'b' from 'a': Operation not supported".into(),
            },
        )
        .to_string();
        assert!(e.contains("does not support reflink"), "{e}");
        assert!(e.contains("never falls back"), "{e}");
    }
}
