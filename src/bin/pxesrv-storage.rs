//! `pxesrv-storage`: golden images and copy-on-write iSCSI disks for diskless clients.
//! See `pxesrv-storage --help` and docs/storage.md.

use std::process::ExitCode;

use clap::Parser;
use pxesrv::storage::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (writer, _guard) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(
            EnvFilter::try_from_env("PXESRV_STORAGE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let config = cli.config.clone();
    match cli::run(cli, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = anyhow::Error::new(e)
                .context(format!("pxesrv-storage (config {})", config.display()));
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
