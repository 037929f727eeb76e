//! Client disks as LVM snapshots of a golden logical volume: a thin snapshot when the
//! golden LV lives in a thin pool (no size to guess, space shared), a classic snapshot of
//! `snapshot_size` bytes (default: the origin's size, so it can never overflow) otherwise.
//! Everything LVM reports is read with `--reportformat json --units b --nosuffix`.

use serde::Deserialize;

use crate::identity::MacAddr;
use crate::process::{Argv, ProcessError};

use super::exec::Exec;
use super::names::{LvName, VgName};
use super::state::DiskRef;
use super::StorageError;

pub struct Lvm {
    pub vg: VgName,
    pub snapshot_size: Option<u64>,
}

/// One row of `lvs`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LvInfo {
    pub lv_name: String,
    pub lv_attr: String,
    #[serde(deserialize_with = "bytes")]
    pub lv_size: u64,
    #[serde(default)]
    pub pool_lv: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub data_percent: String,
}

fn bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.trim_end_matches(['B', 'b'])
        .parse()
        .map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}
#[derive(Deserialize)]
struct LvSection {
    lv: Vec<LvInfo>,
}

impl LvInfo {
    pub fn is_thin(&self) -> bool {
        !self.pool_lv.is_empty()
    }
    pub fn is_active(&self) -> bool {
        self.lv_attr.as_bytes().get(4) == Some(&b'a')
    }
    /// Bytes of its own data: for snapshots, the used share of the snapshot.
    pub fn used(&self) -> u64 {
        match self.data_percent.trim().parse::<f64>() {
            Ok(p) => (self.lv_size as f64 * p / 100.0) as u64,
            Err(_) => self.lv_size,
        }
    }
}

impl Lvm {
    pub fn new(vg: VgName, snapshot_size: Option<u64>) -> Self {
        Lvm { vg, snapshot_size }
    }

    pub fn disk_for(&self, mac: &MacAddr) -> DiskRef {
        DiskRef::Lv {
            vg: self.vg.clone(),
            lv: format!("pxc-{mac}")
                .parse()
                .expect("MAC-derived LV names are valid"),
        }
    }

    fn lvs_argv(&self) -> Argv {
        Argv::new("lvs").args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name,lv_attr,lv_size,pool_lv,origin,data_percent",
            "--",
            self.vg.as_str(),
        ])
    }

    /// Every LV of the volume group.
    pub fn list(&self, ex: &Exec) -> Result<Vec<LvInfo>, StorageError> {
        let argv = self.lvs_argv();
        let out = ex.query(&argv).map_err(|e| self.map_err(e, None))?;
        let rep: Report<LvSection> =
            serde_json::from_str(&out.stdout).map_err(|e| StorageError::Parse {
                command: argv.to_string(),
                detail: e.to_string(),
            })?;
        Ok(rep.report.into_iter().flat_map(|s| s.lv).collect())
    }

    pub fn find(&self, ex: &Exec, lv: &LvName) -> Result<Option<LvInfo>, StorageError> {
        Ok(self
            .list(ex)?
            .into_iter()
            .find(|l| l.lv_name == lv.as_str()))
    }

    /// A golden LV must exist; returns its size.
    pub fn check_image(&self, ex: &Exec, lv: &LvName) -> Result<u64, StorageError> {
        match self.find(ex, lv)? {
            Some(info) => Ok(info.lv_size),
            None => Err(StorageError::LvMissing {
                vg: self.vg.to_string(),
                lv: lv.to_string(),
                detail: format!("`lvs {}` does not list it", self.vg),
            }),
        }
    }

    fn map_err(&self, e: ProcessError, what: Option<&str>) -> StorageError {
        let s = e.stderr();
        if s.contains("not found") && s.contains("olume group") {
            StorageError::VgMissing {
                vg: self.vg.to_string(),
                detail: s.to_string(),
            }
        } else if s.contains("Insufficient free space")
            || s.contains("insufficient free space")
            || s.contains("No space")
        {
            StorageError::NoSpace {
                what: what.unwrap_or("a snapshot").to_string(),
                detail: s.to_string(),
            }
        } else {
            e.into()
        }
    }

    /// The argv that creates the client's snapshot of `origin`.
    pub fn create_argv(&self, origin: &LvInfo, lv: &LvName) -> Argv {
        let origin_path = format!("{}/{}", self.vg, origin.lv_name);
        if origin.is_thin() {
            // Thin snapshot: no size; -kn so it is activated like any other LV.
            Argv::new("lvcreate")
                .args(["-y", "-s", "-kn", "-n", lv.as_str(), "--"])
                .arg(origin_path)
        } else {
            let size = self.snapshot_size.unwrap_or(origin.lv_size);
            Argv::new("lvcreate")
                .args(["-y", "-s", "-L"])
                .arg(format!("{size}b"))
                .args(["-n", lv.as_str(), "--"])
                .arg(origin_path)
        }
    }

    pub fn create(&self, ex: &Exec, origin: &LvName, disk: &DiskRef) -> Result<(), StorageError> {
        let DiskRef::Lv { lv, .. } = disk else {
            return Err(StorageError::WrongImageKind {
                given: "file",
                backend: "lvm",
            });
        };
        let Some(info) = self.find(ex, origin)? else {
            return Err(StorageError::LvMissing {
                vg: self.vg.to_string(),
                lv: origin.to_string(),
                detail: "the golden image is gone".into(),
            });
        };
        ex.run(&self.create_argv(&info, lv))
            .map_err(|e| self.map_err(e, Some(&format!("snapshot {}/{lv}", self.vg))))?;
        Ok(())
    }

    pub fn remove(&self, ex: &Exec, disk: &DiskRef) -> Result<bool, StorageError> {
        let DiskRef::Lv { lv, .. } = disk else {
            return Ok(false);
        };
        if self.find(ex, lv)?.is_none() {
            return Ok(false);
        }
        ex.run(
            &Argv::new("lvremove")
                .args(["-f", "--"])
                .arg(format!("{}/{lv}", self.vg)),
        )?;
        Ok(true)
    }

    /// After a reboot: make sure the snapshot is active so its device node exists.
    /// `-y`: activating a classic snapshot also activates its origin, and lvchange asks
    /// before doing that (with no terminal the answer is no, and it fails).
    pub fn activate(&self, ex: &Exec, disk: &DiskRef) -> Result<bool, StorageError> {
        let DiskRef::Lv { lv, .. } = disk else {
            return Ok(false);
        };
        match self.find(ex, lv)? {
            Some(info) if !info.is_active() => {
                ex.run(
                    &Argv::new("lvchange")
                        .args(["-y", "-ay", "-K", "--"])
                        .arg(format!("{}/{lv}", self.vg)),
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn exists(&self, ex: &Exec, disk: &DiskRef) -> Result<bool, StorageError> {
        match disk {
            DiskRef::Lv { lv, .. } => Ok(self.find(ex, lv)?.is_some()),
            DiskRef::File { .. } => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LVS: &str = "lvs --reportformat json --units b --nosuffix -o lv_name,lv_attr,lv_size,pool_lv,origin,data_percent -- vg0";

    fn report(rows: &str) -> String {
        format!("{{\"report\": [{{\"lv\": [{rows}]}}]}}")
    }

    #[test]
    fn classic_snapshot_sized_like_origin_or_configured() {
        let out = report(
            r#"{"lv_name":"golden","lv_attr":"owi-a-s---","lv_size":"67108864","pool_lv":"","origin":"","data_percent":""}"#,
        );
        let ex = Exec::fake(&[(LVS, Ok(&out))]);
        let lvm = Lvm::new("vg0".parse().unwrap(), None);
        let mac: MacAddr = "52:54:00:aa:bb:01".parse().unwrap();
        let disk = lvm.disk_for(&mac);
        lvm.create(&ex, &"golden".parse().unwrap(), &disk).unwrap();
        assert_eq!(
            ex.action_lines(),
            vec!["lvcreate -y -s -L 67108864b -n pxc-52-54-00-aa-bb-01 -- vg0/golden"]
        );
        let lvm = Lvm::new("vg0".parse().unwrap(), Some(16 << 20));
        let ex = Exec::fake(&[(LVS, Ok(&out))]);
        lvm.create(&ex, &"golden".parse().unwrap(), &disk).unwrap();
        assert_eq!(
            ex.action_lines(),
            vec!["lvcreate -y -s -L 16777216b -n pxc-52-54-00-aa-bb-01 -- vg0/golden"]
        );
        assert_eq!(
            disk.device(),
            std::path::Path::new("/dev/vg0/pxc-52-54-00-aa-bb-01")
        );
    }

    #[test]
    fn thin_snapshot_when_origin_is_thin() {
        let out = report(
            r#"{"lv_name":"golden","lv_attr":"Vwi-a-tz--","lv_size":"1073741824B","pool_lv":"pool0","origin":"","data_percent":"12.50"}"#,
        );
        let ex = Exec::fake(&[(LVS, Ok(&out))]);
        let lvm = Lvm::new("vg0".parse().unwrap(), Some(1 << 20));
        let disk = lvm.disk_for(&"52:54:00:aa:bb:01".parse().unwrap());
        lvm.create(&ex, &"golden".parse().unwrap(), &disk).unwrap();
        assert_eq!(
            ex.action_lines(),
            vec!["lvcreate -y -s -kn -n pxc-52-54-00-aa-bb-01 -- vg0/golden"]
        );
        let info = lvm.find(&ex, &"golden".parse().unwrap()).unwrap().unwrap();
        assert_eq!(info.used(), 1 << 27);
    }

    #[test]
    fn activate_only_inactive_snapshots_without_a_question() {
        let out = report(
            r#"{"lv_name":"pxc-52-54-00-aa-bb-01","lv_attr":"swi---s---","lv_size":"16777216","pool_lv":"","origin":"golden","data_percent":""},
               {"lv_name":"pxc-52-54-00-aa-bb-02","lv_attr":"swi-a-s---","lv_size":"16777216","pool_lv":"","origin":"golden","data_percent":"0.00"}"#,
        );
        let ex = Exec::fake(&[(LVS, Ok(&out))]);
        let lvm = Lvm::new("vg0".parse().unwrap(), None);
        let a = lvm.disk_for(&"52:54:00:aa:bb:01".parse().unwrap());
        let b = lvm.disk_for(&"52:54:00:aa:bb:02".parse().unwrap());
        assert!(lvm.activate(&ex, &a).unwrap());
        assert!(!lvm.activate(&ex, &b).unwrap());
        assert_eq!(
            ex.action_lines(),
            vec!["lvchange -y -ay -K -- vg0/pxc-52-54-00-aa-bb-01"]
        );
    }

    #[test]
    fn remove_only_what_exists_and_clear_errors() {
        let out = report(
            r#"{"lv_name":"pxc-52-54-00-aa-bb-01","lv_attr":"swi-a-s---","lv_size":"16777216","pool_lv":"","origin":"golden","data_percent":"1.00"}"#,
        );
        let ex = Exec::fake(&[(LVS, Ok(&out))]);
        let lvm = Lvm::new("vg0".parse().unwrap(), None);
        let a = lvm.disk_for(&"52:54:00:aa:bb:01".parse().unwrap());
        let b = lvm.disk_for(&"52:54:00:aa:bb:02".parse().unwrap());
        assert!(lvm.remove(&ex, &a).unwrap());
        assert!(!lvm.remove(&ex, &b).unwrap());
        assert_eq!(
            ex.action_lines(),
            vec!["lvremove -f -- vg0/pxc-52-54-00-aa-bb-01"]
        );
        let ex = Exec::fake(&[(
            LVS,
            Err("  Volume group \"vg0\" not found\n  Cannot process volume group vg0"),
        )]);
        let e = lvm
            .check_image(&ex, &"golden".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("volume group vg0 not found"), "{e}");
        let ex = Exec::fake(&[(LVS, Ok(&report("")))]);
        let e = lvm
            .check_image(&ex, &"golden".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("logical volume vg0/golden not found"), "{e}");
    }
}
