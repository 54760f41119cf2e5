//! Shares: an owner's administrator lets another institution, one user (a subject) or the
//! holder of a link read a study or one series of it, until an expiry or a revocation.
//!
//! Shares live in a sled tree of their own (`shares`) on the catalog's database, so a change is
//! durable after the catalog's commit (a real fsync), like an instance record; a revocation or
//! a new share is in effect for the next request because every request reads the tree (there
//! is no cache to go stale). Values are small versioned JSON records, never the API's JSON.
//!
//! A link's token is 256 bits from the operating system's random source; only its SHA-256 is
//! stored (under `h/{hash}` to find the share, and in the record, compared in constant time).
//! The token exists in the answer that created the share and in the link's URLs; logs and
//! lists name the share by its id.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

/// The name of the sled tree that holds the shares.
pub const TREE: &str = "shares";
/// Every link token starts with this (secret scanners, and people, recognise one).
pub const TOKEN_PREFIX: &str = "kshare_";
const ID_BYTES: usize = 8;
const TOKEN_BYTES: usize = 32;
/// Version of [`ShareRecord`].
const RECORD_VERSION: u32 = 1;
/// Expiry when the request names none: a week.
pub const DEFAULT_EXPIRY_SECS: u64 = 7 * 24 * 3600;
/// Longest expiry: a year. Every share ends.
pub const MAX_EXPIRY_SECS: u64 = 365 * 24 * 3600;
const MAX_NAME_CHARS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{0}")]
    Invalid(String),
    /// No such share, or one the caller may not manage (the same answer for both).
    #[error("no such share")]
    Unknown,
    #[error("share store: {0}")]
    Store(#[from] StoreError),
}

fn backend(error: sled::Error) -> ShareError {
    ShareError::Store(StoreError::Backend(Box::new(error)))
}

/// Who a share is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grantee {
    /// Every principal of this institution.
    Institution(String),
    /// One principal, by subject (`key:{id}`, `cert:{name}`, an OpenID Connect subject).
    User(String),
    /// Whoever holds the link's token.
    Link,
}

/// One share as stored (format version [`RECORD_VERSION`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ShareRecord {
    version: u32,
    study_uid: String,
    series_uid: Option<String>,
    grantee: Grantee,
    /// The institution that owns the study (only its administrators manage the share).
    owner: String,
    /// The subject that created the share.
    created_by: String,
    /// Unix seconds.
    created: u64,
    expires: u64,
    revoked: Option<u64>,
    /// SHA-256 of a link's token, hex.
    token_hash: Option<String>,
}

/// What may be shown about a share: everything but a link's token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShareInfo {
    pub id: String,
    pub study: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    pub grantee: Grantee,
    pub owner: String,
    pub created_by: String,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    pub revoked: Option<u64>,
    /// Neither expired nor revoked.
    pub active: bool,
}

impl ShareInfo {
    /// `institution X`, `user S` or `link`.
    pub fn grantee_text(&self) -> String {
        match &self.grantee {
            Grantee::Institution(name) => format!("institution {name}"),
            Grantee::User(subject) => format!("user {subject}"),
            Grantee::Link => "link".into(),
        }
    }

    /// `share {id} of {study}[/{series}] for {grantee}`: what the audit trail says of a new
    /// share (never its token).
    pub fn audit_text(&self) -> String {
        let target = match &self.series {
            Some(series) => format!("{}/{series}", self.study),
            None => self.study.clone(),
        };
        format!("share {} of {target} for {}", self.id, self.grantee_text())
    }
}

/// What a new share is.
#[derive(Debug, Clone)]
pub struct NewShare {
    pub study_uid: String,
    pub series_uid: Option<String>,
    pub grantee: Grantee,
    pub expires_in_secs: u64,
}

/// A share as created: its description and, for a link, the token, shown once.
pub struct CreatedShare {
    pub info: ShareInfo,
    pub token: Option<String>,
}

/// A study or series a caller may read through a share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub study_uid: String,
    pub series_uid: Option<String>,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hash_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ShareError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| ShareError::Invalid(format!("no random source: {e}")))?;
    Ok(bytes)
}

/// Whether `token` has the shape of a link token (`kshare_` + 43 base64url characters); other
/// strings are refused before anything is hashed or looked up.
pub fn is_token_shaped(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|secret| {
        secret.len() == 43 && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn record_key(id: &str) -> Vec<u8> {
    format!("s/{id}").into_bytes()
}

fn hash_key(hash: &str) -> Vec<u8> {
    format!("h/{hash}").into_bytes()
}

impl ShareRecord {
    fn active(&self, now: u64) -> bool {
        self.revoked.is_none() && now < self.expires
    }

    fn info(&self, id: &str, now: u64) -> ShareInfo {
        ShareInfo {
            id: id.to_string(),
            study: self.study_uid.clone(),
            series: self.series_uid.clone(),
            grantee: self.grantee.clone(),
            owner: self.owner.clone(),
            created_by: self.created_by.clone(),
            created: self.created,
            expires: self.expires,
            revoked: self.revoked,
            active: self.active(now),
        }
    }

    fn grant(&self) -> Grant {
        Grant { study_uid: self.study_uid.clone(), series_uid: self.series_uid.clone() }
    }
}

fn check_text(what: &str, text: &str) -> Result<(), ShareError> {
    if text.trim().is_empty() || text.chars().count() > MAX_NAME_CHARS || text.chars().any(char::is_control) {
        return Err(ShareError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_CHARS} characters, none a control character"
        )));
    }
    Ok(())
}

pub struct ShareStore {
    tree: sled::Tree,
    store: Arc<dyn Store>,
}

impl ShareStore {
    /// The share store on `tree`; changes are made durable with `store`'s commit, which must be
    /// the catalog on the same sled database.
    pub fn new(tree: sled::Tree, store: Arc<dyn Store>) -> ShareStore {
        ShareStore { tree, store }
    }

    fn get(&self, id: &str) -> Result<Option<ShareRecord>, ShareError> {
        match self.tree.get(record_key(id)).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ShareError::Store(StoreError::Corrupt(format!("share record {id}: {e}")))),
        }
    }

    /// Every share with its id.
    fn records(&self) -> Result<Vec<(String, ShareRecord)>, ShareError> {
        let mut records = Vec::new();
        for entry in self.tree.scan_prefix(b"s/") {
            let (key, bytes) = entry.map_err(backend)?;
            let id = String::from_utf8_lossy(&key[2..]).into_owned();
            let record: ShareRecord = serde_json::from_slice(&bytes)
                .map_err(|e| ShareError::Store(StoreError::Corrupt(format!("share record {id}: {e}"))))?;
            records.push((id, record));
        }
        Ok(records)
    }

    /// Creates a share of a study owned by `owner` (the caller checked that the study, and the
    /// series, exist and that it may share them); durable when this returns.
    pub async fn create(&self, share: NewShare, owner: &str, created_by: &str) -> Result<CreatedShare, ShareError> {
        match &share.grantee {
            Grantee::Institution(name) => check_text("the institution", name)?,
            Grantee::User(subject) => check_text("the user", subject)?,
            Grantee::Link => {}
        }
        if share.expires_in_secs == 0 || share.expires_in_secs > MAX_EXPIRY_SECS {
            return Err(ShareError::Invalid(format!(
                "the expiry must be 1 to {MAX_EXPIRY_SECS} seconds from now (a year)"
            )));
        }
        let id: String = random_bytes::<ID_BYTES>()?.iter().map(|b| format!("{b:02x}")).collect();
        let token = match share.grantee {
            Grantee::Link => Some(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random_bytes::<TOKEN_BYTES>()?))),
            _ => None,
        };
        let now = now_unix();
        let record = ShareRecord {
            version: RECORD_VERSION,
            study_uid: share.study_uid,
            series_uid: share.series_uid,
            grantee: share.grantee,
            owner: owner.to_string(),
            created_by: created_by.to_string(),
            created: now,
            expires: now.saturating_add(share.expires_in_secs),
            revoked: None,
            token_hash: token.as_deref().map(hash_hex),
        };
        let mut batch = sled::Batch::default();
        batch.insert(record_key(&id), serde_json::to_vec(&record).expect("records serialise"));
        if let Some(hash) = &record.token_hash {
            batch.insert(hash_key(hash), id.as_bytes());
        }
        if self.tree.get(record_key(&id)).map_err(backend)?.is_some() {
            return Err(ShareError::Invalid("share id collision; try again".into()));
        }
        self.tree.apply_batch(batch).map_err(backend)?;
        self.store.commit().await?;
        Ok(CreatedShare { info: record.info(&id, now), token })
    }

    /// The shares whose study `owner` owns (`None`: every share), newest first.
    pub fn list(&self, owner: Option<&str>) -> Result<Vec<ShareInfo>, ShareError> {
        let now = now_unix();
        let mut shares: Vec<ShareInfo> = self
            .records()?
            .into_iter()
            .filter(|(_, record)| owner.is_none_or(|owner| record.owner == owner))
            .map(|(id, record)| record.info(&id, now))
            .collect();
        shares.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(shares)
    }

    /// Revokes a share with immediate effect; durable when this returns. `owner` confines the
    /// caller to its institution's shares (`None`: any share); a share of another owner is
    /// [`ShareError::Unknown`], like one that does not exist.
    pub async fn revoke(&self, id: &str, owner: Option<&str>) -> Result<ShareInfo, ShareError> {
        let mut record = self.get(id)?.ok_or(ShareError::Unknown)?;
        if owner.is_some_and(|owner| record.owner != owner) {
            return Err(ShareError::Unknown);
        }
        if record.revoked.is_none() {
            record.revoked = Some(now_unix());
            self.tree.insert(record_key(id), serde_json::to_vec(&record).expect("serialise")).map_err(backend)?;
            self.store.commit().await?;
        }
        Ok(record.info(id, now_unix()))
    }

    /// What the active shares grant to `institution` or to `subject`.
    pub fn grants_to(&self, institution: &str, subject: &str) -> Result<Vec<Grant>, ShareError> {
        let now = now_unix();
        Ok(self
            .records()?
            .into_iter()
            .filter(|(_, record)| record.active(now))
            .filter(|(_, record)| match &record.grantee {
                Grantee::Institution(name) => name == institution,
                Grantee::User(user) => user == subject,
                Grantee::Link => false,
            })
            .map(|(_, record)| record.grant())
            .collect())
    }

    /// What the link share `id` grants now: nothing once it expired or was revoked.
    pub fn link_grant(&self, id: &str) -> Result<Option<Grant>, ShareError> {
        let now = now_unix();
        Ok(self
            .get(id)?
            .filter(|record| record.grantee == Grantee::Link && record.active(now))
            .map(|record| record.grant()))
    }

    /// The id and owning institution of the active link share whose token this is; `None` for
    /// an unknown, expired or revoked token alike.
    pub fn link_id(&self, token: &str) -> Result<Option<(String, String)>, ShareError> {
        if !is_token_shaped(token) {
            return Ok(None);
        }
        let presented = hash_hex(token);
        let Some(id) = self.tree.get(hash_key(&presented)).map_err(backend)? else { return Ok(None) };
        let id = String::from_utf8_lossy(&id).into_owned();
        let Some(record) = self.get(&id)? else { return Ok(None) };
        let stored = record.token_hash.as_deref().unwrap_or("");
        let matches: bool = presented.as_bytes().ct_eq(stored.as_bytes()).into();
        let live = matches && record.grantee == Grantee::Link && record.active(now_unix());
        Ok(live.then_some((id, record.owner)))
    }
}

/// The share store of the data directory `data_dir` and its catalog, for `kura share` while the
/// server is stopped (sled lets one process open a database).
pub fn open_offline(data_dir: &std::path::Path) -> Result<(ShareStore, Arc<crate::store::SledStore>), ShareError> {
    let sled = crate::store::SledStore::open(&data_dir.join("store"), Default::default()).map_err(|error| {
        ShareError::Invalid(format!(
            "cannot open the store in {} ({error}); if `kura serve` is running on it, stop it or use the \
             HTTP API (/admin/shares)",
            data_dir.display()
        ))
    })?;
    let tree = sled.tree(TREE)?;
    Ok((ShareStore::new(tree, sled.clone()), sled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        let good = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
        assert!(is_token_shaped(&good));
        assert!(!is_token_shaped(&good[..good.len() - 1]));
        assert!(!is_token_shaped(&format!("{TOKEN_PREFIX}{}", "A.".repeat(22))));
        assert!(!is_token_shaped(&good.replace(TOKEN_PREFIX, "kura_")));
    }
}
