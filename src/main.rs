//! The `kura` binary: parse the command line, open the archive, serve until a signal.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kura::config::{Cli, Command, Config};
use kura::{App, Archive};

fn main() -> anyhow::Result<()> {
    kura::telemetry::init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let config = Config::from_args(args).map_err(anyhow::Error::msg)?;
                let archive = Archive::open(&config.data_dir, config.archive.clone())
                    .await
                    .map_err(anyhow::Error::new)
                    .with_context(|| format!("opening the archive in {}", config.data_dir.display()))?;
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?;
                let app = App::new(Arc::new(archive), Arc::new(config));
                kura::server::serve(listener, app, kura::server::shutdown_signal()).await?;
                Ok(())
            }
            Command::Reindex(args) => {
                let archive = Archive::open(&args.data_dir, Default::default())
                    .await
                    .map_err(anyhow::Error::new)
                    .with_context(|| format!("opening the archive in {}", args.data_dir.display()))?;
                let n = archive.reindex().await.map_err(anyhow::Error::new).context("reindex failed")?;
                println!("reindexed {n} instances");
                Ok(())
            }
        }
    })
}
