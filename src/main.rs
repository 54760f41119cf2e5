//! The `kura` binary: parse the command line, open the archive, serve until a signal.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kura::config::{Cli, Command, Config};
use kura::{App, Archive};

/// glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core)
/// and rarely returns their memory: with tokio's and the blocking pool's threads that alone kept
/// the server at 180–280 MiB RSS during ingest. One arena per core keeps it near 80 MiB with no
/// measurable cost (benches/README.md). Must run before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        // SAFETY: mallopt only adjusts allocator parameters; no thread has started yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
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
                archive.close().await.map_err(anyhow::Error::new).context("closing the archive")?;
                println!("reindexed {n} instances");
                Ok(())
            }
        }
    })
}
