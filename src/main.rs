use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pxesrv::boottree::BootTree;
use pxesrv::config::{Cli, Command, ServerConfig};
use pxesrv::{admin, logging, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pxesrv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        let cfg = ServerConfig::from_args(cli.root, cli.serve)?;
        let _guard = logging::init(cfg.log.as_deref(), &cfg.log_level)?;
        return server::run(cfg).context("pxesrv server");
    };
    let out = &mut std::io::stdout().lock();
    let tree = || BootTree::open(&cli.root);
    match command {
        Command::Set {
            slot,
            client,
            target,
        } => admin::set(&tree()?, slot, &client, &target, out),
        Command::Clear { slot, client } => admin::clear(&tree()?, slot, &client, out),
        Command::List { json } => admin::list(&tree()?, json, out),
        Command::Check => admin::check(&tree()?, out),
        Command::Show { ip, mac } => admin::show(&tree()?, ip, mac.as_deref(), out),
        Command::History => admin::history(&tree()?, out),
        Command::Undo { client } => admin::undo(&tree()?, &client, out),
        Command::Healthcheck { timeout } => {
            let cfg = ServerConfig::from_args(cli.root.clone(), cli.serve)?;
            admin::healthcheck(&cfg.listen, Duration::from_secs(timeout), out)
        }
    }?;
    Ok(())
}
