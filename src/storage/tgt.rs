//! Targets in the userspace tgt daemon, through `tgtadm`. The disk is LUN 1 (LUN 0 is tgt's
//! controller); the ACL admits the client's initiator name only. Targets are found by IQN
//! (`--op show`), so target ids need not be remembered across a daemon restart.

use crate::process::{Argv, ProcessError};

use super::exec::Exec;
use super::names::Iqn;
use super::state::Chap;
use super::{Export, StorageError};

pub const LUN: u32 = 1;

pub struct Tgt {
    pub control_port: u16,
}

/// A target as `tgtadm --op show --mode target` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TgtTarget {
    pub tid: u32,
    pub iqn: String,
    pub luns: Vec<u32>,
    pub acl: Vec<String>,
    pub accounts: Vec<String>,
    pub sessions: usize,
}

/// Parses `tgtadm --op show --mode target`.
pub fn parse_show(out: &str) -> Result<Vec<TgtTarget>, String> {
    let mut targets: Vec<TgtTarget> = Vec::new();
    let mut section = "";
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Target ") {
            let (tid, iqn) = rest
                .split_once(':')
                .ok_or_else(|| format!("bad target line {line:?}"))?;
            targets.push(TgtTarget {
                tid: tid
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad target id in {line:?}"))?,
                iqn: iqn.trim().to_string(),
                luns: Vec::new(),
                acl: Vec::new(),
                accounts: Vec::new(),
                sessions: 0,
            });
            section = "";
            continue;
        }
        let Some(t) = targets.last_mut() else {
            continue;
        };
        let trimmed = line.trim();
        let indent = line.len() - line.trim_start().len();
        if indent == 4 && trimmed.ends_with(':') {
            section = match trimmed {
                "LUN information:" => "lun",
                "ACL information:" => "acl",
                "Account information:" => "account",
                "I_T nexus information:" => "nexus",
                _ => "",
            };
            continue;
        }
        match section {
            "lun" => {
                if let Some(n) = trimmed.strip_prefix("LUN: ") {
                    if let Ok(n) = n.trim().parse() {
                        t.luns.push(n);
                    }
                }
            }
            "acl" if indent == 8 && !trimmed.is_empty() => t.acl.push(trimmed.to_string()),
            "account" if indent == 8 && !trimmed.is_empty() => t
                .accounts
                .push(trimmed.trim_end_matches(" (outgoing)").to_string()),
            "nexus" if trimmed.starts_with("I_T nexus: ") => t.sessions += 1,
            _ => {}
        }
    }
    Ok(targets)
}

impl Tgt {
    pub fn new(control_port: u16) -> Self {
        Tgt { control_port }
    }

    fn base(&self) -> Argv {
        Argv::new("tgtadm")
            .arg("-C")
            .arg(self.control_port.to_string())
            .args(["--lld", "iscsi"])
    }

    fn map_err(&self, e: ProcessError) -> StorageError {
        let s = e.stderr();
        if s.contains("tgt daemon") || s.contains("can't connect") {
            StorageError::TgtdDown {
                port: self.control_port,
                detail: s.to_string(),
            }
        } else {
            e.into()
        }
    }

    pub fn targets(&self, ex: &Exec) -> Result<Vec<TgtTarget>, StorageError> {
        let argv = self.base().args(["--op", "show", "--mode", "target"]);
        let out = ex.query(&argv).map_err(|e| self.map_err(e))?;
        parse_show(&out.stdout).map_err(|detail| StorageError::Parse {
            command: argv.to_string(),
            detail,
        })
    }

    /// Fails with a clear message when the daemon is not running.
    pub fn check(&self, ex: &Exec) -> Result<(), StorageError> {
        self.targets(ex).map(|_| ())
    }

    pub fn find(&self, ex: &Exec, iqn: &Iqn) -> Result<Option<TgtTarget>, StorageError> {
        Ok(self
            .targets(ex)?
            .into_iter()
            .find(|t| t.iqn == iqn.as_str()))
    }

    fn run(&self, ex: &Exec, argv: Argv) -> Result<(), StorageError> {
        ex.run(&argv).map(|_| ()).map_err(|e| self.map_err(e))
    }

    /// Creates the target, its LUN and its ACL, as the named steps `target`, `lun`, `acl`.
    pub fn export(&self, ex: &Exec, e: &Export) -> Result<(), StorageError> {
        let tid = ex.step("target", || {
            let targets = self.targets(ex)?;
            let tid = (1..)
                .find(|n| targets.iter().all(|t| t.tid != *n))
                .unwrap_or(1);
            self.run(
                ex,
                self.base()
                    .args(["--op", "new", "--mode", "target", "--tid"])
                    .arg(tid.to_string())
                    .arg("--targetname")
                    .arg(e.iqn.as_str()),
            )?;
            Ok(tid)
        })?;
        let tid = tid.to_string();
        ex.step("lun", || {
            self.run(
                ex,
                self.base()
                    .args(["--op", "new", "--mode", "logicalunit", "--tid"])
                    .arg(&tid)
                    .args(["--lun", &LUN.to_string(), "--backing-store"])
                    .arg(&e.device),
            )
        })?;
        ex.step("acl", || {
            self.run(
                ex,
                self.base()
                    .args(["--op", "bind", "--mode", "target", "--tid"])
                    .arg(&tid)
                    .arg("--initiator-name")
                    .arg(e.initiator.as_str()),
            )?;
            if let Some(chap) = e.chap {
                self.add_account(ex, chap)?;
                self.run(
                    ex,
                    self.base()
                        .args(["--op", "bind", "--mode", "account", "--tid"])
                        .arg(&tid)
                        .args(["--user", &chap.user]),
                )?;
            }
            Ok(())
        })
    }

    fn add_account(&self, ex: &Exec, chap: &Chap) -> Result<(), StorageError> {
        // An account left by an interrupted run may hold another password: replace it.
        self.delete_account(ex, &chap.user)?;
        self.run(
            ex,
            self.base()
                .args(["--op", "new", "--mode", "account", "--user", &chap.user])
                .arg("--password")
                .secret_arg(&chap.secret),
        )
    }

    /// Deletes the target (dropping any session) and its CHAP account. True if it existed.
    pub fn unexport(
        &self,
        ex: &Exec,
        iqn: &Iqn,
        chap: Option<&Chap>,
    ) -> Result<bool, StorageError> {
        let found = self.find(ex, iqn)?;
        if let Some(t) = &found {
            self.run(
                ex,
                self.base()
                    .args(["--op", "delete", "--mode", "target", "--force", "--tid"])
                    .arg(t.tid.to_string()),
            )?;
        }
        if let Some(chap) = chap {
            self.delete_account(ex, &chap.user)?;
        }
        Ok(found.is_some())
    }

    /// Deletes the CHAP account `user` if tgtd has it.
    fn delete_account(&self, ex: &Exec, user: &str) -> Result<(), StorageError> {
        let argv = self.base().args(["--op", "show", "--mode", "account"]);
        let out = ex.query(&argv).map_err(|e| self.map_err(e))?;
        if out.stdout.lines().any(|l| l.trim() == user) {
            self.run(
                ex,
                self.base()
                    .args(["--op", "delete", "--mode", "account", "--user", user]),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Target 1: iqn.2024-01.a.b:disk-52-54-00-aa-bb-01
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2024-01.a.b:client-52-54-00-aa-bb-01 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
        LUN: 1
            Type: disk
            Backing store path: /d/clients/52-54-00-aa-bb-01.img
    Account information:
        u1
    ACL information:
        iqn.2024-01.a.b:client-52-54-00-aa-bb-01
Target 3: iqn.2024-01.a.b:disk-52-54-00-aa-bb-02
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
    Account information:
    ACL information:
";

    #[test]
    fn parses_show() {
        let t = parse_show(SHOW).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].tid, 1);
        assert_eq!(t[0].luns, vec![0, 1]);
        assert_eq!(t[0].acl, vec!["iqn.2024-01.a.b:client-52-54-00-aa-bb-01"]);
        assert_eq!(t[0].accounts, vec!["u1"]);
        assert_eq!(t[0].sessions, 1);
        assert_eq!(t[1].tid, 3);
        assert!(t[1].acl.is_empty());
    }

    #[test]
    fn export_argv_uses_first_free_tid_lun_1_and_initiator_acl() {
        let show = "tgtadm -C 7 --lld iscsi --op show --mode target";
        let acc = "tgtadm -C 7 --lld iscsi --op show --mode account";
        let ex = Exec::fake(&[(show, Ok(SHOW)), (acc, Ok("Account list:\n"))]);
        let iqn: Iqn = "iqn.2024-01.a.b:disk-52-54-00-aa-bb-05".parse().unwrap();
        let ini: Iqn = "iqn.2024-01.a.b:client-52-54-00-aa-bb-05".parse().unwrap();
        let chap = Chap {
            user: "pxc-52-54-00-aa-bb-05".into(),
            secret: "0123456789abcdef".into(),
        };
        Tgt::new(7)
            .export(
                &ex,
                &Export {
                    iqn: &iqn,
                    initiator: &ini,
                    device: "/d/clients/52-54-00-aa-bb-05.img".into(),
                    size: 1 << 26,
                    name: "pxc-52-54-00-aa-bb-05".into(),
                    chap: Some(&chap),
                },
            )
            .unwrap();
        assert_eq!(
            ex.action_lines(),
            vec![
                "tgtadm -C 7 --lld iscsi --op new --mode target --tid 2 --targetname iqn.2024-01.a.b:disk-52-54-00-aa-bb-05",
                "tgtadm -C 7 --lld iscsi --op new --mode logicalunit --tid 2 --lun 1 --backing-store /d/clients/52-54-00-aa-bb-05.img",
                "tgtadm -C 7 --lld iscsi --op bind --mode target --tid 2 --initiator-name iqn.2024-01.a.b:client-52-54-00-aa-bb-05",
                "tgtadm -C 7 --lld iscsi --op new --mode account --user pxc-52-54-00-aa-bb-05 --password '***'",
                "tgtadm -C 7 --lld iscsi --op bind --mode account --tid 2 --user pxc-52-54-00-aa-bb-05",
            ]
        );
    }

    #[test]
    fn unexport_by_iqn_and_daemon_down() {
        let show = "tgtadm -C 0 --lld iscsi --op show --mode target";
        let ex = Exec::fake(&[(show, Ok(SHOW))]);
        let t = Tgt::new(0);
        let a: Iqn = "iqn.2024-01.a.b:disk-52-54-00-aa-bb-02".parse().unwrap();
        let gone: Iqn = "iqn.2024-01.a.b:disk-52-54-00-aa-bb-09".parse().unwrap();
        assert!(t.unexport(&ex, &a, None).unwrap());
        assert!(!t.unexport(&ex, &gone, None).unwrap());
        assert_eq!(
            ex.action_lines(),
            vec!["tgtadm -C 0 --lld iscsi --op delete --mode target --force --tid 3"]
        );
        let ex = Exec::fake(&[(
            show,
            Err("tgtadm: failed to send request hdr to tgt daemon, Transport endpoint is not connected"),
        )]);
        let e = t.check(&ex).unwrap_err().to_string();
        assert!(
            e.contains("tgt daemon is not answering on control port 0"),
            "{e}"
        );
        assert!(e.contains("systemctl start tgt"), "{e}");
    }
}
