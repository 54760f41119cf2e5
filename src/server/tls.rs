//! TLS with rustls: the server certificate from PEM files, reloaded on SIGHUP; TLS 1.2 and 1.3
//! only; HTTP/2 and HTTP/1.1 offered by ALPN; optional client certificates verified against
//! `--tls-client-ca` (mTLS), mapped to principals by `auth::certs`.
//!
//! The certificate sits in a [`CertHolder`] that rustls asks for every handshake, so a reload
//! swaps it for new connections while open ones keep theirs. A new pair that does not load (a
//! missing file, a key that does not match the certificate) leaves the old one in place, and
//! the log says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Where the certificate, its key and the client CAs come from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates are verified against; `None`: no mTLS.
    pub client_ca: Option<PathBuf>,
}

/// The current server certificate; [`CertHolder::reload`] swaps it.
#[derive(Debug)]
pub struct CertHolder {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("reading {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| format!("{} does not belong to {}: {e}", key.display(), cert.display()))?;
    Ok(certified)
}

impl CertHolder {
    /// Loads the certificate and key; an error stops the server from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<CertHolder>, String> {
        let certified = load_certified_key(&files.cert, &files.key)?;
        Ok(Arc::new(CertHolder { files, current: RwLock::new(Arc::new(certified)) }))
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let certified = load_certified_key(&self.files.cert, &self.files.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl ResolvesServerCert for CertHolder {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The rustls configuration: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`, client certificates
/// requested (not required) when a client CA is configured.
pub fn server_config(holder: Arc<CertHolder>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &holder.files().client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("reading {}: {e}", ca.display()))? {
                let cert = cert.map_err(|e| format!("reading {}: {e}", ca.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no CA certificate", ca.display()));
            }
            // Optional: a client without a certificate may still authenticate with an API key.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(holder);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reloads the certificate whenever the process receives SIGHUP.
#[cfg(unix)]
pub fn reload_on_sighup(holder: Arc<CertHolder>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match holder.reload() {
                Ok(()) => tracing::info!(cert = %holder.files.cert.display(), "reloaded the TLS certificate"),
                Err(error) => tracing::warn!(%error, "kept the current TLS certificate: the new one did not load"),
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn reload_on_sighup(_holder: Arc<CertHolder>) -> std::io::Result<()> {
    Ok(())
}
