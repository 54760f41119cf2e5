//! Kura's integration tests: a real server on a loopback port, driven over HTTP.

/// Test server, DICOM fixtures generated in code, and the `check_*`-style HTTP helpers.
#[path = "../support/mod.rs"]
mod support;

/// STOW-RS: storing, per-part failures, duplicates, preamble, limits.
mod stow;

/// STOW-RS bodies with a content coding: gzip, deflate, brotli; bombs, corruption, unknown
/// codings.
mod stow_coding;

/// QIDO-RS: search resources and matching, through the running server.
mod qido;

/// CORS for browser viewers: preflight, allowed origins, headers on errors.
mod cors;

/// Delete of studies, series and instances.
mod delete;

/// Data-directory format versions and their migration.
mod format;

/// WADO-RS retrieval of stored bytes.
mod wado;

/// Lossless encoding on request: JPEG-LS, JPEG XL, JPEG 2000, HTJ2K; q-values, 406, the cache.
mod encode;

/// HTTP caching of retrieved content: ETag, If-None-Match, Cache-Control.
mod caching;

/// Rendered images kept for the next reader, thumbnails and previews made at store time.
mod renditions;

/// Hostile DICOM content: nesting, frame counts, contradictory pixel descriptions.
mod hostile;

/// Durability: sled never writes blob files; kill -9 during concurrent STOW loses nothing
/// acknowledged; `kura reindex` rebuilds the same answers.
mod durability;

/// The HTTP edge: huge offsets, connection floods and stalls, multipart framing, Host and
/// Origin checks.
mod edge;

/// Inputs the fuzz targets (tests/fuzz) crashed on.
mod fuzz_regressions;

/// TLS: HTTP/1.1 and HTTP/2 by ALPN, TLS 1.1 refused, SIGHUP reload, the handshake under the
/// header timeout, client certificates as principals.
mod tls;

/// API keys: roles per route class, revocation, the failure rate limit, the key CLI, no
/// secret in the log.
mod auth;

/// Institutions, shares and share links: the cross-tenant matrix over HTTPS, STOW ownership,
/// the key and share APIs confined to an institution, `kura share`.
mod tenancy;

/// The memory budget: large values never held, metadata streamed, the abusive mix.
mod memory;

/// OpenID Connect bearer tokens: each algorithm, every refusal, the JWKS refetch and its rate
/// limit, roles from claims.
mod jwt;
/// UPS-RS: workitems, the state machine and its refusals, search, subscriptions and events over
/// WebSocket, redelivery after a reconnect and a restart, retention.
mod ups;

/// The audit trail: every access recorded and queried, kill -9, the hash chain, ATNA over TLS
/// syslog.
mod audit;

/// `kura upload`: cut links resumed without re-sending acknowledged instances, ZIP and DICOMDIR
/// inputs, zip bombs, refusals not retried, an uploader key that may not search.
mod upload;

/// Storage compression: native pixel data stored losslessly re-encoded, the received bytes
/// given back byte for byte.
mod store_compression;
