//! Derived bytes: what the archive makes from a stored instance and can always make again —
//! rendered images, thumbnails, the previews a slow link needs first. They are kept so that a
//! second reader pays no decoding, within a byte budget, least recently used first out.
//!
//! # Durability contract (weaker than the payload store's, on purpose)
//! Nothing here is ever the only copy of anything: an entry that a crash or a power cut tore or
//! lost is made again from the instance. So entries are written with a rename and **no fsync**
//! (an fsync per thumbnail would cost the store path more than rendering it), and every read
//! checks the entry whole: its key (instance, the version of the instance it was made from, and
//! what was made) and a CRC-32 of its bytes. A torn, stale or foreign entry is a miss, never
//! wrong bytes.
//!
//! Layout: `{root}/{fan:02x}/{sop_uid}.{variant:016x}`, the fan from the UID's hash. UIDs are
//! validated before they reach the archive (digits and dots), so they are safe file names; the
//! variant is a hash of what was made (kind, frame, rendering options), checked against the full
//! key stored in the entry.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

const MAGIC: &[u8; 8] = b"KURADRV1";
/// The longest entry kept: renditions of one frame are far smaller; bigger ones are not cached.
pub const MAX_ENTRY: u64 = 16 * 1024 * 1024;
/// The longest key (a UID is at most 64 bytes; the variant text is short).
const MAX_KEY: usize = 1024;

/// What an entry was made from and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKey {
    pub sop_uid: String,
    /// The change sequence number of the instance version it was made from: an instance
    /// replaced under `--duplicates overwrite` has a new one, so old entries are misses.
    pub version: u64,
    /// What was made, e.g. `rendered/3/jpeg/q90/...`.
    pub variant: String,
}

impl DerivedKey {
    fn text(&self) -> String {
        format!("{}|{}|{}", self.sop_uid, self.version, self.variant)
    }

    fn file_name(&self) -> String {
        format!(
            "{:02x}/{}.{:016x}",
            fnv1a(self.sop_uid.as_bytes()) & 0xff,
            self.sop_uid,
            fnv1a(self.variant.as_bytes())
        )
    }
}

/// FNV-1a, 64 bits: a stable hash for file names (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

struct Entry {
    size: u64,
    last_use: u64,
}

#[derive(Default)]
struct State {
    /// By file name (relative to the root), so that an instance's entries are one range.
    entries: BTreeMap<String, Entry>,
    used: u64,
    clock: u64,
}

/// Counters for /admin/metrics: whether readers were spared the work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DerivedStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// The embedded derived-bytes store (see the module docs). Its calls block on small file
/// operations: call them from the blocking pool or accept a page-cache read on a worker.
pub struct DerivedStore {
    root: PathBuf,
    budget: u64,
    state: Mutex<State>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl DerivedStore {
    /// Opens (or creates) the store in `root`, keeping at most `budget` bytes. Leftover
    /// temporary files are removed; existing entries are counted against the budget.
    pub fn open(root: &Path, budget: u64) -> std::io::Result<DerivedStore> {
        std::fs::create_dir_all(root)?;
        let mut state = State::default();
        for fan in 0..=255u8 {
            let dir = root.join(format!("{fan:02x}"));
            if !dir.is_dir() {
                std::fs::create_dir(&dir)?;
                continue;
            }
            for item in std::fs::read_dir(&dir)? {
                let item = item?;
                let name = item.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(item.path());
                    continue;
                }
                let size = item.metadata()?.len();
                state.used += size;
                state.entries.insert(format!("{fan:02x}/{name}"), Entry { size, last_use: 0 });
            }
        }
        let store = DerivedStore {
            root: root.to_path_buf(),
            budget,
            state: Mutex::new(state),
            hits: 0.into(),
            misses: 0.into(),
        };
        store.evict();
        Ok(store)
    }

    pub fn stats(&self) -> DerivedStats {
        use std::sync::atomic::Ordering;
        let state = self.state.lock().expect("derived state");
        DerivedStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: state.entries.len() as u64,
            bytes: state.used,
        }
    }

    /// The entry's bytes, if it is here whole and was made from this version of the instance.
    pub fn get(&self, key: &DerivedKey) -> Option<Bytes> {
        use std::sync::atomic::Ordering;
        let found = if self.budget > 0 && self.is_listed(key) { self.read(key) } else { None };
        match found {
            Some(bytes) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(bytes)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn is_listed(&self, key: &DerivedKey) -> bool {
        let mut state = self.state.lock().expect("derived state");
        state.clock += 1;
        let now = state.clock;
        match state.entries.get_mut(&key.file_name()) {
            Some(entry) => {
                entry.last_use = now;
                true
            }
            None => false,
        }
    }

    fn read(&self, key: &DerivedKey) -> Option<Bytes> {
        let mut file = std::fs::File::open(self.root.join(key.file_name())).ok()?;
        let mut head = [0u8; 8 + 4 + 8 + 4];
        file.read_exact(&mut head).ok()?;
        if &head[..8] != MAGIC {
            return None;
        }
        let key_length = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
        let length = u64::from_le_bytes(head[12..20].try_into().ok()?);
        let crc = u32::from_le_bytes(head[20..24].try_into().ok()?);
        if key_length > MAX_KEY || length > MAX_ENTRY {
            return None;
        }
        let mut stored_key = vec![0; key_length];
        file.read_exact(&mut stored_key).ok()?;
        if stored_key != key.text().as_bytes() {
            return None;
        }
        let mut bytes = Vec::with_capacity(length as usize);
        file.take(length + 1).read_to_end(&mut bytes).ok()?;
        (bytes.len() as u64 == length && crc32fast::hash(&bytes) == crc).then(|| Bytes::from(bytes))
    }

    /// Keeps `bytes` as the entry for `key`, replacing an older one; over the budget, the least
    /// recently used entries go. Failures are logged and forgotten: the entry is made again later.
    pub fn put(&self, key: &DerivedKey, bytes: &[u8]) {
        if self.budget == 0 || bytes.len() as u64 > MAX_ENTRY || bytes.len() as u64 > self.budget / 4 {
            return;
        }
        let name = key.file_name();
        let text = key.text();
        let mut entry = Vec::with_capacity(24 + text.len() + bytes.len());
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&(text.len() as u32).to_le_bytes());
        entry.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        entry.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        entry.extend_from_slice(text.as_bytes());
        entry.extend_from_slice(bytes);
        let path = self.root.join(&name);
        let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
        let written = std::fs::write(&temporary, &entry).and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            tracing::warn!(%error, "a derived image could not be kept");
            return;
        }
        {
            let mut state = self.state.lock().expect("derived state");
            state.clock += 1;
            let entry = Entry { size: entry.len() as u64, last_use: state.clock };
            state.used += entry.size;
            if let Some(old) = state.entries.insert(name.clone(), entry) {
                state.used -= old.size;
            }
        }
        self.evict();
    }

    /// Removes every entry made from the instance (it was deleted).
    pub fn forget_instance(&self, sop_uid: &str) {
        let prefix = format!("{:02x}/{sop_uid}.", fnv1a(sop_uid.as_bytes()) & 0xff);
        let names: Vec<String> = {
            let mut state = self.state.lock().expect("derived state");
            let names: Vec<String> = state
                .entries
                .range(prefix.clone()..)
                .map(|(name, _)| name.clone())
                .take_while(|name| name.starts_with(&prefix))
                .collect();
            for name in &names {
                if let Some(old) = state.entries.remove(name) {
                    state.used -= old.size;
                }
            }
            names
        };
        for name in names {
            let _ = std::fs::remove_file(self.root.join(name));
        }
    }

    /// Over the budget, removes least recently used entries until a tenth of it is free again
    /// (so that eviction, a scan of the entries, runs once per many puts).
    fn evict(&self) {
        let victims: Vec<String> = {
            let mut state = self.state.lock().expect("derived state");
            if state.used <= self.budget {
                return;
            }
            let target = self.budget - self.budget / 10;
            let mut by_age: Vec<(u64, String, u64)> =
                state.entries.iter().map(|(name, entry)| (entry.last_use, name.clone(), entry.size)).collect();
            by_age.sort_unstable();
            let mut victims = Vec::new();
            for (_, name, size) in by_age {
                if state.used <= target {
                    break;
                }
                state.used -= size;
                victims.push(name);
            }
            for name in &victims {
                state.entries.remove(name);
            }
            victims
        };
        for name in victims {
            let _ = std::fs::remove_file(self.root.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sop: &str, version: u64, variant: &str) -> DerivedKey {
        DerivedKey { sop_uid: sop.into(), version, variant: variant.into() }
    }

    #[test]
    fn an_entry_comes_back_only_for_its_key_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = DerivedStore::open(dir.path(), 1 << 20).unwrap();
        store.put(&key("1.2.3", 7, "thumbnail"), b"jpeg bytes");
        assert_eq!(store.get(&key("1.2.3", 7, "thumbnail")).as_deref(), Some(&b"jpeg bytes"[..]));
        // Another version of the instance (it was replaced) is a miss.
        assert_eq!(store.get(&key("1.2.3", 8, "thumbnail")), None);
        assert_eq!(store.get(&key("1.2.3", 7, "preview")), None);
        // A torn entry (a power cut after the rename, before the data reached the disk).
        let path = dir.path().join(key("1.2.3", 7, "thumbnail").file_name());
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert_eq!(store.get(&key("1.2.3", 7, "thumbnail")), None);
        // Flipped bytes of the same length.
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(store.get(&key("1.2.3", 7, "thumbnail")), None);
        let stats = store.stats();
        assert_eq!((stats.hits, stats.misses), (1, 4));
    }

    #[test]
    fn entries_survive_a_reopen_and_go_with_their_instance() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DerivedStore::open(dir.path(), 1 << 20).unwrap();
            store.put(&key("1.2.3", 1, "a"), b"one");
            store.put(&key("1.2.3", 1, "b"), b"two");
            store.put(&key("1.2.30", 1, "a"), b"other instance");
        }
        let store = DerivedStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.stats().entries, 3);
        assert_eq!(store.get(&key("1.2.3", 1, "b")).as_deref(), Some(&b"two"[..]));
        store.forget_instance("1.2.3");
        assert_eq!(store.get(&key("1.2.3", 1, "a")), None);
        assert_eq!(store.get(&key("1.2.3", 1, "b")), None);
        assert_eq!(store.get(&key("1.2.30", 1, "a")).as_deref(), Some(&b"other instance"[..]));
        assert_eq!(store.stats().entries, 1);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let entry = vec![7u8; 1000];
        // Room for about four entries of ~1,050 bytes.
        let store = DerivedStore::open(dir.path(), 4300).unwrap();
        for n in 0..4 {
            store.put(&key(&format!("1.{n}"), 1, "t"), &entry);
        }
        // 1.0 is used again, so 1.1 is now the oldest.
        assert!(store.get(&key("1.0", 1, "t")).is_some());
        store.put(&key("1.4", 1, "t"), &entry);
        assert!(store.get(&key("1.1", 1, "t")).is_none(), "the least recently used entry went first");
        assert!(store.get(&key("1.0", 1, "t")).is_some());
        assert!(store.get(&key("1.4", 1, "t")).is_some());
        assert!(store.stats().bytes <= 4300);
        let files: usize =
            (0..=255u8).map(|fan| std::fs::read_dir(dir.path().join(format!("{fan:02x}"))).unwrap().count()).sum();
        assert_eq!(files as u64, store.stats().entries, "evicted entries leave the disk");
    }
}
