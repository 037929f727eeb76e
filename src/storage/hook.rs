//! The boot hook across a privilege boundary.
//!
//! Resetting a reset-on-boot client needs root (LVM, the iSCSI target, the state file), but
//! the packaged pxesrv runs unprivileged with `NoNewPrivileges=yes`, so it cannot sudo. The
//! packages therefore ship a root socket unit (`pxesrv-storage-hook.socket`, `Accept=yes`,
//! group `pxesrv`): pxesrv's hook is `pxesrv-storage hook --socket PATH`, which sends the
//! client's MAC over the socket; systemd starts `pxesrv-storage hook-serve` as root for that
//! one connection, with the connection as its stdin and stdout. The only thing the
//! unprivileged side can ask for is "this MAC is booting", and only reset-on-boot clients
//! are reset.
//!
//! Protocol: one line each way. Request: the MAC (or an empty line). Answer: `ok ...` or
//! `error: ...`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::engine::{Engine, HookOutcome};
use super::StorageError;

/// Longest request line read; a MAC is 17 bytes.
const MAX_REQUEST: u64 = 256;

/// The unprivileged side: asks the hook service at `socket` to prepare `mac` for booting.
/// `Ok(answer)` when the service answered `ok`, an error with its message otherwise.
pub fn ask(socket: &Path, mac: &str, timeout: Duration) -> Result<String, StorageError> {
    let fail = |message: String| StorageError::Hook {
        socket: socket.to_owned(),
        message,
    };
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        fail(format!(
            "{e} (is pxesrv-storage-hook.socket enabled and started, and may this user open it?)"
        ))
    })?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    let line = mac.trim().replace(['\n', '\r'], "");
    conn.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| conn.shutdown(std::net::Shutdown::Write))
        .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    let mut answer = String::new();
    conn.take(64 << 10)
        .read_to_string(&mut answer)
        .map_err(|e| fail(format!("no answer: {e}")))?;
    let answer = answer.trim().to_string();
    match answer.strip_prefix("ok") {
        Some(_) => Ok(answer),
        None if answer.is_empty() => Err(fail("the hook service closed without an answer".into())),
        None => Err(fail(
            answer
                .strip_prefix("error: ")
                .unwrap_or(&answer)
                .to_string(),
        )),
    }
}

/// The privileged side, for one connection: reads the request from `input`, runs the hook,
/// writes the answer to `output`. The hook's own error is also returned, for the journal.
pub fn serve(eng: &Engine, input: impl Read, output: &mut dyn Write) -> Result<(), StorageError> {
    let mut line = String::new();
    let read = BufReader::new(input.take(MAX_REQUEST)).read_line(&mut line);
    let result = match read {
        Ok(_) => eng.hook(Some(line.trim())),
        Err(e) => Err(StorageError::Hook {
            socket: "stdin".into(),
            message: format!("cannot read the request: {e}"),
        }),
    };
    let answer = match &result {
        Ok(HookOutcome::Reset(mac)) => format!("ok reset {mac}"),
        Ok(HookOutcome::Skipped(why)) => format!("ok nothing to do: {why}"),
        Err(e) => format!("error: {e}"),
    };
    let _ = writeln!(output, "{}", answer.replace('\n', " "));
    let _ = output.flush();
    result.map(drop)
}
