//! API keys for modalities, gateways and scripts: created with `kura key create` (or
//! `POST /admin/keys`), presented as `Authorization: Bearer kura_{id}_{secret}`.
//!
//! Only a hash is stored: SHA-256 of the whole key. The secret is 256 bits from the operating
//! system's random source, so no slow KDF (bcrypt, Argon2) is needed: those exist to make
//! guessing a low-entropy password expensive, and guessing 2^256 values is out of reach at any
//! speed, so a fast hash costs an attacker who stole the store nothing they could use while it
//! keeps each request's check to a microsecond. The id is public (it names the key in lists,
//! logs and the audit trail); the hash comparison runs in constant time.
//!
//! Keys live in a sled tree of their own (`api_keys`) on the catalog's database, so a change is
//! made durable by the catalog's commit (a real fsync; see `store::sled_store`). Values are
//! small versioned JSON records, never the API's JSON type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, Role, Roles};
use crate::store::{Store, StoreError};

/// The name of the sled tree that holds the keys.
pub const TREE: &str = "api_keys";
/// Every key starts with this, so that secret scanners (and people) recognise one.
pub const PREFIX: &str = "kura_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// Version of [`KeyRecord`].
const RECORD_VERSION: u32 = 1;
/// `last used` is written at most this often per key (a write per request would cost more
/// than the check itself).
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
const MAX_NAME_CHARS: usize = 128;
const MAX_INSTITUTION_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no key with id {0}")]
    Unknown(String),
    #[error("key store: {0}")]
    Store(#[from] StoreError),
}

fn backend(error: sled::Error) -> KeyError {
    KeyError::Store(StoreError::Backend(Box::new(error)))
}

/// One key as stored (format version [`RECORD_VERSION`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeyRecord {
    version: u32,
    name: String,
    institution: String,
    roles: Vec<Role>,
    /// Unix seconds.
    created: u64,
    last_used: Option<u64>,
    revoked: Option<u64>,
    /// SHA-256 of the whole key, hex.
    hash: String,
}

/// What may be shown about a key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub institution: String,
    pub roles: Vec<Role>,
    /// Unix seconds.
    pub created: u64,
    pub last_used: Option<u64>,
    pub revoked: Option<u64>,
}

/// A key as created: its description and the secret, shown once.
pub struct NewKey {
    pub info: KeyInfo,
    pub secret: String,
}

/// Why a presented key was not accepted. Deliberately not more specific towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not of the form `kura_{id}_{secret}`.
    Malformed,
    /// No such id, a different secret, or revoked.
    Invalid,
}

pub struct KeyStore {
    tree: sled::Tree,
    store: Arc<dyn Store>,
    /// When `last used` was last written, per key id.
    last_written: Mutex<HashMap<String, Instant>>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Invalid(format!("no random source: {e}")))?;
    Ok(bytes)
}

/// The id of a well-formed key (`kura_` + 16 hex digits + `_` + 43 base64url characters).
fn key_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.len() == 43 && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(id)
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), KeyError> {
    if text.trim().is_empty() || text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(KeyError::Invalid(format!("{what} must be 1 to {max} characters, none a control character")));
    }
    Ok(())
}

impl KeyRecord {
    fn info(&self, id: &str) -> KeyInfo {
        KeyInfo {
            id: id.to_string(),
            name: self.name.clone(),
            institution: self.institution.clone(),
            roles: self.roles.clone(),
            created: self.created,
            last_used: self.last_used,
            revoked: self.revoked,
        }
    }
}

impl KeyStore {
    /// The key store on `tree`; changes are made durable with `store`'s commit, which must be
    /// the catalog on the same sled database.
    pub fn new(tree: sled::Tree, store: Arc<dyn Store>) -> KeyStore {
        KeyStore { tree, store, last_written: Mutex::new(HashMap::new()) }
    }

    fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeyError> {
        match self.tree.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice::<KeyRecord>(&bytes)
                .map(Some)
                .map_err(|e| KeyError::Store(StoreError::Corrupt(format!("key record {id}: {e}")))),
        }
    }

    fn put(&self, id: &str, record: &KeyRecord) -> Result<(), KeyError> {
        let bytes = serde_json::to_vec(record).expect("records serialise");
        self.tree.insert(id.as_bytes(), bytes).map_err(backend)?;
        Ok(())
    }

    /// Creates a key; it is durable when this returns. The secret is in the result only.
    pub async fn create(&self, name: &str, institution: &str, roles: Roles) -> Result<NewKey, KeyError> {
        check_text("the name", name, MAX_NAME_CHARS)?;
        check_text("the institution", institution, MAX_INSTITUTION_CHARS)?;
        if roles == Roles::default() {
            return Err(KeyError::Invalid("a key needs at least one role".into()));
        }
        let id: String = random_bytes::<ID_BYTES>()?.iter().map(|b| format!("{b:02x}")).collect();
        let secret = format!("{PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(random_bytes::<SECRET_BYTES>()?));
        let record = KeyRecord {
            version: RECORD_VERSION,
            name: name.to_string(),
            institution: institution.to_string(),
            roles: roles.iter().collect(),
            created: now_unix(),
            last_used: None,
            revoked: None,
            hash: hash_hex(&secret),
        };
        let created = self
            .tree
            .compare_and_swap(id.as_bytes(), None::<&[u8]>, Some(serde_json::to_vec(&record).expect("serialise")))
            .map_err(backend)?;
        if created.is_err() {
            return Err(KeyError::Invalid("key id collision; try again".into()));
        }
        self.store.commit().await?;
        Ok(NewKey { info: record.info(&id), secret })
    }

    /// One key's description.
    pub fn info(&self, id: &str) -> Result<Option<KeyInfo>, KeyError> {
        Ok(self.get(id)?.map(|record| record.info(id)))
    }

    /// Every key, revoked ones included, by id.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let mut keys = Vec::new();
        for entry in self.tree.iter() {
            let (id, _) = entry.map_err(backend)?;
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(record) = self.get(&id)? {
                keys.push(record.info(&id));
            }
        }
        Ok(keys)
    }

    /// Whether any key can still authenticate.
    pub fn any_active(&self) -> Result<bool, KeyError> {
        Ok(self.list()?.iter().any(|key| key.revoked.is_none()))
    }

    /// Revokes a key with immediate effect (the next request presenting it gets 401); durable
    /// when this returns. Revoking a revoked key changes nothing.
    pub async fn revoke(&self, id: &str) -> Result<KeyInfo, KeyError> {
        let mut record = self.get(id)?.ok_or_else(|| KeyError::Unknown(id.to_string()))?;
        if record.revoked.is_none() {
            record.revoked = Some(now_unix());
            self.put(id, &record)?;
            self.store.commit().await?;
        }
        Ok(record.info(id))
    }

    /// The principal a presented key stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, Rejected> {
        let id = key_id(token).ok_or(Rejected::Malformed)?;
        let record = match self.get(id) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(Rejected::Invalid),
            Err(error) => {
                tracing::warn!(%error, key = id, "reading an API key failed");
                return Err(Rejected::Invalid);
            }
        };
        let presented = hash_hex(token);
        let matches: bool = presented.as_bytes().ct_eq(record.hash.as_bytes()).into();
        if !matches || record.revoked.is_some() {
            return Err(Rejected::Invalid);
        }
        self.note_use(id);
        Ok(Principal {
            subject: format!("key:{id}"),
            institution: record.institution,
            roles: record.roles.into_iter().collect(),
            key_id: Some(id.to_string()),
            scope: super::Scope::Institution,
        })
    }

    /// Records `last used`, at most once per [`LAST_USED_EVERY`] per key and without a commit:
    /// sled's background flush makes it durable soon after; a crash may lose the last minute.
    fn note_use(&self, id: &str) {
        {
            let mut written = self.last_written.lock().unwrap_or_else(|p| p.into_inner());
            if written.get(id).is_some_and(|at| at.elapsed() < LAST_USED_EVERY) {
                return;
            }
            if written.len() > 100_000 {
                written.retain(|_, at| at.elapsed() < LAST_USED_EVERY);
            }
            written.insert(id.to_string(), Instant::now());
        }
        let updated = self.tree.update_and_fetch(id.as_bytes(), |old| {
            let mut record: KeyRecord = serde_json::from_slice(old?).ok()?;
            record.last_used = Some(now_unix());
            Some(serde_json::to_vec(&record).expect("serialise"))
        });
        if let Err(error) = updated {
            tracing::warn!(%error, key = id, "recording the last use of an API key failed");
        }
    }
}

/// The key store of the data directory `data_dir`, for `kura key` while the server is stopped
/// (sled lets one process open a database). `Store::commit` makes changes durable.
pub fn open_offline(data_dir: &std::path::Path) -> Result<KeyStore, KeyError> {
    let sled = open_offline_store(data_dir)?;
    let tree = sled.tree(TREE)?;
    Ok(KeyStore::new(tree, sled))
}

/// The catalog of a stopped server's data directory (for `kura key` and `kura audit`).
pub fn open_offline_store(data_dir: &std::path::Path) -> Result<Arc<crate::store::SledStore>, KeyError> {
    crate::store::SledStore::open(&data_dir.join("store"), Default::default()).map_err(|error| {
        KeyError::Invalid(format!(
            "cannot open the store in {} ({error}); if `kura serve` is running on it, stop it or use the \
             HTTP API ({} and {})",
            data_dir.display(),
            crate::server::router::KEYS_PATH,
            crate::server::router::AUDIT_PATH
        ))
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds (proleptic Gregorian, UTC).
pub fn format_time(unix: u64) -> String {
    let (days, seconds) = ((unix / 86_400) as i64, unix % 86_400);
    let (year, month, day) = crate::civil::date_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape() {
        let good = format!("kura_0123456789abcdef_{}", "A".repeat(43));
        assert_eq!(key_id(&good), Some("0123456789abcdef"));
        assert_eq!(key_id(&good[..good.len() - 1]), None);
        assert_eq!(key_id(&good.replace("kura_", "kurb_")), None);
        assert_eq!(key_id(&format!("kura_0123456789ABCDEF_{}", "A".repeat(43))), None);
        assert_eq!(key_id(&format!("kura_0123456789abcdef_{}", &"A.".repeat(22)[..43])), None);
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
