//! Targets in the kernel (LIO), written straight into configfs
//! (`/sys/kernel/config/target`): plain mkdir, symlink and attribute writes, no process.
//! The disk is LUN 0; the ACL admits the client's initiator name only, and
//! `generate_node_acls` is off so nobody else gets in.
//!
//! For one client (`N` = `pxc-MAC`, `T` = `iscsi/IQN/tpgt_1`):
//! ```text
//! core/iblock_0/N  control <- udev_path=/dev/VG/LV   (a file: fileio_0, fd_dev_name=..,fd_dev_size=..)
//!                  enable  <- 1
//! T/lun/lun_0/N    -> core/iblock_0/N
//! T/np/IP:PORT
//! T/acls/INI/lun_0/lun_0 -> T/lun/lun_0
//! T/attrib/authentication <- 0 (1 with CHAP: T/acls/INI/auth/{userid,password})
//! T/attrib/generate_node_acls <- 0
//! T/enable <- 1
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::exec::Exec;
use super::names::Iqn;
use super::{Export, StorageError};

pub const LUN: u32 = 0;

pub struct Lio {
    pub root: PathBuf,
    pub listen: SocketAddr,
}

fn np_name(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

impl Lio {
    pub fn new(root: PathBuf, listen: SocketAddr) -> Self {
        Lio { root, listen }
    }

    /// The kernel target must be there (configfs mounted, target_core_mod loaded).
    pub fn check(&self) -> Result<(), StorageError> {
        if self.root.join("core").is_dir() {
            Ok(())
        } else {
            Err(StorageError::LioMissing {
                path: self.root.join("core"),
            })
        }
    }

    fn tpg(&self, iqn: &Iqn) -> PathBuf {
        self.root.join("iscsi").join(iqn.as_str()).join("tpgt_1")
    }

    fn backstores(&self, name: &str) -> [PathBuf; 2] {
        [
            self.root.join("core/iblock_0").join(name),
            self.root.join("core/fileio_0").join(name),
        ]
    }

    pub fn exists(&self, iqn: &Iqn) -> bool {
        self.tpg(iqn).is_dir()
    }

    fn mkdir_missing(&self, ex: &Exec, dir: &Path) -> Result<(), StorageError> {
        if !dir.is_dir() {
            ex.mkdir(dir)?;
        }
        Ok(())
    }

    /// Creates backstore, target, LUN, portal, ACL and enables the portal group, as the
    /// named steps `backstore`, `target`, `lun`, `portal`, `acl`, `enable`.
    pub fn export(&self, ex: &Exec, e: &Export) -> Result<(), StorageError> {
        self.check()?;
        let block = e.device.starts_with("/dev");
        let (hba, control) = if block {
            ("iblock_0", format!("udev_path={}", e.device.display()))
        } else {
            (
                "fileio_0",
                format!("fd_dev_name={},fd_dev_size={}", e.device.display(), e.size),
            )
        };
        let hba = self.root.join("core").join(hba);
        let bs = hba.join(&e.name);
        ex.step("backstore", || {
            self.mkdir_missing(ex, &hba)?;
            ex.mkdir(&bs)?;
            ex.write(&bs.join("control"), &control)?;
            ex.write(&bs.join("enable"), "1")
        })?;
        let tpg = self.tpg(e.iqn);
        ex.step("target", || {
            self.mkdir_missing(ex, &self.root.join("iscsi"))?;
            ex.mkdir(&self.root.join("iscsi").join(e.iqn.as_str()))?;
            ex.mkdir(&tpg)
        })?;
        let lun = tpg.join("lun").join(format!("lun_{LUN}"));
        ex.step("lun", || {
            ex.mkdir(&lun)?;
            ex.symlink(&bs, &lun.join(&e.name))
        })?;
        ex.step("portal", || {
            ex.mkdir(&tpg.join("np").join(np_name(&self.listen)))
        })?;
        ex.step("acl", || {
            let acl = tpg.join("acls").join(e.initiator.as_str());
            ex.mkdir(&acl)?;
            let mapped = acl.join(format!("lun_{LUN}"));
            ex.mkdir(&mapped)?;
            ex.symlink(&lun, &mapped.join(format!("lun_{LUN}")))?;
            if let Some(chap) = e.chap {
                ex.write(&acl.join("auth/userid"), &chap.user)?;
                ex.write_secret(&acl.join("auth/password"), &chap.secret)?;
            }
            Ok(())
        })?;
        ex.step("enable", || {
            let auth = if e.chap.is_some() { "1" } else { "0" };
            ex.write(&tpg.join("attrib/authentication"), auth)?;
            ex.write(&tpg.join("attrib/generate_node_acls"), "0")?;
            ex.write(&tpg.join("attrib/demo_mode_write_protect"), "1")?;
            ex.write(&tpg.join("enable"), "1")
        })
    }

    /// Removes whatever exists of the target and its backstore, in reverse order of
    /// creation (configfs only removes empty groups). Disabling the portal group first
    /// drops the client's session. True if the target existed.
    pub fn unexport(&self, ex: &Exec, iqn: &Iqn, name: &str) -> Result<bool, StorageError> {
        let top = self.root.join("iscsi").join(iqn.as_str());
        let tpg = self.tpg(iqn);
        let existed = top.is_dir();
        if tpg.is_dir() {
            ex.write(&tpg.join("enable"), "0")?;
            for acl in children(&tpg.join("acls")) {
                for mapped in children(&acl).into_iter().filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("lun_"))
                }) {
                    for link in children(&mapped).into_iter().filter(|p| p.is_symlink()) {
                        ex.remove_file(&link)?;
                    }
                    ex.rmdir(&mapped)?;
                }
                ex.rmdir(&acl)?;
            }
            for np in children(&tpg.join("np")) {
                ex.rmdir(&np)?;
            }
            for lun in children(&tpg.join("lun")) {
                for link in children(&lun).into_iter().filter(|p| p.is_symlink()) {
                    ex.remove_file(&link)?;
                }
                ex.rmdir(&lun)?;
            }
            ex.rmdir(&tpg)?;
        }
        if top.is_dir() {
            ex.rmdir(&top)?;
        }
        for bs in self.backstores(name) {
            if bs.is_dir() {
                ex.rmdir(&bs)?;
            }
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::state::Chap;

    #[test]
    fn configfs_writes_for_an_lvm_client() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("core")).unwrap();
        let lio = Lio::new(root.path().to_owned(), "10.0.2.15:3260".parse().unwrap());
        let ex = Exec::fake(&[]);
        let iqn: Iqn = "iqn.2024-01.a.b:disk-52-54-00-aa-bb-01".parse().unwrap();
        let ini: Iqn = "iqn.2024-01.a.b:client-52-54-00-aa-bb-01".parse().unwrap();
        let chap = Chap {
            user: "u".into(),
            secret: "s3cret-s3cret".into(),
        };
        lio.export(
            &ex,
            &Export {
                iqn: &iqn,
                initiator: &ini,
                device: "/dev/vg0/pxc-52-54-00-aa-bb-01".into(),
                size: 1 << 26,
                name: "pxc-52-54-00-aa-bb-01".into(),
                chap: Some(&chap),
            },
        )
        .unwrap();
        let r = root.path().display().to_string();
        let t = format!("{r}/iscsi/{iqn}/tpgt_1");
        let want = vec![
            format!("mkdir {r}/core/iblock_0"),
            format!("mkdir {r}/core/iblock_0/pxc-52-54-00-aa-bb-01"),
            format!("write {r}/core/iblock_0/pxc-52-54-00-aa-bb-01/control <- \"udev_path=/dev/vg0/pxc-52-54-00-aa-bb-01\""),
            format!("write {r}/core/iblock_0/pxc-52-54-00-aa-bb-01/enable <- \"1\""),
            format!("mkdir {r}/iscsi"),
            format!("mkdir {r}/iscsi/{iqn}"),
            format!("mkdir {t}"),
            format!("mkdir {t}/lun/lun_0"),
            format!("symlink {t}/lun/lun_0/pxc-52-54-00-aa-bb-01 -> {r}/core/iblock_0/pxc-52-54-00-aa-bb-01"),
            format!("mkdir {t}/np/10.0.2.15:3260"),
            format!("mkdir {t}/acls/{ini}"),
            format!("mkdir {t}/acls/{ini}/lun_0"),
            format!("symlink {t}/acls/{ini}/lun_0/lun_0 -> {t}/lun/lun_0"),
            format!("write {t}/acls/{ini}/auth/userid <- \"u\""),
            format!("write {t}/acls/{ini}/auth/password <- \"***\""),
            format!("write {t}/attrib/authentication <- \"1\""),
            format!("write {t}/attrib/generate_node_acls <- \"0\""),
            format!("write {t}/attrib/demo_mode_write_protect <- \"1\""),
            format!("write {t}/enable <- \"1\""),
        ];
        assert_eq!(ex.action_lines(), want);
    }

    #[test]
    fn file_backstore_and_teardown_in_reverse() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let iqn: Iqn = "iqn.2024-01.a.b:disk-x".parse().unwrap();
        let t = r.join("iscsi").join(iqn.as_str()).join("tpgt_1");
        // What the kernel would show for an exported client.
        for d in [
            "acls/iqn.2024-01.a.b:ini/lun_0",
            "np/[2001:db8::1]:3260",
            "lun/lun_0",
        ] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::create_dir_all(r.join("core/fileio_0/pxc-x")).unwrap();
        std::os::unix::fs::symlink(r.join("core/fileio_0/pxc-x"), t.join("lun/lun_0/pxc-x"))
            .unwrap();
        std::os::unix::fs::symlink(
            t.join("lun/lun_0"),
            t.join("acls/iqn.2024-01.a.b:ini/lun_0/lun_0"),
        )
        .unwrap();
        let lio = Lio::new(r.to_owned(), "[2001:db8::1]:3260".parse().unwrap());
        let ex = Exec::fake(&[]);
        assert!(lio.unexport(&ex, &iqn, "pxc-x").unwrap());
        let t = t.display().to_string();
        let r = r.display().to_string();
        assert_eq!(
            ex.action_lines(),
            vec![
                format!("write {t}/enable <- \"0\""),
                format!("rm {t}/acls/iqn.2024-01.a.b:ini/lun_0/lun_0"),
                format!("rmdir {t}/acls/iqn.2024-01.a.b:ini/lun_0"),
                format!("rmdir {t}/acls/iqn.2024-01.a.b:ini"),
                format!("rmdir {t}/np/[2001:db8::1]:3260"),
                format!("rm {t}/lun/lun_0/pxc-x"),
                format!("rmdir {t}/lun/lun_0"),
                format!("rmdir {t}"),
                format!("rmdir {r}/iscsi/iqn.2024-01.a.b:disk-x"),
                format!("rmdir {r}/core/fileio_0/pxc-x"),
            ]
        );
        let ex = Exec::fake(&[]);
        let other: Iqn = "iqn.2024-01.a.b:disk-y".parse().unwrap();
        assert!(!lio.unexport(&ex, &other, "pxc-y").unwrap());
        assert!(ex.action_lines().is_empty());
        assert!(
            Lio::new("/nonexistent".into(), "0.0.0.0:3260".parse().unwrap())
                .check()
                .unwrap_err()
                .to_string()
                .contains("iscsi_target_mod")
        );
    }
}
