//! Configuration: one definition shared by the command line and the environment
//! (`--listen` / `KURA_LISTEN`, …), validated into [`Config`]. Every default is named.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::archive::ArchiveOptions;
use crate::store::{DuplicatePolicy, SledStoreOptions};

#[derive(Debug, Parser)]
#[command(name = "kura", version, about = "Kura: a DICOMweb archive server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the archive server.
    Serve(ServeArgs),
    /// Rebuild the search index from the store (the server must not be running).
    Reindex(DataArgs),
    /// Manage API keys (the server must not be running; a running one offers /admin/keys).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Share studies and series with other institutions, users or as links (the server must
    /// not be running; a running one offers /admin/shares).
    #[command(subcommand)]
    Share(ShareCommand),
    /// Check or export the audit trail (the server must not be running; a running one offers
    /// GET /admin/audit).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Send files, folders, DICOMDIRs and ZIP archives to a DICOMweb server (STOW-RS), compressed,
    /// in bounded batches, resuming where a cut link left off (README.md, "Uploading from a
    /// hospital").
    Upload(UploadArgs),
}

/// `kura upload`: raw arguments, validated into `crate::upload::UploadOptions`.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// Files, folders (recursive), DICOMDIR files and ZIP archives to send.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The DICOMweb root, e.g. `https://pacs.example/dicomweb`.
    #[arg(long = "to", env = "KURA_UPLOAD_TO")]
    pub to: String,
    /// Bearer token (an API key or a JWT) sent as `Authorization: Bearer`; never printed.
    #[arg(long, env = "KURA_TOKEN", hide_env_values = true)]
    pub token: Option<crate::upload::Secret>,
    /// CA certificates (PEM) trusted for an https:// server besides the Mozilla roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Most bytes of instances (before compression) in one STOW-RS request; a larger instance
    /// goes alone.
    #[arg(long, default_value_t = crate::upload::DEFAULT_BATCH_BYTES)]
    pub batch_bytes: u64,
    /// Most instances in one STOW-RS request.
    #[arg(long, default_value_t = crate::upload::DEFAULT_BATCH_INSTANCES)]
    pub batch_instances: usize,
    /// Send request bodies without a Content-Encoding.
    #[arg(long)]
    pub no_compress: bool,
    /// The request body's content coding (when compressing).
    #[arg(long, value_enum, default_value_t = crate::upload::Coding::DEFAULT)]
    pub coding: crate::upload::Coding,
    /// The coding's level: gzip 1–9, br 0–11 (default: gzip 6, br 5).
    #[arg(long)]
    pub compression_level: Option<u32>,
    /// Re-encode uncompressed pixel data losslessly before it leaves (each instance is checked
    /// to decode to exactly its original pixels first, else sent as it is): jpeg-ls (default),
    /// htj2k, jpeg-xl, jpeg-2000, or none.
    #[arg(long, value_enum, default_value_t = crate::upload::PixelCodec::JpegLs)]
    pub pixel_codec: crate::upload::PixelCodec,
    /// The journal of instances the server acknowledged (append-only, fsynced); by default
    /// `$XDG_STATE_HOME/kura/upload-journal` or `~/.local/state/kura/upload-journal`.
    #[arg(long, env = "KURA_UPLOAD_JOURNAL")]
    pub journal: Option<PathBuf>,
    /// Attempts after the first for a request that met a connection error, a timeout, 429 or a
    /// 5xx (exponential backoff with jitter, Retry-After honoured); 4xx are never retried.
    #[arg(long, default_value_t = crate::upload::DEFAULT_RETRIES)]
    pub retries: u32,
    /// Seconds without progress (connecting, sending, or waiting for the answer) before a
    /// request is abandoned and retried.
    #[arg(long, default_value_t = crate::upload::DEFAULT_TIMEOUT_SECS)]
    pub timeout_secs: u64,
    /// Largest instance file (or ZIP entry) read, in bytes; larger ones are reported as failed.
    #[arg(long, default_value_t = crate::upload::DEFAULT_MAX_INSTANCE_BYTES)]
    pub max_instance_bytes: u64,
    /// Most entries a ZIP archive may have.
    #[arg(long, default_value_t = crate::upload::inputs::DEFAULT_ZIP_MAX_ENTRIES)]
    pub zip_max_entries: u64,
    /// Most bytes all entries of one ZIP archive may inflate to.
    #[arg(long, default_value_t = crate::upload::inputs::DEFAULT_ZIP_MAX_TOTAL_BYTES)]
    pub zip_max_total_bytes: u64,
    /// Most inflated bytes per compressed byte of a ZIP entry (a zip-bomb guard).
    #[arg(long, default_value_t = crate::upload::inputs::DEFAULT_ZIP_MAX_RATIO)]
    pub zip_max_ratio: u64,
    /// No progress lines on stderr (retries, failures and the summary are still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Share a study, or one series of it, until an expiry. A link's token is printed once:
    /// only a hash of it is stored.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// The study's StudyInstanceUID.
        #[arg(long)]
        study: String,
        /// Share only this series of the study.
        #[arg(long)]
        series: Option<String>,
        /// Share with every principal of this institution.
        #[arg(long, group = "grantee")]
        institution: Option<String>,
        /// Share with one principal, by subject (`key:{id}`, `cert:{name}`, …).
        #[arg(long, group = "grantee")]
        user: Option<String>,
        /// Share as a link: its own read-only DICOMweb root, `/share/{token}/dicomweb`.
        #[arg(long, group = "grantee")]
        link: bool,
        /// Seconds until the share expires (at most a year).
        #[arg(long, default_value_t = crate::archive::shares::DEFAULT_EXPIRY_SECS)]
        expires_in_secs: u64,
    },
    /// List the shares: id, study, series, grantee, created, expires, state (never a token).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a share: it grants nothing from then on.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        /// The share's id (from `kura share list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain: exit 0 when no record was edited, removed, reordered or cut off,
    /// else 1 and the first break.
    Verify {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Print the records as JSON lines, exactly as stored and hashed, oldest first.
    Export {
        #[command(flatten)]
        data: DataArgs,
        /// Only records from this time on: `2026-12-02T19:00:00Z` or Unix seconds.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print its secret, once: only a hash of it is stored.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// The institution the key acts for.
        #[arg(long)]
        institution: String,
        /// uploader, reader or administrator; repeat or separate with commas for several.
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<crate::auth::Role>,
        /// A name to recognise the key by (default: the institution).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys: id, name, institution, roles, created, last used, revoked (never a secret).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key: requests that present it get 401 from then on.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        /// The key's id (from `kura key list`).
        id: String,
    },
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
    /// Most bytes a compressed STOW-RS body (Content-Encoding gzip, deflate or br) may inflate
    /// to per compressed byte, checked as it inflates (a deflate bomb guard; 0: no ratio check,
    /// the inflated body is still held to --max-request-bytes).
    #[arg(long, env = "KURA_MAX_INFLATE_RATIO", default_value_t = crate::media::inflate::DEFAULT_MAX_INFLATE_RATIO)]
    pub max_inflate_ratio: u64,
    /// Largest single instance (one multipart part), in bytes.
    #[arg(long, env = "KURA_MAX_INSTANCE_BYTES", default_value_t = default_max_instance_bytes())]
    pub max_instance_bytes: u64,
    /// Free disk space, in MiB, kept for the catalog and the index: a new instance is refused
    /// (FailureReason A700) rather than let the disk fill up.
    #[arg(long, env = "KURA_MIN_FREE_MIB", default_value_t = 1024)]
    pub min_free_mib: u64,
    /// Most parts in one STOW-RS request.
    #[arg(long, env = "KURA_MAX_PARTS", default_value_t = default_max_parts())]
    pub max_parts: usize,
    /// Largest header block of one multipart part, in bytes.
    #[arg(long, env = "KURA_MAX_PART_HEADER_BYTES", default_value_t = default_max_part_header_bytes())]
    pub max_part_header_bytes: u64,
    /// Most results one QIDO-RS response carries (larger `limit` values are cut to it).
    #[arg(long, env = "KURA_QIDO_MAX_RESULTS", default_value_t = default_qido_max_results())]
    pub qido_max_results: usize,
    /// Memory budget, in MiB, that store-time parses, pixel decoding and transcoding, rendering,
    /// ZIP and metadata responses draw from before they allocate: work that would need more
    /// than the whole budget is refused (406; a STOW-RS part A700), work that fits waits for it
    /// (at most `--memory-wait-secs`, then 503 with Retry-After). The default keeps the server within about
    /// 250 MiB RSS and renders a 4096 × 3328 16-bit image.
    #[arg(long, env = "KURA_MEMORY_BUDGET_MIB", default_value_t = crate::memory::DEFAULT_BUDGET_MIB)]
    pub memory_budget_mib: u64,
    /// Disk, in MiB, for rendered images kept for the next reader (thumbnails, previews,
    /// rendered frames; `{data}/derived`), least recently used first out; 0 keeps none.
    #[arg(long, env = "KURA_RENDITION_CACHE_MIB", default_value_t = 1024)]
    pub rendition_cache_mib: u64,
    /// Do not make thumbnails and previews after each store (they are then made, and kept, on
    /// the first request).
    #[arg(long, env = "KURA_NO_PRECOMPUTE_RENDITIONS")]
    pub no_precompute_renditions: bool,
    /// How long, in seconds, work that fits the memory budget waits for other work to give it
    /// back before the request is answered 503 with Retry-After (a STOW-RS part: A700).
    #[arg(long, env = "KURA_MEMORY_WAIT_SECS", default_value_t = crate::memory::DEFAULT_WAIT.as_secs())]
    pub memory_wait_secs: u64,
    /// Bytes of frames encoded on request (JPEG-LS, JPEG XL, JPEG 2000, HTJ2K) kept for the next
    /// reader, least recently used evicted first; 0 disables the cache. Held in
    /// `<data-dir>/encode-cache`, emptied at start.
    #[arg(long, env = "KURA_ENCODE_CACHE_BYTES", default_value_t = crate::archive::encode_cache::DEFAULT_BYTES)]
    pub encode_cache_bytes: u64,
    /// Store new instances whose pixel data arrives native (Explicit VR Little Endian) with it
    /// losslessly re-encoded, when every frame gives back exactly the received bytes and the
    /// result is smaller; the received bytes stay available byte for byte (WADO-RS with the
    /// original transfer-syntax, or none). `none` stores every instance as received.
    #[arg(long, env = "KURA_STORE_COMPRESSION", value_enum, default_value_t = StoreCompression::None)]
    pub store_compression: StoreCompression,
    /// How long COMPLETED and CANCELED UPS workitems are kept, in hours (fractions allowed),
    /// before they are removed.
    #[arg(long, env = "KURA_WORKITEM_RETENTION_HOURS", default_value_t = 168.0)]
    pub workitem_retention_hours: f64,
    /// Most UPS workitems stored at once (search runs over all of them).
    #[arg(long, env = "KURA_MAX_WORKITEMS", default_value_t = 10_000)]
    pub max_workitems: usize,
    /// Most UPS notification (WebSocket) connections open at once.
    #[arg(long, env = "KURA_MAX_NOTIFICATION_CONNECTIONS", default_value_t = 256)]
    pub max_notification_connections: usize,
    /// Page cache of the store, in MiB.
    #[arg(long, env = "KURA_CACHE_MIB", default_value_t = default_cache_mib())]
    pub cache_mib: u64,
    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `https://viewer.example`; `*` allows any origin, `none` none. By default, when listening
    /// on loopback, the loopback origins (`http://localhost:*`, `http://127.0.0.1:*`,
    /// `http://[::1]:*`, and https) and no other.
    #[arg(long, env = "KURA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Host names (Host header, HTTP/2 :authority; any port) the server answers for,
    /// comma-separated; `*` for any. Always: the loopback names, the listen address and the
    /// --public-url host. Others get 421 (a guard against DNS rebinding).
    #[arg(long, env = "KURA_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    #[arg(long, env = "KURA_MAX_CONNECTIONS", default_value_t = default_max_connections())]
    pub max_connections: usize,
    /// Connections served at once from one client address; further ones are closed at once.
    #[arg(long, env = "KURA_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = default_max_connections_per_address())]
    pub max_connections_per_address: usize,
    /// Seconds a new connection may take to complete its first request head (HTTP/1) or open
    /// its first stream (HTTP/2), protocol detection included.
    #[arg(long, env = "KURA_HEADER_TIMEOUT_SECS", default_value_t = default_header_timeout_secs())]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress after its first (HTTP/1
    /// keep-alive, a later request head included; HTTP/2 idle). HTTP/2 peers are also pinged
    /// at this interval and dropped when they do not answer within the header timeout.
    #[arg(long, env = "KURA_IDLE_TIMEOUT_SECS", default_value_t = default_idle_timeout_secs())]
    pub idle_timeout_secs: u64,
    /// Seconds a request body may stall (no byte arriving while the server waits for one)
    /// before the request fails.
    #[arg(long, env = "KURA_BODY_TIMEOUT_SECS", default_value_t = default_body_timeout_secs())]
    pub body_timeout_secs: u64,
    /// Seconds a response may wait for a client that reads none of it (no byte accepted by
    /// the connection's socket) before the connection is dropped and what the response held
    /// (its buffers, permits and connection slot) is released.
    #[arg(long, env = "KURA_SEND_TIMEOUT_SECS", default_value_t = default_send_timeout_secs())]
    pub send_timeout_secs: u64,
    /// Do not require authentication on a non-loopback listener (or behind --behind-proxy):
    /// for a proxy that authenticates every request itself. TLS (or --behind-proxy) is still
    /// required.
    #[arg(long, env = "KURA_ALLOW_REMOTE_WITHOUT_AUTH", default_value_t = false)]
    pub allow_remote_without_auth: bool,
    /// Require authentication (an API key or a mapped client certificate) on loopback too.
    #[arg(long, env = "KURA_REQUIRE_AUTH", default_value_t = false)]
    pub require_auth: bool,
    /// The server certificate chain (PEM); with --tls-key, Kura speaks HTTPS. Reloaded on SIGHUP.
    #[arg(long, env = "KURA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    #[arg(long, env = "KURA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against (mTLS, optional for
    /// the client); a verified certificate authenticates as --tls-client-map says.
    #[arg(long, env = "KURA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Maps client certificate names to principals, one `name institution role[,role]` a line
    /// (README.md, "Authentication").
    #[arg(long, env = "KURA_TLS_CLIENT_MAP")]
    pub tls_client_map: Option<PathBuf>,
    /// The address of a TLS-terminating reverse proxy in front of Kura: allows a non-loopback
    /// listener without --tls-cert, and only from this address are X-Forwarded-For, Forwarded
    /// and X-Forwarded-Proto believed.
    #[arg(long, env = "KURA_BEHIND_PROXY")]
    pub behind_proxy: Option<std::net::IpAddr>,
    /// OpenID Connect: the issuer (`iss`) whose JWTs authenticate callers, e.g.
    /// `https://idp.example/realms/hospital`. With it, --oidc-audience and one of
    /// --oidc-jwks-url or --oidc-jwks-file are needed (README.md, "OpenID Connect").
    #[arg(long, env = "KURA_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Accepted `aud` values, comma-separated (the client id or API identifier Kura is
    /// registered under at the identity provider).
    #[arg(long, env = "KURA_OIDC_AUDIENCE", value_delimiter = ',')]
    pub oidc_audience: Vec<String>,
    /// The issuer's JWKS (`jwks_uri` of its discovery document); HTTPS only.
    #[arg(long, env = "KURA_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// A JWKS document on disk, instead of --oidc-jwks-url.
    #[arg(long, env = "KURA_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for the JWKS URL besides the Mozilla roots.
    #[arg(long, env = "KURA_OIDC_JWKS_CA")]
    pub oidc_jwks_ca: Option<PathBuf>,
    /// The keys are fetched again on an unknown `kid` at most once per this many seconds.
    #[arg(long, env = "KURA_OIDC_JWKS_MIN_REFRESH_SECS", default_value_t = 60)]
    pub oidc_jwks_min_refresh_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "KURA_OIDC_CLOCK_SKEW_SECS", default_value_t = 60)]
    pub oidc_clock_skew_secs: u64,
    /// Accepted signature algorithms, comma-separated: RS256, ES256, EdDSA (HS* and `none`
    /// cannot be configured).
    #[arg(long, env = "KURA_OIDC_ALGORITHMS", value_delimiter = ',', default_value = "RS256,ES256,EdDSA")]
    pub oidc_algorithms: Vec<String>,
    /// Dotted path of the claim that names the caller.
    #[arg(long, env = "KURA_OIDC_SUBJECT_CLAIM", default_value = "sub")]
    pub oidc_subject_claim: String,
    /// Dotted path of the claim that names the caller's institution (e.g. `tid` on Entra,
    /// `hd` on Google, a mapper's claim on Keycloak).
    #[arg(long, env = "KURA_OIDC_INSTITUTION_CLAIM")]
    pub oidc_institution_claim: Option<String>,
    /// The institution of a token without the institution claim; without it such a token is
    /// refused.
    #[arg(long, env = "KURA_OIDC_DEFAULT_INSTITUTION")]
    pub oidc_default_institution: Option<String>,
    /// Dotted path of the roles claim (`realm_access.roles` on Keycloak, `roles` on Entra).
    #[arg(long, env = "KURA_OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
    /// Claim values to roles, comma-separated `value=role` (e.g.
    /// `pacs-readers=reader,pacs-admins=administrator`); without it a value that is a role name
    /// is that role.
    #[arg(long, env = "KURA_OIDC_ROLE_MAP", value_delimiter = ',')]
    pub oidc_role_map: Vec<String>,
    /// Roles every valid token gets, comma-separated (for providers without role claims).
    #[arg(long, env = "KURA_OIDC_DEFAULT_ROLES", value_delimiter = ',')]
    pub oidc_default_roles: Vec<crate::auth::Role>,
    /// Turn the audit trail off (for measurements only: accesses then go unrecorded).
    #[arg(long, env = "KURA_NO_AUDIT", default_value_t = false)]
    pub no_audit: bool,
    /// Also send every audit record as a DICOM audit message (PS3.15 A.5, IHE ATNA) to this
    /// syslog collector over TLS (RFC 5425), `host:port`.
    #[arg(long, env = "KURA_AUDIT_SYSLOG")]
    pub audit_syslog: Option<String>,
    /// CA certificates (PEM) trusted for the syslog collector besides the Mozilla roots.
    #[arg(long, env = "KURA_AUDIT_SYSLOG_CA")]
    pub audit_syslog_ca: Option<PathBuf>,
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
    8 * 1024 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_address() -> usize {
    128
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_idle_timeout_secs() -> u64 {
    60
}
fn default_body_timeout_secs() -> u64 {
    30
}
fn default_send_timeout_secs() -> u64 {
    60
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
    /// Inflated bytes per compressed byte of a coded STOW-RS body; 0: unchecked.
    pub max_inflate_ratio: u64,
    pub max_parts: usize,
    pub max_part_header_bytes: u64,
    pub qido_max_results: usize,
    /// Origins allowed by CORS (`*` for any); empty, and `cors_loopback` false: no CORS
    /// headers at all.
    pub cors_origins: Vec<String>,
    /// Allow the loopback origins (any port) by CORS: the default when listening on loopback
    /// and no --cors-origins is given.
    pub cors_loopback: bool,
    /// Host names the server answers for (lower case, no port); `*` for any.
    pub allowed_hosts: Vec<String>,
    pub connections: ConnectionLimits,
    pub archive: ArchiveOptions,
    pub security: Security,
    pub audit: AuditSettings,
}

/// Transport security and authentication (README.md, "Security").
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Certificate, key and client CAs; `None`: plain HTTP.
    pub tls: Option<crate::server::tls::TlsFiles>,
    /// Client certificate names → principals (empty without --tls-client-map).
    pub client_certificates: crate::auth::certs::CertificateMap,
    /// Every request must authenticate: on a non-loopback listener or behind a proxy (unless
    /// --allow-remote-without-auth), or with --require-auth.
    pub require_auth: bool,
    /// The TLS-terminating proxy whose forwarding headers are believed.
    pub trusted_proxy: Option<std::net::IpAddr>,
    /// OpenID Connect bearer tokens (`auth::jwt`); `None`: not accepted.
    pub oidc: Option<crate::auth::jwt::OidcConfig>,
}

/// The audit trail (`crate::audit`).
#[derive(Debug, Clone, Default)]
pub struct AuditSettings {
    /// `host:port` of a syslog collector (TLS, RFC 5425) for ATNA messages.
    pub syslog: Option<String>,
    pub syslog_ca: Option<PathBuf>,
}

/// Limits of the HTTP edge: how many connections, and how long each may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// From accept until the first request head is complete (or the first HTTP/2 stream).
    pub header_timeout: Duration,
    /// No request in progress for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// No request body byte for this long while the server waits for one: the request fails.
    pub body_timeout: Duration,
    /// No response byte taken by the client for this long while the server has some to send:
    /// the connection is dropped.
    pub send_timeout: Duration,
}

/// The host names every server answers for.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The host of an authority (`host[:port]`), lower case, without the port.
pub fn host_of(authority: &str) -> String {
    let authority = authority.trim();
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The host of an absolute URL such as the --public-url.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    (!authority.is_empty()).then(|| host_of(authority))
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
        let remote = !args.listen.ip().is_loopback();
        if remote && args.tls_cert.is_none() && args.behind_proxy.is_none() {
            return Err(format!(
                "refusing to listen on {} without TLS: patient data and credentials would cross the \
                 network in clear. Give --tls-cert and --tls-key, or --behind-proxy <address> when a \
                 TLS-terminating proxy forwards to Kura (or listen on 127.0.0.1)",
                args.listen
            ));
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::server::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        if args.tls_client_ca.is_some() && args.tls_cert.is_none() {
            return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
        }
        if args.tls_client_map.is_some() && args.tls_client_ca.is_none() {
            return Err("--tls-client-map needs --tls-client-ca (the CAs that vouch for the names)".into());
        }
        let client_certificates = match &args.tls_client_map {
            Some(path) => crate::auth::certs::CertificateMap::load(path)?,
            None => Default::default(),
        };
        let security = Security {
            tls,
            client_certificates,
            require_auth: args.require_auth
                || ((remote || args.behind_proxy.is_some()) && !args.allow_remote_without_auth),
            trusted_proxy: args.behind_proxy,
            oidc: oidc_config(&args)?,
        };
        if !(args.workitem_retention_hours.is_finite() && (0.0..=87_600.0).contains(&args.workitem_retention_hours)) {
            return Err("--workitem-retention-hours must be between 0 and 87600 (ten years)".into());
        }
        if args.max_workitems == 0 || args.max_notification_connections == 0 {
            return Err("--max-workitems and --max-notification-connections must be at least 1".into());
        }
        if args.qido_max_results == 0 || args.max_parts == 0 {
            return Err("--qido-max-results and --max-parts must be at least 1".into());
        }
        if args.memory_budget_mib < 16 {
            return Err("--memory-budget-mib must be at least 16".into());
        }
        if args.memory_wait_secs > 600 {
            return Err("--memory-wait-secs must be at most 600".into());
        }
        if args.max_connections == 0 || args.max_connections_per_address == 0 {
            return Err("--max-connections and --max-connections-per-address must be at least 1".into());
        }
        if [args.header_timeout_secs, args.idle_timeout_secs, args.body_timeout_secs, args.send_timeout_secs]
            .contains(&0)
        {
            return Err("--header-timeout-secs, --idle-timeout-secs, --body-timeout-secs and --send-timeout-secs must be at least 1".into());
        }
        let public_url = args.public_url.map(|u| u.trim_end_matches('/').to_string());
        let mut allowed_hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
        let listen_host = match args.listen.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        if !args.listen.ip().is_unspecified() {
            allowed_hosts.push(listen_host);
        }
        allowed_hosts.extend(public_url.as_deref().and_then(url_host));
        allowed_hosts.extend(
            args.allowed_hosts
                .iter()
                .map(|h| h.trim())
                .filter(|h| !h.is_empty())
                .map(|h| if h == "*" { h.to_string() } else { host_of(h) }),
        );
        let (cors_origins, cors_loopback) = match args.cors_origins.as_slice() {
            [] => (Vec::new(), args.listen.ip().is_loopback()),
            [none] if none.trim().eq_ignore_ascii_case("none") => (Vec::new(), false),
            given => (given.iter().map(|o| o.trim().trim_end_matches('/').to_string()).collect(), false),
        };
        Ok(Config {
            listen: args.listen,
            data_dir: args.data.data_dir,
            base_path,
            wado_uri_path: format!("/{}", args.wado_uri_path.trim_matches('/')),
            public_url,
            max_request_bytes: args.max_request_bytes,
            max_inflate_ratio: args.max_inflate_ratio,
            max_parts: args.max_parts,
            max_part_header_bytes: args.max_part_header_bytes,
            qido_max_results: args.qido_max_results,
            cors_origins,
            cors_loopback,
            allowed_hosts,
            connections: ConnectionLimits {
                max_connections: args.max_connections,
                max_per_address: args.max_connections_per_address,
                header_timeout: Duration::from_secs(args.header_timeout_secs),
                idle_timeout: Duration::from_secs(args.idle_timeout_secs),
                body_timeout: Duration::from_secs(args.body_timeout_secs),
                send_timeout: Duration::from_secs(args.send_timeout_secs),
            },
            archive: ArchiveOptions {
                duplicate_policy: match args.duplicates {
                    DuplicateArg::Reject => DuplicatePolicy::Reject,
                    DuplicateArg::Overwrite => DuplicatePolicy::Overwrite,
                },
                max_instance_bytes: args.max_instance_bytes,
                store: SledStoreOptions { cache_capacity: args.cache_mib * 1024 * 1024 },
                blob_dir: None,
                min_free_bytes: args.min_free_mib.saturating_mul(1024 * 1024),
                memory_budget_bytes: args.memory_budget_mib.saturating_mul(1024 * 1024),
                memory_wait: std::time::Duration::from_secs(args.memory_wait_secs),
                worklist: crate::archive::worklist::WorklistOptions {
                    retention: Duration::from_secs_f64(args.workitem_retention_hours * 3600.0),
                    max_workitems: args.max_workitems,
                    max_connections: args.max_notification_connections,
                },
                audit: !args.no_audit,
                rendition_cache_bytes: args.rendition_cache_mib.saturating_mul(1024 * 1024),
                precompute_renditions: !args.no_precompute_renditions,
                encode_cache_bytes: args.encode_cache_bytes,
                store_compression: args.store_compression.codec(),
            },
            security,
            audit: AuditSettings { syslog: args.audit_syslog.clone(), syslog_ca: args.audit_syslog_ca.clone() },
        })
    }
}

/// `--store-compression`: the lossless syntaxes whose encoder and decoder both live in-process
/// and whose output was smallest to decode back exactly (benches/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreCompression {
    None,
    JpegLs,
    JpegXl,
}

impl StoreCompression {
    pub fn codec(self) -> Option<crate::dicom::encode::Codec> {
        match self {
            StoreCompression::None => None,
            StoreCompression::JpegLs => Some(crate::dicom::encode::Codec::JpegLs),
            StoreCompression::JpegXl => Some(crate::dicom::encode::Codec::JpegXl),
        }
    }
}

/// The `--oidc-*` flags, validated.
fn oidc_config(args: &ServeArgs) -> Result<Option<crate::auth::jwt::OidcConfig>, String> {
    use crate::auth::jwt::{JwksSource, OidcConfig, parse_algorithm};
    let Some(issuer) = &args.oidc_issuer else {
        if args.oidc_jwks_url.is_some() || args.oidc_jwks_file.is_some() || !args.oidc_audience.is_empty() {
            return Err("--oidc-audience and --oidc-jwks-url/--oidc-jwks-file need --oidc-issuer".into());
        }
        return Ok(None);
    };
    let jwks = match (&args.oidc_jwks_url, &args.oidc_jwks_file) {
        (Some(url), None) if url.starts_with("https://") => {
            JwksSource::Url { url: url.clone(), extra_ca: args.oidc_jwks_ca.clone() }
        }
        (Some(_), None) => return Err("--oidc-jwks-url must be an https:// URL".into()),
        (None, Some(path)) => JwksSource::File(path.clone()),
        _ => return Err("--oidc-issuer needs exactly one of --oidc-jwks-url and --oidc-jwks-file".into()),
    };
    let audience: Vec<String> =
        args.oidc_audience.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    if audience.is_empty() {
        return Err("--oidc-issuer needs --oidc-audience (the aud value tokens for Kura carry)".into());
    }
    if let Some(ca) = &args.oidc_jwks_ca {
        crate::auth::jwt::client_tls(Some(ca))?;
    }
    let mut config = OidcConfig::new(issuer, &audience[0], jwks);
    config.audience = audience;
    config.clock_skew = Duration::from_secs(args.oidc_clock_skew_secs);
    config.min_refresh = Duration::from_secs(args.oidc_jwks_min_refresh_secs.max(1));
    config.algorithms = args.oidc_algorithms.iter().map(|a| parse_algorithm(a)).collect::<Result<_, _>>()?;
    config.claims.subject = args.oidc_subject_claim.clone();
    config.claims.institution = args.oidc_institution_claim.clone();
    config.claims.default_institution = args.oidc_default_institution.clone();
    config.claims.roles = Some(args.oidc_roles_claim.clone()).filter(|c| !c.trim().is_empty());
    config.claims.role_map = args
        .oidc_role_map
        .iter()
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (value, role) =
                entry.rsplit_once('=').ok_or_else(|| format!("--oidc-role-map entry {entry:?} is not value=role"))?;
            Ok((value.trim().to_string(), role.parse()?))
        })
        .collect::<Result<_, String>>()?;
    config.claims.default_roles = args.oidc_default_roles.iter().copied().collect();
    Ok(Some(config))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_without_port_or_case() {
        assert_eq!(host_of("LocalHost:8080"), "localhost");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("example.org."), "example.org");
        assert_eq!(url_host("https://user@Archive.example:8443/dicomweb"), Some("archive.example".into()));
    }

    #[test]
    fn allowed_hosts_and_cors_defaults() {
        let config = Config::with_data_dir("d".into());
        assert_eq!(config.allowed_hosts, ["localhost", "127.0.0.1", "[::1]", "127.0.0.1"]);
        assert!(config.cors_loopback && config.cors_origins.is_empty());
        let mut args = ServeArgs::parse_from_defaults("d".into());
        args.public_url = Some("https://pacs.example/dicomweb/".into());
        args.allowed_hosts = vec!["Other.Example:80".into()];
        args.cors_origins = vec!["none".into()];
        let config = Config::from_args(args).unwrap();
        assert!(config.allowed_hosts.ends_with(&["pacs.example".into(), "other.example".into()]));
        assert!(!config.cors_loopback && config.cors_origins.is_empty());
    }
}
