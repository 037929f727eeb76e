//! The one place that starts other programs: the server's boot hook and every command of the
//! storage backends. Always an argument vector (never a shell), `LC_ALL=C`, stdout and stderr
//! captured, and an error that names the command, its exit status and what it printed.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A command line: program and arguments, plus extra environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Indexes into `args` that are secrets (CHAP passwords): shown as `***`.
    pub secret: Vec<usize>,
}

impl Argv {
    pub fn new<P: Into<OsString>>(program: P) -> Self {
        Argv {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            secret: Vec::new(),
        }
    }

    pub fn arg<A: Into<OsString>>(mut self, a: A) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An argument that must not show in messages, logs or dry runs.
    pub fn secret_arg<A: Into<OsString>>(mut self, a: A) -> Self {
        self.secret.push(self.args.len());
        self.args.push(a.into());
        self
    }

    pub fn env<K: Into<OsString>, V: Into<OsString>>(mut self, k: K, v: V) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// Shell-style quoting for display only (dry runs, error messages); nothing is ever run
/// through a shell.
impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &OsString| {
            let s = s.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        };
        for (k, v) in &self.env {
            write!(f, "{}={} ", k.to_string_lossy(), quote(v))?;
        }
        write!(f, "{}", quote(&self.program))?;
        for (i, a) in self.args.iter().enumerate() {
            if self.secret.contains(&i) {
                write!(f, " '***'")?;
            } else {
                write!(f, " {}", quote(a))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run `{argv}`: {source} (is it installed and on PATH?)")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("`{argv}` did not finish within {timeout:?} and was killed")]
    Timeout { argv: String, timeout: Duration },
}

impl ProcessError {
    /// What the command printed on stderr, when it ran and failed.
    pub fn stderr(&self) -> &str {
        match self {
            ProcessError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// What a command printed, when it succeeded.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` to completion (or until `timeout`, then kills it). A non-zero exit is an error.
pub fn run(argv: &Argv, timeout: Option<Duration>) -> Result<Output, ProcessError> {
    let shown = argv.to_string();
    let mut cmd = Command::new(&argv.program);
    cmd.args(&argv.args)
        .env("LC_ALL", "C")
        .envs(argv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if timeout.is_some() {
        // Its own process group, so a timeout ends whatever the command started too.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        argv: shown.clone(),
        source,
    })?;
    // Drain both pipes on their own threads so a chatty child cannot block on a full pipe.
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(ProcessError::Spawn {
                    argv: shown,
                    source,
                })
            }
        }
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::Timeout {
                    argv: shown,
                    timeout: t,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A background process the command left behind would hold the pipes open: it goes with
    // its group (a daemon worth keeping has its own session), and the output is not waited
    // for past a moment in any case.
    if timeout.is_some() {
        kill_group(child.id());
    }
    let linger = Duration::from_secs(2);
    let stdout = out_rx.recv_timeout(linger).unwrap_or_default();
    let stderr = err_rx.recv_timeout(linger).unwrap_or_default();
    if status.success() {
        Ok(Output { stdout, stderr })
    } else {
        Err(ProcessError::Failed {
            argv: shown,
            status: status.to_string(),
            stdout,
            stderr: stderr.trim().to_string(),
        })
    }
}

/// Reads a pipe to its end on a thread; the text arrives on the returned channel.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        let _ = tx.send(s);
    });
    rx
}

/// SIGKILL to the process group `pgid` (a command started with its own group), so nothing it
/// started outlives it. No process is left to signal is fine.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_a_shell() {
        let out = run(&Argv::new("echo").arg("$(id); `x`"), None).unwrap();
        assert_eq!(out.stdout, "$(id); `x`\n");
    }

    #[test]
    fn failure_names_command_status_and_stderr() {
        let err = run(&Argv::new("ls").arg("/nonexistent-pxesrv"), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ls /nonexistent-pxesrv"), "{msg}");
        assert!(msg.contains("exit status: 2"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn missing_program_and_timeout() {
        let err = run(&Argv::new("pxesrv-no-such-tool"), None).unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
        let t0 = Instant::now();
        let err = run(
            &Argv::new("sleep").arg("5"),
            Some(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn timeout_ends_what_the_command_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // The shell starts a background child that would write the marker after 1 s.
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let t0 = Instant::now();
        let err = run(
            &Argv::new("sh").arg("-c").arg(&script),
            Some(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !marker.exists(),
            "the background child outlived the timeout"
        );
    }

    #[test]
    fn a_left_behind_background_process_does_not_hold_the_caller() {
        let t0 = Instant::now();
        let out = run(
            &Argv::new("sh").arg("-c").arg("echo hi; sleep 30 &"),
            Some(Duration::from_secs(20)),
        )
        .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn secrets_never_show() {
        let a = Argv::new("tgtadm").arg("--password").secret_arg("s3cret");
        assert_eq!(a.to_string(), "tgtadm --password '***'");
        let err = run(&Argv::new("false").secret_arg("s3cret"), None).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn display_quotes_for_humans() {
        let a = Argv::new("lvcreate")
            .arg("-n")
            .arg("a b")
            .arg("it's")
            .env("X", "1");
        assert_eq!(a.to_string(), "X=1 lvcreate -n 'a b' 'it'\\''s'");
    }
}
