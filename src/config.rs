//! Configuration: one definition shared by the command line and the environment
//! (`--listen` / `KURA_LISTEN`, …), validated into [`Config`]. Every default is named.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::archive::ArchiveOptions;
use crate::store::{DuplicatePolicy, SledStoreOptions};

#[derive(Debug, Parser)]
#[command(name = "kura", version, about = "Kura: a DICOMweb archive server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the archive server.
    Serve(ServeArgs),
    /// Rebuild the search index from the store (the server must not be running).
    Reindex(DataArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Data directory holding the store and the index.
    #[arg(long = "data", env = "KURA_DATA", default_value = default_data_dir())]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DuplicateArg {
    /// Refuse a different object under a stored SOP Instance UID (failure reason 0111).
    Reject,
    /// Replace the stored object.
    Overwrite,
}

/// Raw settings as given; see [`Config`] for their meaning once validated.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KURA_LISTEN", default_value = default_listen())]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub data: DataArgs,
    /// Path prefix of the DICOMweb services.
    #[arg(long, env = "KURA_BASE_PATH", default_value = default_base_path())]
    pub base_path: String,
    /// Path of the WADO-URI service (PS3.18 Chapter 9).
    #[arg(long, env = "KURA_WADO_URI_PATH", default_value = "/wado")]
    pub wado_uri_path: String,
    /// Absolute URL clients reach the DICOMweb root at (used in RetrieveURL); by default it is
    /// derived from the request's Host header.
    #[arg(long, env = "KURA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// What to do with a different object under an already stored SOP Instance UID.
    #[arg(long, env = "KURA_DUPLICATES", value_enum, default_value_t = DuplicateArg::Reject)]
    pub duplicates: DuplicateArg,
    /// Largest STOW-RS request body, in bytes.
    #[arg(long, env = "KURA_MAX_REQUEST_BYTES", default_value_t = default_max_request_bytes())]
    pub max_request_bytes: u64,
    /// Largest single instance (one multipart part), in bytes.
    #[arg(long, env = "KURA_MAX_INSTANCE_BYTES", default_value_t = default_max_instance_bytes())]
    pub max_instance_bytes: u64,
    /// Most parts in one STOW-RS request.
    #[arg(long, env = "KURA_MAX_PARTS", default_value_t = default_max_parts())]
    pub max_parts: usize,
    /// Largest header block of one multipart part, in bytes.
    #[arg(long, env = "KURA_MAX_PART_HEADER_BYTES", default_value_t = default_max_part_header_bytes())]
    pub max_part_header_bytes: u64,
    /// Most results one QIDO-RS response carries (larger `limit` values are cut to it).
    #[arg(long, env = "KURA_QIDO_MAX_RESULTS", default_value_t = default_qido_max_results())]
    pub qido_max_results: usize,
    /// Page cache of the store, in MiB.
    #[arg(long, env = "KURA_CACHE_MIB", default_value_t = default_cache_mib())]
    pub cache_mib: u64,
    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `http://localhost:3000`; `*` allows any origin. None by default.
    #[arg(long, env = "KURA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Allow listening on a non-loopback address although no authentication is configured.
    #[arg(long, env = "KURA_ALLOW_REMOTE_WITHOUT_AUTH", default_value_t = false)]
    pub allow_remote_without_auth: bool,
}

fn default_listen() -> &'static str {
    "127.0.0.1:8080"
}
fn default_data_dir() -> &'static str {
    "./kura-data"
}
fn default_base_path() -> &'static str {
    "/dicomweb"
}
fn default_max_request_bytes() -> u64 {
    64 * 1024 * 1024 * 1024
}
fn default_max_instance_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}
fn default_max_parts() -> usize {
    10_000
}
fn default_max_part_header_bytes() -> u64 {
    16 * 1024
}
fn default_qido_max_results() -> usize {
    1000
}
fn default_cache_mib() -> u64 {
    32
}

/// Validated settings of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Normalised: starts with `/`, no trailing `/` (empty for the root).
    pub base_path: String,
    /// Path of the WADO-URI service.
    pub wado_uri_path: String,
    pub public_url: Option<String>,
    pub max_request_bytes: u64,
    pub max_parts: usize,
    pub max_part_header_bytes: u64,
    pub qido_max_results: usize,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    pub archive: ArchiveOptions,
}

impl Config {
    /// Settings for tests and embedding: everything default except the data directory.
    pub fn with_data_dir(data_dir: PathBuf) -> Config {
        let args = ServeArgs::parse_from_defaults(data_dir);
        Config::from_args(args).expect("defaults are valid")
    }

    pub fn from_args(args: ServeArgs) -> Result<Config, String> {
        let trimmed = args.base_path.trim_end_matches('/');
        let base_path =
            if trimmed.is_empty() || trimmed.starts_with('/') { trimmed.to_string() } else { format!("/{trimmed}") };
        if !args.listen.ip().is_loopback() && !args.allow_remote_without_auth {
            return Err(format!(
                "refusing to listen on {} without authentication: patient data would be open to the \
                 network. Listen on 127.0.0.1, or pass --allow-remote-without-auth behind a \
                 TLS-terminating, authenticating proxy",
                args.listen
            ));
        }
        if args.qido_max_results == 0 || args.max_parts == 0 {
            return Err("--qido-max-results and --max-parts must be at least 1".into());
        }
        Ok(Config {
            listen: args.listen,
            data_dir: args.data.data_dir,
            base_path,
            wado_uri_path: format!("/{}", args.wado_uri_path.trim_matches('/')),
            public_url: args.public_url.map(|u| u.trim_end_matches('/').to_string()),
            max_request_bytes: args.max_request_bytes,
            max_parts: args.max_parts,
            max_part_header_bytes: args.max_part_header_bytes,
            qido_max_results: args.qido_max_results,
            cors_origins: args.cors_origins.iter().map(|o| o.trim().trim_end_matches('/').to_string()).collect(),
            archive: ArchiveOptions {
                duplicate_policy: match args.duplicates {
                    DuplicateArg::Reject => DuplicatePolicy::Reject,
                    DuplicateArg::Overwrite => DuplicatePolicy::Overwrite,
                },
                max_instance_bytes: args.max_instance_bytes,
                store: SledStoreOptions { cache_capacity: args.cache_mib * 1024 * 1024 },
                blob_dir: None,
            },
        })
    }
}

impl ServeArgs {
    fn parse_from_defaults(data_dir: PathBuf) -> ServeArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        let mut args = Only::parse_from(["kura"]).args;
        args.data.data_dir = data_dir;
        args
    }
}
