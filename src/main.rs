//! The `kura` binary: parse the command line, open the archive, serve until a signal.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kura::audit::{AuditEvent, AuditLog};
use kura::auth::keys::{KeyStore, format_time};
use kura::config::{AuditCommand, Cli, Command, Config, KeyCommand, ShareCommand};
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

/// The key store and the audit trail of a stopped server's data directory.
fn open_offline(dir: &std::path::Path) -> anyhow::Result<(KeyStore, AuditLog)> {
    let store = kura::auth::keys::open_offline_store(dir)?;
    let keys = KeyStore::new(store.tree(kura::auth::keys::TREE)?, store.clone());
    let audit = kura::audit::open_offline(&store, dir)?;
    Ok((keys, audit))
}

/// A key or share change made with the CLI, for the audit trail.
fn cli_event(action: &str, detail: String) -> AuditEvent {
    AuditEvent {
        action: action.into(),
        outcome: 200,
        subject: Some("cli".into()),
        address: Some("local".into()),
        detail: Some(detail),
        ..Default::default()
    }
}

/// `kura key create|list|revoke` on a stopped server's data directory.
async fn key_command(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { data, institution, roles, name } => {
            let (keys, audit) = open_offline(&data.data_dir)?;
            let name = name.unwrap_or_else(|| institution.clone());
            let created = keys.create(&name, &institution, roles.into_iter().collect()).await?;
            audit.record(cli_event("key-create", format!("key {} for {institution}", created.info.id))).await?;
            let roles: Vec<String> = created.info.roles.iter().map(|r| r.to_string()).collect();
            eprintln!(
                "created key {} ({name}) for {institution}, roles {}; the secret below is shown once, store it now:",
                created.info.id,
                roles.join(",")
            );
            println!("{}", created.secret);
        }
        KeyCommand::List { data } => {
            let (keys, _) = open_offline(&data.data_dir)?;
            println!(
                "{:<16}  {:<24}  {:<16}  {:<28}  {:<20}  {:<20}  revoked",
                "id", "name", "institution", "roles", "created", "last used"
            );
            for key in keys.list()? {
                let roles: Vec<String> = key.roles.iter().map(|r| r.to_string()).collect();
                println!(
                    "{:<16}  {:<24}  {:<16}  {:<28}  {:<20}  {:<20}  {}",
                    key.id,
                    key.name,
                    key.institution,
                    roles.join(","),
                    format_time(key.created),
                    key.last_used.map_or("never".into(), format_time),
                    key.revoked.map_or("-".into(), format_time),
                );
            }
        }
        KeyCommand::Revoke { data, id } => {
            let (keys, audit) = open_offline(&data.data_dir)?;
            let key = keys.revoke(&id).await?;
            audit.record(cli_event("key-revoke", format!("key {}", key.id))).await?;
            println!("revoked key {} ({})", key.id, key.name);
        }
    }
    Ok(())
}

/// `kura share create|list|revoke` on a stopped server's data directory (deployment-wide: the
/// command has the data directory).
async fn share_command(command: ShareCommand) -> anyhow::Result<()> {
    use kura::archive::{Grantee, NewShare};
    use kura::store::Store;
    let open = |dir: &std::path::Path| kura::archive::shares::open_offline(dir).map_err(anyhow::Error::new);
    match command {
        ShareCommand::Create { data, study, series, institution, user, link, expires_in_secs } => {
            let (shares, store) = open(&data.data_dir)?;
            let grantee = match (institution, user, link) {
                (Some(institution), None, false) => Grantee::Institution(institution),
                (None, Some(user), false) => Grantee::User(user),
                (None, None, true) => Grantee::Link,
                _ => anyhow::bail!("name one of --institution, --user or --link"),
            };
            let owner = store
                .study(&study)
                .map_err(anyhow::Error::new)?
                .with_context(|| format!("no study {study} in {}", data.data_dir.display()))?
                .owner;
            if let Some(series) = &series {
                store.series(&study, series).map_err(anyhow::Error::new)?.context("no such series in the study")?;
            }
            let share = NewShare { study_uid: study, series_uid: series, grantee, expires_in_secs };
            let created = shares.create(share, &owner, "cli").await?;
            // As the HTTP API records it (`server::admin`): the share, its target and grantee.
            let event = AuditEvent {
                studies: vec![created.info.study.clone()],
                series: created.info.series.clone(),
                ..cli_event("share-create", created.info.audit_text())
            };
            kura::audit::open_offline(&store, &data.data_dir)?.record(event).await?;
            eprintln!(
                "created share {} of {} for {}, expires {}",
                created.info.id,
                created.info.owner,
                created.info.grantee_text(),
                format_time(created.info.expires)
            );
            if let Some(token) = created.token {
                eprintln!("the link below is shown once, store it now (prefix it with the server's address):");
                println!("/share/{token}/dicomweb");
            }
        }
        ShareCommand::List { data } => {
            let (shares, _) = open(&data.data_dir)?;
            println!(
                "{:<16}  {:<16}  {:<40}  {:<28}  {:<20}  {:<20}  state",
                "id", "owner", "study[/series]", "grantee", "created", "expires"
            );
            for share in shares.list(None)? {
                let target = match &share.series {
                    Some(series) => format!("{}/{series}", share.study),
                    None => share.study.clone(),
                };
                let state = match (share.revoked, share.active) {
                    (Some(at), _) => format!("revoked {}", format_time(at)),
                    (None, false) => "expired".into(),
                    (None, true) => "active".into(),
                };
                println!(
                    "{:<16}  {:<16}  {:<40}  {:<28}  {:<20}  {:<20}  {state}",
                    share.id,
                    share.owner,
                    target,
                    share.grantee_text(),
                    format_time(share.created),
                    format_time(share.expires),
                );
            }
        }
        ShareCommand::Revoke { data, id } => {
            let (shares, store) = open(&data.data_dir)?;
            let share = shares.revoke(&id, None).await?;
            let event = AuditEvent {
                studies: vec![share.study.clone()],
                series: share.series.clone(),
                ..cli_event("share-revoke", format!("share {}", share.id))
            };
            kura::audit::open_offline(&store, &data.data_dir)?.record(event).await?;
            println!("revoked share {} ({})", share.id, share.grantee_text());
        }
    }
    Ok(())
}

/// `kura audit verify|export` on a stopped server's data directory.
async fn audit_command(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { data } => {
            let (_, audit) = open_offline(&data.data_dir)?;
            match audit.verify() {
                Ok(summary) => {
                    println!("audit trail intact: {} records, head {}", summary.records, summary.head);
                    Ok(())
                }
                Err(error) => {
                    eprintln!("audit trail BROKEN: {error}");
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Export { data, since } => {
            let since = match since {
                Some(text) => Some(
                    kura::server::audit_api::parse_time(&text)
                        .with_context(|| format!("--since {text:?}: use 2026-12-02T19:00:00Z or Unix seconds"))?,
                ),
                None => None,
            };
            let (_, audit) = open_offline(&data.data_dir)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = audit.export(since, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!("exported {n} audit records");
            Ok(())
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
                let security = &config.security;
                if security.require_auth
                    && security.client_certificates.is_empty()
                    && security.oidc.is_none()
                    && !archive.keys().any_active().map_err(anyhow::Error::new)?
                {
                    anyhow::bail!(
                        "authentication is required here (a non-loopback listener, --behind-proxy or \
                         --require-auth) but nobody could authenticate: create an API key first with \
                         `kura key create --data {} --institution <name> --role administrator`, or map client \
                         certificates with --tls-client-map",
                        config.data_dir.display()
                    );
                }
                let tls = match &security.tls {
                    None => None,
                    Some(files) => {
                        let holder = kura::server::tls::CertHolder::load(files.clone()).map_err(anyhow::Error::msg)?;
                        kura::server::tls::reload_on_sighup(holder.clone()).context("installing the SIGHUP handler")?;
                        Some(kura::server::tls::server_config(holder).map_err(anyhow::Error::msg)?)
                    }
                };
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?;
                if let Some(address) = &config.audit.syslog {
                    let target = kura::audit::syslog::SyslogTarget {
                        address: address.clone(),
                        extra_ca: config.audit.syslog_ca.clone(),
                    };
                    let forwarder = kura::audit::syslog::Forwarder::start(target).map_err(anyhow::Error::msg)?;
                    archive.audit().forward_to(forwarder);
                }
                let app = App::try_new(Arc::new(archive), Arc::new(config)).map_err(anyhow::Error::msg)?;
                kura::server::serve_with(listener, app, tls, kura::server::shutdown_signal()).await?;
                Ok(())
            }
            Command::Key(command) => key_command(command).await,
            Command::Share(command) => share_command(command).await,
            Command::Audit(command) => audit_command(command).await,
            Command::Upload(args) => {
                let options = match kura::upload::UploadOptions::from_args(args) {
                    Ok(options) => options,
                    Err(message) => {
                        eprintln!("kura upload: {message}");
                        std::process::exit(kura::upload::Ending::BadInput.exit_code());
                    }
                };
                let summary = kura::upload::run(options).await;
                for failure in &summary.failures {
                    let sop =
                        failure.sop_uid.as_deref().map(|uid| format!(" (SOP Instance {uid})")).unwrap_or_default();
                    eprintln!("kura upload: failed: {}{sop}: {}", failure.origin, failure.reason);
                }
                if let Some((_, message)) = &summary.stopped {
                    eprintln!("kura upload: stopped: {message}");
                }
                println!("{}", summary.line());
                std::process::exit(summary.ending().exit_code());
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
