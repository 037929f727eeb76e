//! How the storage backends act on the system: commands through `crate::process`, and the
//! few plain file operations the kernel target (configfs) needs. In a dry run every change
//! is printed instead of done; read-only queries still run so the plan is accurate.
//!
//! Also the fault-injection switch used by the tests: `PXESRV_STORAGE_FAULT=after:STEP`
//! exits the process right after STEP (as if it had been killed: no destructor runs), and
//! `fail:STEP` makes STEP fail with an error (so the in-process rollback runs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::process::{self, Argv, Output};

use super::StorageError;

/// The exit status of a process stopped by `PXESRV_STORAGE_FAULT=after:STEP`.
pub const FAULT_EXIT_CODE: i32 = 86;

/// One change the tool made or, in a dry run, would make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Run(String),
    Mkdir(String),
    Rmdir(String),
    Write(String, String),
    Symlink(String, String),
    Remove(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Run(a) => write!(f, "{a}"),
            Action::Mkdir(p) => write!(f, "mkdir {p}"),
            Action::Rmdir(p) => write!(f, "rmdir {p}"),
            Action::Write(p, v) => write!(f, "write {p} <- {v:?}"),
            Action::Symlink(link, target) => write!(f, "symlink {link} -> {target}"),
            Action::Remove(p) => write!(f, "rm {p}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    None,
    After(String),
    Fail(String),
}

/// Runs commands and file changes, or prints them in a dry run.
pub struct Exec {
    dry_run: bool,
    timeout: Duration,
    fault: Fault,
    /// Every change, in order (also kept when not dry-running; tests read it).
    log: RefCell<Vec<Action>>,
    /// Canned answers for queries, by the command's display form (unit tests only).
    canned: Option<HashMap<String, Result<String, String>>>,
    /// Print dry-run actions to stdout (off in unit tests).
    echo: bool,
}

impl Exec {
    pub fn new(dry_run: bool, timeout: Duration) -> Result<Self, StorageError> {
        let fault = match std::env::var("PXESRV_STORAGE_FAULT") {
            Ok(v) if !v.is_empty() => match v.split_once(':') {
                Some(("after", s)) => Fault::After(s.to_string()),
                Some(("fail", s)) => Fault::Fail(s.to_string()),
                _ => return Err(StorageError::BadFaultSpec(v)),
            },
            _ => Fault::None,
        };
        Ok(Exec {
            dry_run,
            timeout,
            fault,
            log: RefCell::new(Vec::new()),
            canned: None,
            echo: true,
        })
    }

    /// A dry-run executor whose queries return `answers` (keyed by the command line shown);
    /// an unknown query fails. For unit tests of what a backend would do.
    pub fn fake(answers: &[(&str, Result<&str, &str>)]) -> Self {
        Exec {
            dry_run: true,
            timeout: Duration::from_secs(1),
            fault: Fault::None,
            log: RefCell::new(Vec::new()),
            canned: Some(
                answers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.map(str::to_string).map_err(str::to_string)))
                    .collect(),
            ),
            echo: false,
        }
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn actions(&self) -> Vec<Action> {
        self.log.borrow().clone()
    }

    /// The changes as printed lines.
    pub fn action_lines(&self) -> Vec<String> {
        self.log.borrow().iter().map(|a| a.to_string()).collect()
    }

    /// Records (and in a dry run prints) a change made by other means, such as a boot
    /// entry written through the boot tree.
    pub fn note(&self, a: Action) {
        self.record(a)
    }

    fn record(&self, a: Action) {
        if self.dry_run && self.echo {
            let _ = writeln!(std::io::stdout(), "{a}");
        }
        self.log.borrow_mut().push(a);
    }

    /// A command that changes something.
    pub fn run(&self, argv: &Argv) -> Result<Output, process::ProcessError> {
        self.record(Action::Run(argv.to_string()));
        if self.dry_run {
            return Ok(Output::default());
        }
        process::run(argv, Some(self.timeout))
    }

    /// A command that only reads; it runs in dry runs too.
    pub fn query(&self, argv: &Argv) -> Result<Output, process::ProcessError> {
        if let Some(canned) = &self.canned {
            let shown = argv.to_string();
            return match canned.get(&shown) {
                Some(Ok(out)) => Ok(Output {
                    stdout: out.clone(),
                    stderr: String::new(),
                }),
                Some(Err(err)) => Err(process::ProcessError::Failed {
                    argv: shown,
                    status: "exit status: 1".into(),
                    stdout: String::new(),
                    stderr: err.clone(),
                }),
                None => Err(process::ProcessError::Failed {
                    argv: shown.clone(),
                    status: "exit status: 127".into(),
                    stdout: String::new(),
                    stderr: format!("no canned answer for `{shown}`"),
                }),
            };
        }
        process::run(argv, Some(self.timeout))
    }

    pub fn mkdir(&self, path: &Path) -> Result<(), StorageError> {
        self.record(Action::Mkdir(path.display().to_string()));
        if self.dry_run {
            return Ok(());
        }
        fs::create_dir(path).map_err(StorageError::io("create directory", path))
    }

    pub fn rmdir(&self, path: &Path) -> Result<(), StorageError> {
        self.record(Action::Rmdir(path.display().to_string()));
        if self.dry_run {
            return Ok(());
        }
        fs::remove_dir(path).map_err(StorageError::io("remove directory", path))
    }

    /// Writes `value` to an existing attribute file (configfs) or creates a plain file.
    pub fn write(&self, path: &Path, value: &str) -> Result<(), StorageError> {
        self.record(Action::Write(path.display().to_string(), value.to_string()));
        if self.dry_run {
            return Ok(());
        }
        fs::write(path, value).map_err(StorageError::io("write", path))
    }

    /// `write` for a secret (a CHAP password): recorded and printed as `***`.
    pub fn write_secret(&self, path: &Path, value: &str) -> Result<(), StorageError> {
        self.record(Action::Write(path.display().to_string(), "***".to_string()));
        if self.dry_run {
            return Ok(());
        }
        fs::write(path, value).map_err(StorageError::io("write", path))
    }

    pub fn symlink(&self, target: &Path, link: &Path) -> Result<(), StorageError> {
        self.record(Action::Symlink(
            link.display().to_string(),
            target.display().to_string(),
        ));
        if self.dry_run {
            return Ok(());
        }
        std::os::unix::fs::symlink(target, link).map_err(StorageError::io("create link", link))
    }

    pub fn remove_file(&self, path: &Path) -> Result<(), StorageError> {
        self.record(Action::Remove(path.display().to_string()));
        if self.dry_run {
            return Ok(());
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::io("remove", path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Runs one named step of an operation: an error is labelled with the step, and the
    /// fault-injection switch is honoured.
    pub fn step<T>(
        &self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if self.fault == Fault::Fail(name.to_string()) {
            return Err(StorageError::Step {
                step: name,
                cause: Box::new(StorageError::FaultInjected(name)),
            });
        }
        tracing::debug!(step = name, "step");
        let out = f().map_err(|e| match e {
            e @ StorageError::Step { .. } => e,
            e => StorageError::Step {
                step: name,
                cause: Box::new(e),
            },
        })?;
        if self.fault == Fault::After(name.to_string()) {
            let _ = writeln!(
                std::io::stderr(),
                "pxesrv-storage: PXESRV_STORAGE_FAULT: exiting right after step {name}"
            );
            std::process::exit(FAULT_EXIT_CODE);
        }
        Ok(out)
    }
}
