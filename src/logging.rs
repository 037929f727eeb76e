//! Logging setup: tracing to stderr, or to a daily-rotated file through a non-blocking writer
//! whose guard `main` keeps alive so nothing is lost at shutdown.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log level {0:?}: {1}")]
    Filter(String, String),
    #[error("log file {0}: {1} (check that its directory exists and is writable)")]
    File(String, String),
}

/// Starts logging. Keep the returned guard until the program ends.
pub fn init(log: Option<&Path>, level: &str) -> Result<WorkerGuard, LogError> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| LogError::Filter(level.into(), e.to_string()))?;
    let (writer, guard, ansi) = match log {
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let name = path.file_name().ok_or_else(|| {
                LogError::File(path.display().to_string(), "not a file name".into())
            })?;
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix(name.to_string_lossy())
                .build(dir)
                .map_err(|e| LogError::File(path.display().to_string(), e.to_string()))?;
            let (w, g) = writer(appender);
            (w, g, false)
        }
        None => {
            let (w, g) = writer(std::io::stderr());
            (w, g, false)
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    Ok(guard)
}

/// A non-blocking writer that waits instead of dropping lines when its buffer is full.
fn writer<W: std::io::Write + Send + 'static>(
    w: W,
) -> (tracing_appender::non_blocking::NonBlocking, WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(w)
}
